"""What the subcommands share: optional packages, the digits data, option checks, tables, output paths."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from torchstep.tasks import load_digits

from .errors import UserError

CLI_EXTRA = "pip install 'torchstep[cli]'"


def require(module: str, purpose: str) -> Any:
    """Import ``module`` or stop with a one-line hint to install the ``cli`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{purpose} needs {module.split('.')[0]}: {CLI_EXTRA}") from None


class _NoBar:
    """Stands in for a tqdm bar when tqdm is not installed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bars(command: str, wanted: bool) -> Any:
    """tqdm's bar class, or a silent stand-in (with a one-line hint) when tqdm is missing: bars are a
    convenience, so their absence never stops a run."""
    try:
        from tqdm import tqdm
    except ImportError:
        if wanted:
            print(f"torchstep {command}: no progress bars without tqdm ({CLI_EXTRA})", file=sys.stderr)
        return _NoBar
    return tqdm


def digits_data() -> Any:
    """The digits task's data (:func:`torchstep.tasks.load_digits`), or a one-line error without scikit-learn."""
    try:
        return load_digits()
    except ImportError as exc:
        raise UserError(str(exc)) from None


def check_minimums(args: Any, **minimums: int) -> None:
    """Stop with a one-line error where an integer option is below its minimum."""
    for name, low in minimums.items():
        value = getattr(args, name)
        if value is not None and value < low:
            raise UserError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


def writable(path: str | None, what: str) -> Path | None:
    """``path`` as a Path after checking that its folder exists (before any long run starts)."""
    if path is None:
        return None
    out = Path(path)
    if not out.parent.is_dir():
        raise UserError(f"cannot write the {what} to {path}: folder {str(out.parent)!r} does not exist")
    return out


def load_task(target: str, batch_size: int | None = None) -> Any:
    """The :class:`torchstep.tasks.Task` named by ``--task``: a built-in task's name or
    ``package.module:factory`` (a function of no arguments returning a Task; the current folder is
    importable). Each way it can fail is a one-line :class:`UserError`; the task's protocol is
    checked later, by :func:`torchstep.comparison.check_task`."""
    from torchstep.tasks import BUILTIN_TASKS

    if target in BUILTIN_TASKS:
        try:
            return BUILTIN_TASKS[target](**({} if batch_size is None else {"batch_size": batch_size}))
        except ImportError as exc:
            raise UserError(str(exc)) from None
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"--task {target!r} is neither a built-in task ({', '.join(BUILTIN_TASKS)}) nor "
                        "package.module:factory")
    if batch_size is not None:
        raise UserError("--batch-size applies to the built-in tasks only: your task's train_batches sets it")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: any failure is reported on one line
        raise UserError(f"--task {target!r}: cannot import {module_name!r} ({_one_line(exc)})") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise UserError(f"--task {target!r}: module {module_name!r} has no {attr!r}")
    if not callable(factory):
        raise UserError(f"--task {target!r}: {module_name}.{attr} is {type(factory).__name__}, not a factory function")
    try:
        return factory()
    except Exception as exc:
        raise UserError(f"--task {target!r}: the factory raised {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
