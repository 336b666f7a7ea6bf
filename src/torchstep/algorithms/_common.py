"""Argument handling shared by the optimizer classes (validation itself lives in core.check)."""

from __future__ import annotations

from typing import Any

from ..core import check


def lr_checks(lr: Any, *, foreach: Any = None, capturable: bool = False, strictly_positive: bool = False) -> None:
    """Validate ``lr`` (a float or a 1-element tensor) as torch does."""
    check.tensor_scalar(lr, "lr")
    check.no_tensor_hyper_with_foreach(lr, "lr", foreach=foreach, capturable=capturable)
    if strictly_positive:
        check.positive(lr, "lr", "learning rate")
    else:
        check.at_least(lr, "lr", "learning rate")
