"""The one place constructor arguments are validated.

Every message keeps torch.optim's wording first (so code that matches torch's messages keeps
working) and then names the argument, the value it got and what is allowed.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "at_least", "in_range", "positive", "tensor_scalar", "betas_pair", "exclusive_flags",
    "no_tensor_hyper_with_foreach", "should_be", "one_of", "whole_number", "dense_real", "pair",
    "betas_sequence", "callable_or_none", "positive_int_or_none",
]


def _value(x: Any) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else x


def at_least(value: Any, name: str, label: str, low: float = 0.0) -> None:
    """Require ``value >= low`` (``label`` is torch's wording, e.g. "learning rate")."""
    if not _value(value) >= low:  # also catches NaN
        raise ValueError(f"Invalid {label}: {value} ({name} must be >= {low})")


def positive(value: Any, name: str, label: str) -> None:
    """Require ``value > 0``."""
    if not _value(value) > 0.0:
        raise ValueError(f"Invalid {label}: {value} ({name} must be > 0)")


def in_range(value: Any, name: str, label: str, low: float, high: float, *, high_open: bool = False) -> None:
    """Require ``low <= value <= high`` (``< high`` when ``high_open``)."""
    v = _value(value)
    ok = low <= v < high if high_open else low <= v <= high
    if not ok or (isinstance(v, float) and math.isnan(v)):
        bracket = ")" if high_open else "]"
        raise ValueError(f"Invalid {label}: {value} ({name} must be in [{low}, {high}{bracket})")


def tensor_scalar(value: Any, name: str) -> None:
    """A hyperparameter given as a tensor must hold exactly one element."""
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise ValueError(
            f"Tensor {name} must be 1-element ({name} has shape {tuple(value.shape)}, "
            f"{value.numel()} elements)"
        )


def betas_pair(betas: Any, *, allow_tensors: bool = True) -> None:
    """``betas`` is a pair, each in [0, 1); both floats or both tensors."""
    try:
        b0, b1 = betas
    except (TypeError, ValueError):
        raise ValueError(f"Invalid betas: {betas!r} (betas must be a pair (beta1, beta2))") from None
    tensor_scalar(b0, "betas[0]")
    tensor_scalar(b1, "betas[1]")
    in_range(b0, "betas[0]", "beta parameter at index 0", 0.0, 1.0, high_open=True)
    in_range(b1, "betas[1]", "beta parameter at index 1", 0.0, 1.0, high_open=True)
    if allow_tensors:
        both_tensors = isinstance(b0, torch.Tensor) and isinstance(b1, torch.Tensor)
        neither = not isinstance(b0, torch.Tensor) and not isinstance(b1, torch.Tensor)
        if not (both_tensors or neither):
            raise ValueError(
                f"betas must be either both floats or both Tensors (got {type(b0).__name__} "
                f"and {type(b1).__name__})"
            )


def exclusive_flags(*, fused: Any, foreach: Any, differentiable: bool) -> None:
    """``fused`` excludes ``foreach=True`` and ``differentiable=True``, as in torch."""
    if fused and differentiable:
        raise RuntimeError("`fused` does not support `differentiable` (set fused=False or differentiable=False)")
    if fused and foreach:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together (choose one of fused=True, foreach=True)")


def no_tensor_hyper_with_foreach(value: Any, name: str, *, foreach: Any, capturable: bool) -> None:
    """torch refuses a tensor ``lr`` / ``betas[i]`` with ``foreach=True`` unless ``capturable=True``."""
    if isinstance(value, torch.Tensor) and foreach and not capturable:
        raise ValueError(
            f"{name} as a Tensor is not supported for capturable=False and foreach=True "
            f"(pass {name} as a float, or set capturable=True or foreach=False)"
        )


def should_be(value: Any, name: str, label: str, op: str, bound: float) -> None:
    """Require ``value >= bound`` (``op=">="``) or ``value <= bound`` (``op="<="``), with the
    "<label> should be <op> <bound> but is: <value>" wording of torch's newer optimizers."""
    v = _value(value)
    ok = v >= bound if op == ">=" else v <= bound  # False for NaN
    if not ok:
        raise ValueError(f"{label} should be {op} {bound} but is: {value} ({name} must be {op} {bound})")


def one_of(value: Any, name: str, allowed: tuple, lead: str, error: type = ValueError) -> None:
    """Require ``value`` to be one of ``allowed`` (``lead`` is torch's wording)."""
    if not any(value is a or (isinstance(value, str) and value == a) for a in allowed):
        choices = ", ".join(repr(a) for a in allowed)
        raise error(f"{lead} ({name} must be one of {choices}; got {value!r})")


def whole_number(value: Any, name: str, low: int, high: int | None = None, lead: str = "") -> None:
    """Require an integer in ``[low, high)`` (``high=None``: no upper bound)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value < high)
    if not ok:
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high})"
        raise ValueError(f"{lead or f'Invalid {name}'} ({name} must be {allowed}; got {value!r})")


def dense_real(p: torch.Tensor, algo: str) -> None:
    """Reject complex parameters and sparse gradients, as torch's Adafactor and Muon do."""
    if torch.is_complex(p):
        raise RuntimeError(f"{algo} does not support complex parameters (got a {p.dtype} parameter of shape {tuple(p.shape)})")
    if p.grad is not None and p.grad.is_sparse:
        raise RuntimeError(f"{algo} does not support sparse gradients (the gradient of a parameter of shape {tuple(p.shape)} is sparse)")


def pair(value: Any, name: str, shape: str, size: int = 2, lead: str = "") -> None:
    """Require a sequence of ``size`` items ``shape``: TypeError when not a sequence, ValueError
    when the length is wrong (the exception types torch's own unpacking raises)."""
    head = lead or f"Invalid {name}"
    try:
        n = len(value)
    except TypeError:
        raise TypeError(f"{head} ({name} must be a sequence {shape}; got {value!r})") from None
    if n != size:
        raise ValueError(f"{head} ({name} must have {size} items {shape}; got {value!r}, with {n})")


def betas_sequence(betas: Any, size: int) -> None:
    """``betas`` is a sequence of ``size`` numbers, each in [0, 1) (Adan's and AdEMAMix's three)."""
    pair(betas, "betas", "of floats in [0, 1)", size, lead="Invalid betas")
    for i, b in enumerate(betas):
        in_range(b, f"betas[{i}]", f"beta parameter at index {i}", 0.0, 1.0, high_open=True)


def callable_or_none(value: Any, name: str) -> None:
    """Require a callable (e.g. a function of the step) or None."""
    if value is not None and not callable(value):
        raise TypeError(f"Invalid {name}: {value!r} ({name} must be a callable or None; got {type(value).__name__})")


def positive_int_or_none(value: Any, name: str) -> None:
    """Require None or an integer >= 1 (a number of steps)."""
    if value is not None:
        whole_number(value, name, 1)
