"""The error every subcommand raises for a mistake in the command line."""


class UserError(Exception):
    """A mistake in the command line: printed as one line, exit status 2, no traceback."""
