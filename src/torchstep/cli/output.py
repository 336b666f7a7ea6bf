"""What the subcommands share for output: optional packages, tables, and where a PNG may go."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Sequence

CLI_EXTRA = "pip install 'torchstep[cli]'"


def require(module: str, purpose: str) -> Any:
    """Import ``module`` or stop with a one-line hint to install the ``cli`` extra."""
    from . import UserError

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{purpose} needs {module.split('.')[0]}: {CLI_EXTRA}") from None


def writable(path: str | None, what: str) -> Path | None:
    """``path`` as a Path after checking that its folder exists (before any long run starts)."""
    from . import UserError

    if path is None:
        return None
    out = Path(path)
    if not out.parent.is_dir():
        raise UserError(f"cannot write the {what} to {path}: folder {str(out.parent)!r} does not exist")
    return out


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """A Markdown table padded to line up in a terminal; ``right[i]`` right-aligns column ``i``."""
    widths = [max(len(str(r[c])) for r in [headers, *rows]) for c in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).rjust(w) if r else str(c).ljust(w)
                                 for c, w, r in zip(cells, widths, right)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if r else "-" * (w + 2) for w, r in zip(widths, right)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])
