"""Argument handling shared by the optimizer classes (validation itself lives in core.check)."""

from __future__ import annotations

from typing import Any

import torch

from ..core import check


# the options torch's ``__setstate__`` fills in for most of its optimizers (see
# ``Optimizer._load_defaults``); classes add their own
LOAD_FLAGS = {"foreach": None, "maximize": False, "differentiable": False, "capturable": False}


def lr_checks(lr: Any, *, foreach: Any = None, capturable: bool = False, strictly_positive: bool = False,
              nan_ok: bool = False) -> None:
    """Validate ``lr`` (a float or a 1-element tensor) as torch does. ``nan_ok``: only a value
    below 0 is refused (SGD's test; NaN is accepted and propagates)."""
    check.no_tensor_hyper_with_foreach(lr, "lr", foreach=foreach, capturable=capturable)
    check.tensor_scalar(lr, "lr")
    if strictly_positive:
        check.positive(lr, "lr", "learning rate")
    elif nan_ok:
        check.not_below(lr, "lr", "learning rate")
    else:
        check.at_least(lr, "lr", "learning rate")


def weight_decay_checks(weight_decay: Any, *, decoupled: Any = False, nan_ok: bool = False) -> None:
    """``weight_decay >= 0`` (``nan_ok``: SGD's ``not < 0``); as an L2 term it is also an
    ``alpha=`` of torch's step (see :func:`torchstep.core.check.alpha_number`)."""
    if nan_ok:
        check.not_below(weight_decay, "weight_decay", "weight_decay value")
    else:
        check.at_least(weight_decay, "weight_decay", "weight_decay value")
    # (``decoupled`` is only looked at for a value an ``alpha=`` would refuse, as torch's step
    # only looks at it for a non-zero weight decay)
    if isinstance(weight_decay, (bool, torch.Tensor)) and not decoupled:
        check.alpha_number(weight_decay, "weight_decay")
