"""The ``torchstep`` command. Subcommands live in their own modules and register here."""

from __future__ import annotations

import argparse
import sys

from . import bench as _bench
from . import compare as _compare
from . import lr_find as _lr_find
from . import schedule as _schedule
from .errors import UserError

SUBCOMMANDS = {"compare": _compare, "lr-find": _lr_find, "schedule": _schedule, "bench": _bench}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchstep", description="torch.optim, re-implemented: tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in SUBCOMMANDS.items():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return SUBCOMMANDS[args.command].run(args) or 0
    except UserError as exc:
        print(f"torchstep {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
