r"""Running averages of weights: equal-weight (SWA) and exponential (EMA).

With :math:`\bar W_n` the average after :math:`n` models and :math:`W` the model's current tensor
(``averaged`` / ``current``; :math:`n` is ``num_averaged``):

* SWA (Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization",
  UAI 2018, https://arxiv.org/abs/1803.05407):
  :math:`\bar W_{n+1} = \bar W_n + (W - \bar W_n) / (n + 1)`, the mean of every model seen;
* EMA (Polyak averaging with exponential weights):
  :math:`\bar W_{n+1} = d \, \bar W_n + (1 - d) \, W` with :math:`d` = ``decay`` in [0, 1].

Each comes in two calling conventions, as in ``torch.optim.swa_utils``:

* ``get_*_avg_fn()`` -> ``fn(averaged, current, num_averaged)`` returning the new average of one
  tensor (``AveragedModel(avg_fn=...)``);
* ``get_*_multi_avg_fn()`` -> ``fn(averaged_list, current_list, num_averaged)`` updating a list in
  place (``AveragedModel(multi_avg_fn=...)``). Floating and complex tensors go through one
  ``torch._foreach_lerp_`` with weight :math:`1/(n+1)` (SWA) or :math:`1-d` (EMA), which is what
  torch computes, bit for bit; other dtypes use the one-tensor formula.

:func:`group_by_device_and_dtype` is the bucketing ``AveragedModel`` uses before calling a
multi-tensor function; :data:`FOREACH_DEVICE_TYPES` are the device types where the default SWA uses
the multi-tensor form (elsewhere, e.g. CPU, it runs the one-tensor formula, as torch does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "get_ema_multi_avg_fn", "get_swa_multi_avg_fn", "get_ema_avg_fn", "get_swa_avg_fn",
    "group_by_device_and_dtype", "FOREACH_DEVICE_TYPES",
]

AvgFn = Callable[[Tensor, Tensor, Any], Tensor]
MultiAvgFn = Callable[[Sequence[Tensor], Sequence[Tensor], Any], None]

FOREACH_DEVICE_TYPES = frozenset({"cuda", "xpu", "mtia", torch._C._get_privateuse1_backend_name()})


def _check_decay(decay: Any) -> None:
    if not 0.0 <= decay <= 1.0:  # also rejects NaN
        raise ValueError(
            f"Invalid decay value {decay} provided. Please provide a value in [0,1] range. "
            f"(decay must be in [0.0, 1.0])"
        )


def _swa(averaged: Tensor, current: Tensor, num_averaged: Any) -> Tensor:
    return averaged + (current - averaged) / (num_averaged + 1)


def _lerp_in_place(averaged: Sequence[Tensor], current: Sequence[Tensor], weight: Any,
                   formula: Callable[[Tensor, Tensor], Tensor]) -> None:
    """``averaged[i] += weight * (current[i] - averaged[i])``: one foreach lerp over the floating
    and complex tensors, ``formula`` (the same average, written out) for the others."""
    lerpable = [i for i, a in enumerate(averaged) if a.is_floating_point() or a.is_complex()]
    if len(lerpable) == len(averaged):
        if averaged:
            torch._foreach_lerp_(list(averaged), list(current), weight)
        return
    if lerpable:
        torch._foreach_lerp_([averaged[i] for i in lerpable], [current[i] for i in lerpable], weight)
    skip = set(lerpable)
    for i, (a, c) in enumerate(zip(averaged, current, strict=True)):
        if i not in skip:
            a.copy_(formula(a, c))


def get_ema_multi_avg_fn(decay: float = 0.999) -> MultiAvgFn:
    """In-place EMA of a list of tensors: ``avg = decay * avg + (1 - decay) * current``."""
    _check_decay(decay)

    @torch.no_grad()
    def ema_multi_update(averaged: Sequence[Tensor], current: Sequence[Tensor], num_averaged: Any) -> None:
        _lerp_in_place(averaged, current, 1 - decay, lambda a, c: a * decay + c * (1 - decay))

    return ema_multi_update


def get_swa_multi_avg_fn() -> MultiAvgFn:
    """In-place equal-weight average of a list of tensors (``num_averaged`` models so far)."""

    @torch.no_grad()
    def swa_multi_update(averaged: Sequence[Tensor], current: Sequence[Tensor], num_averaged: Any) -> None:
        _lerp_in_place(averaged, current, 1 / (num_averaged + 1), lambda a, c: _swa(a, c, num_averaged))

    return swa_multi_update


def get_ema_avg_fn(decay: float = 0.999) -> AvgFn:
    """EMA of one tensor: returns ``decay * averaged + (1 - decay) * current``."""
    _check_decay(decay)

    @torch.no_grad()
    def ema_update(averaged: Tensor, current: Tensor, num_averaged: Any) -> Tensor:
        return decay * averaged + (1 - decay) * current

    return ema_update


def get_swa_avg_fn() -> AvgFn:
    """Equal-weight average of one tensor: returns ``averaged + (current - averaged) / (n + 1)``."""

    @torch.no_grad()
    def swa_update(averaged: Tensor, current: Tensor, num_averaged: Any) -> Tensor:
        return _swa(averaged, current, num_averaged)

    return swa_update


def group_by_device_and_dtype(
    averaged: Sequence[Tensor], current: Sequence[Tensor]
) -> dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]]:
    """Pairs bucketed by the averaged tensor's (device, dtype), in order of first appearance."""
    buckets: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
    for a, c in zip(averaged, current, strict=True):
        into, source = buckets.setdefault((a.device, a.dtype), ([], []))
        into.append(a)
        source.append(c)
    return buckets
