"""The one place arguments are validated: the constructors' (and ``step_flags``, torch's checks
of a group's implementation flags, which it makes only when a step picks the group's path).

Every message keeps torch.optim's wording first (so code that matches torch's messages keeps
working) and then names the argument, the value it got and what is allowed.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.optim.optimizer as _torch_optimizer

__all__ = [
    "at_least", "in_range", "positive", "tensor_scalar", "betas_pair", "exclusive_flags",
    "no_tensor_hyper_with_foreach", "should_be", "one_of", "whole_number", "dense_real", "pair",
    "betas_sequence", "callable_or_none", "positive_int_or_none", "not_below", "item", "alpha_number",
    "flag", "holds", "history_length", "fused_param", "StepPaths", "step_flags",
]


def holds(test: Any, value: Any, name: str, allowed: str) -> bool:
    """``test(value)`` evaluated as torch's own ``if not 0.0 <= value`` evaluates it: on the raw
    value, so NaN fails a comparison, a string or None raises TypeError and a tensor of several
    elements raises RuntimeError -- the exception types torch's constructors raise. Those two
    errors are re-raised with the same type and the argument named."""
    try:
        return bool(test(value))
    except TypeError as exc:
        raise TypeError(f"{exc} ({name} must be {allowed}; got {value!r})") from None
    except RuntimeError as exc:
        raise RuntimeError(f"{exc} ({name} must be {allowed}; got {value!r})") from None


def at_least(value: Any, name: str, label: str, low: float = 0.0) -> None:
    """Require ``low <= value`` (``label`` is torch's wording, e.g. "learning rate"); NaN fails."""
    if not holds(lambda v: low <= v, value, name, f"a number >= {low}"):
        raise ValueError(f"Invalid {label}: {value} ({name} must be >= {low})")


def not_below(value: Any, name: str, label: str, low: float = 0.0) -> None:
    """Refuse ``value < low`` only -- torch's SGD test, which lets NaN through (and NaN then
    propagates into the parameters, as in torch)."""
    if holds(lambda v: v < low, value, name, f"a number >= {low}"):
        raise ValueError(f"Invalid {label}: {value} ({name} must be >= {low})")


def positive(value: Any, name: str, label: str) -> None:
    """Require ``value > 0``; NaN fails."""
    if not holds(lambda v: 0.0 < v, value, name, "a number > 0"):
        raise ValueError(f"Invalid {label}: {value} ({name} must be > 0)")


def in_range(value: Any, name: str, label: str, low: float, high: float, *, high_open: bool = False) -> None:
    """Require ``low <= value <= high`` (``< high`` when ``high_open``); NaN fails."""
    bracket = ")" if high_open else "]"
    test = (lambda v: low <= v < high) if high_open else (lambda v: low <= v <= high)
    if not holds(test, value, name, f"a number in [{low}, {high}{bracket}"):
        raise ValueError(f"Invalid {label}: {value} ({name} must be in [{low}, {high}{bracket})")


def item(seq: Any, index: int, name: str, shape: str) -> Any:
    """``seq[index]`` as torch's constructors take it (``betas[0]``, ``etas[1]``): TypeError when
    ``seq`` cannot be indexed, IndexError when it is too short -- with the argument named."""
    try:
        return seq[index]
    except (TypeError, IndexError) as exc:
        raise type(exc)(f"{exc} ({name} must be {shape}; got {seq!r})") from None


def alpha_number(value: Any, name: str, *, booleans_refused: bool = True) -> None:
    """A hyperparameter torch's step passes as ``alpha=`` / ``value=`` of a tensor op when it is
    non-zero (L2 ``weight_decay``, Adagrad's ``lr_decay``): such an op takes a number or a 0-d
    tensor (TypeError otherwise) and no boolean for float tensors (RuntimeError). torch raises at
    the first step; this raises the same type at construction. ``booleans_refused=False`` for a
    value that reaches the op only through arithmetic (a bool there is just 0 or 1)."""
    if isinstance(value, bool) and booleans_refused:
        if value:
            raise RuntimeError(
                f"Boolean alpha only supported for Boolean results ({name} must be a number, got {value!r})"
            )
    elif isinstance(value, torch.Tensor) and value.dim() != 0 and bool(value != 0):
        raise TypeError(
            f"alpha must be Number, not Tensor ({name} as a Tensor must be 0-dimensional; got shape "
            f"{tuple(value.shape)})"
        )


def history_length(value: Any, name: str) -> None:
    """A number of entries kept in a list (LBFGS's ``history_size``): an integer (TypeError
    otherwise) of at least 1 -- torch indexes an empty list for 0 or less, an IndexError at the
    step, which is the type raised here."""
    allowed, empty = "an integer >= 1", "list index out of range"
    if holds(lambda v: v == 0, value, name, allowed):  # 0, 0.0, False
        raise IndexError(f"{empty} ({name} must be {allowed}; got {value!r})")
    try:
        n = operator.index(value)
    except TypeError as exc:  # 0.5, inf, "x", None
        raise TypeError(f"{exc} ({name} must be {allowed}; got {value!r})") from None
    if n < 0:
        raise IndexError(f"{empty} ({name} must be {allowed}; got {value!r})")


def _fused_devices() -> list[str]:
    """The device types torch has fused optimizer kernels for."""
    supported = getattr(_torch_optimizer, "_get_fused_kernels_supported_devices", None)
    if supported is None:  # pragma: no cover -- older torch
        return ["mps", "cuda", "xpu", "hpu", "cpu", "privateuseone"]
    return supported()


def fused_param(p: torch.Tensor) -> None:
    """``fused=True`` takes floating-point tensors on devices torch has fused kernels for; torch
    refuses anything else (a complex or integer parameter) with RuntimeError at the step."""
    devices = _fused_devices()
    if not (p.device.type in devices and torch.is_floating_point(p)):
        raise RuntimeError(
            "`fused=True` requires all the params to be floating point Tensors of supported devices: "
            f"{devices} but {p.dtype} and {p.device.type} (a parameter of shape {tuple(p.shape)}; "
            "use fused=False, or view complex parameters as real)"
        )


def flag(value: Any, name: str) -> None:
    """An on/off option (``foreach``, ``fused``): None or anything with a truth value (a tensor of
    several elements has none: RuntimeError, as torch raises when it tests the option)."""
    if value is not None:
        holds(bool, value, name, "True, False or None")


def tensor_scalar(value: Any, name: str) -> None:
    """A hyperparameter given as a tensor must hold exactly one element."""
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise ValueError(
            f"Tensor {name} must be 1-element ({name} has shape {tuple(value.shape)}, "
            f"{value.numel()} elements)"
        )


def betas_pair(betas: Any, *, floats_or_tensors: bool = False) -> None:
    """``betas[0]`` and ``betas[1]`` each in [0, 1), taken by index as torch takes them (so a
    non-sequence raises TypeError, a short one IndexError; extra items fail at the step, where
    the pair is unpacked). ``floats_or_tensors``: Adam's rule that both are floats or both
    tensors (1-element)."""
    shape = "a pair (beta1, beta2)"
    b0 = item(betas, 0, "betas", shape)
    in_range(b0, "betas[0]", "beta parameter at index 0", 0.0, 1.0, high_open=True)
    b1 = item(betas, 1, "betas", shape)
    in_range(b1, "betas[1]", "beta parameter at index 1", 0.0, 1.0, high_open=True)
    if floats_or_tensors:
        if not (all(isinstance(b, float) for b in (b0, b1)) or all(isinstance(b, torch.Tensor) for b in (b0, b1))):
            raise ValueError(
                f"betas must be either both floats or both Tensors (got {type(b0).__name__} "
                f"and {type(b1).__name__})"
            )
        tensor_scalar(b0, "betas[0]")
        tensor_scalar(b1, "betas[1]")


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
    test = (lambda v: bound <= v) if op == ">=" else (lambda v: bound >= v)  # False for NaN
    if not holds(test, value, name, f"a number {op} {bound}"):
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


@dataclass(frozen=True)
class StepPaths:
    """The implementation paths (``foreach`` / ``fused``) a torch.optim class has, for the checks
    torch makes on a group's flags only when its step picks the group's path (:func:`step_flags`).

    ``foreach``: "always" when torch's foreach path refuses ``differentiable=True`` even for a group
    without gradients (Adagrad, Adadelta, Adamax), "with_grads" when only a group with some
    gradient reaches that check, None when the class has no such check (SGD).
    ``fused``: whose fused kernel the class has ("adam", "adagrad", "sgd"), or None.
    ``foreach_tensor_hypers``: the foreach path refuses a tensor ``lr`` / ``betas`` unless
    ``capturable=True`` (Adam, AdamW).
    ``foreach_lr_number``: the foreach path reads ``lr`` as a Python number, so an ``lr`` tensor
    of several elements (set in a group by hand) raises RuntimeError there (Adagrad, Adamax, NAdam;
    their for-loop paths raise TypeError, as the tensor-by-tensor path does).
    """

    foreach: str | None = None
    fused: str | None = None
    foreach_tensor_hypers: bool = False
    foreach_lr_number: bool = False


def _on(group: dict, key: str) -> bool:
    try:
        return bool(group.get(key))
    except RuntimeError:  # a multi-element tensor: the constructor refuses it in defaults
        return True


def step_flags(paths: StepPaths, group: dict, index: int, *, sparse_ok: bool) -> None:
    """Refuse a group's flags the way torch's step does when it picks the group's path: the
    group's own ``foreach`` / ``fused`` / ``differentiable`` (and tensor hyperparameters), which
    the constructor only checks in the defaults. Called at the group's turn in ``step``, so the
    groups before it have been updated, as in torch. The exception types are torch's.
    ``sparse_ok``: the class takes sparse gradients (otherwise its own refusal of one comes
    first, as torch gathers the gradients before it picks the path)."""
    fused = paths.fused is not None and _on(group, "fused")
    foreach = _on(group, "foreach")
    if paths.fused == "sgd":
        fused = fused and not foreach  # SGD's foreach path wins over its fused one
    foreach = paths.foreach is not None and foreach and not fused
    if not (fused or foreach):
        return
    grads = [p.grad for p in group["params"] if p.grad is not None]
    if not sparse_ok and any(g.is_sparse for g in grads):
        return
    where = f"parameter group {index}"
    differentiable = _on(group, "differentiable")
    if foreach and differentiable and paths.foreach == "always":
        raise AssertionError(
            f"_foreach ops don't support autograd ({where} has foreach=True and differentiable=True; "
            "set foreach=False or None there for a differentiable step)"
        )
    if not grads:
        return
    # torch's Adam refuses a tensor lr with foreach=True as it gathers the gradients, whichever
    # path then runs (fused included); tensor betas only on the foreach path itself
    if _on(group, "foreach") and paths.foreach_tensor_hypers and not _on(group, "capturable"):
        if isinstance(group.get("lr"), torch.Tensor):
            raise RuntimeError(
                f"lr as a Tensor is not supported for capturable=False and foreach=True ({where} has "
                f"lr={group['lr']!r} and foreach=True; give lr as a float, or set foreach=False there)"
            )
    if foreach and paths.foreach_tensor_hypers and not _on(group, "capturable"):
        betas = group.get("betas")
        for i, beta in enumerate(betas if isinstance(betas, (tuple, list)) else ()):
            if isinstance(beta, torch.Tensor):
                raise ValueError(
                    f"beta{i + 1} as a Tensor is not supported for capturable=False and foreach=True "
                    f"({where} has betas[{i}]={beta!r} and foreach=True; give betas as floats, or set "
                    "foreach=False there)"
                )
    if foreach and differentiable:
        raise AssertionError(
            f"_foreach ops don't support autograd ({where} has foreach=True and differentiable=True; "
            "set foreach=False or None there for a differentiable step)"
        )
    lr = group.get("lr")
    if foreach and paths.foreach_lr_number and isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise RuntimeError(
            f"a Tensor with {lr.numel()} elements cannot be converted to Scalar ({where} has lr of "
            f"shape {tuple(lr.shape)}; lr must be a float or a 1-element tensor)"
        )
    if fused and paths.fused in ("adagrad", "sgd"):
        for g in grads:
            if g.is_sparse or (paths.fused == "adagrad" and g.is_complex()):
                raise RuntimeError(
                    f"`fused` does not support sparse grad or complex param ({where} has fused=True and a "
                    f"{'sparse' if g.is_sparse else 'complex'} gradient of shape {tuple(g.shape)}; set "
                    "fused=False there)"
                )
    if fused and differentiable and paths.fused in ("adam", "adagrad"):
        raise RuntimeError(
            f"`fused` does not support `differentiable` ({where} has fused=True and differentiable=True; "
            "set one of them to False there)"
        )
