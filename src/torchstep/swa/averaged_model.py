r"""``AveragedModel``: a copy of a model whose weights are a running average of the model's.

After the first ``update_parameters(model)`` (which copies), each call folds the model's current
weights into the copy: by default the equal-weight SWA mean, or any rule given as ``avg_fn`` (one
tensor at a time, returns the new value) or ``multi_avg_fn`` (lists of tensors bucketed by device
and dtype, updated in place) -- see :mod:`torchstep.swa.averages` for the equations.
``n_averaged`` (a long 0-d buffer) counts the models folded in.

Buffers (e.g. BatchNorm running statistics) are averaged like parameters when
``use_buffers=True``; otherwise they are copied from the model at every update.

The state_dict is torch's: ``n_averaged`` then the copy's entries under ``module.``, so a
checkpoint of ``torch.optim.swa_utils.AveragedModel`` loads here and the other way round. The class
subclasses torch's for ``isinstance`` checks but overrides every method; none of torch's code runs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from copy import deepcopy
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import swa_utils as _torch_swa

from .averages import FOREACH_DEVICE_TYPES, AvgFn, MultiAvgFn, get_swa_avg_fn, get_swa_multi_avg_fn, \
    group_by_device_and_dtype

__all__ = ["AveragedModel"]


class AveragedModel(_torch_swa.AveragedModel):
    """Keeps ``module``, a copy of ``model`` (moved to ``device`` if given), and averages into it.

    Args:
        model: the module to average (deep-copied at construction).
        device: where the averaged copy and ``n_averaged`` live (default: where ``model`` is).
        avg_fn: ``fn(averaged, current, num_averaged) -> Tensor`` for one tensor.
        multi_avg_fn: ``fn(averaged_list, current_list, num_averaged)`` updating lists in place.
            At most one of the two; neither means SWA (equal weights).
        use_buffers: average buffers as well (``True``) or copy them from ``model`` (``False``).
    """

    n_averaged: Tensor

    def __init__(self, model: nn.Module, device: int | torch.device | str | None = None,
                 avg_fn: AvgFn | None = None, multi_avg_fn: MultiAvgFn | None = None,
                 use_buffers: bool = False) -> None:
        nn.Module.__init__(self)
        if avg_fn is not None and multi_avg_fn is not None:
            raise AssertionError(
                f"Only one of avg_fn and multi_avg_fn should be provided (got avg_fn={avg_fn!r} and "
                f"multi_avg_fn={multi_avg_fn!r}; pass one of them, or neither for equal-weight SWA)"
            )
        self.module = deepcopy(model) if device is None else deepcopy(model).to(device)
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long, device=device))
        self.avg_fn = avg_fn
        self.multi_avg_fn = multi_avg_fn
        self.use_buffers = use_buffers

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the averaged copy."""
        return self.module(*args, **kwargs)

    def _averaged_tensors(self, module: nn.Module) -> Iterator[Tensor]:
        """What gets averaged: the parameters, then the buffers when ``use_buffers``."""
        if self.use_buffers:
            return itertools.chain(module.parameters(), module.buffers())
        return module.parameters()

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average (the first call copies them)."""
        averaged, current = [], []
        for mine, theirs in zip(self._averaged_tensors(self.module), self._averaged_tensors(model)):
            averaged.append(mine.detach())
            current.append(theirs.detach().to(mine.device))
        if self.n_averaged == 0:
            for mine, theirs in zip(averaged, current):
                mine.copy_(theirs)
        elif self.avg_fn is not None:
            for mine, theirs in zip(averaged, current):
                mine.copy_(self.avg_fn(mine, theirs, self.n_averaged.to(mine.device)))
        else:
            self._average_buckets(averaged, current)
        if not self.use_buffers:
            for mine, theirs in zip(self.module.buffers(), model.buffers(), strict=True):
                mine.detach().copy_(theirs.detach().to(mine.device))
        self.n_averaged += 1

    def _average_buckets(self, averaged: list[Tensor], current: list[Tensor]) -> None:
        """``multi_avg_fn`` (or SWA) per (device, dtype) bucket; default SWA off foreach devices
        (e.g. CPU) runs tensor by tensor, as torch does, so the rounding is the same."""
        for (device, _), (mine, theirs) in group_by_device_and_dtype(averaged, current).items():
            count = self.n_averaged.to(device)
            if self.multi_avg_fn is not None:
                self.multi_avg_fn(mine, theirs, count)
            elif device.type in FOREACH_DEVICE_TYPES:
                get_swa_multi_avg_fn()(mine, theirs, count)
            else:
                swa = get_swa_avg_fn()
                for a, c in zip(mine, theirs):
                    a.copy_(swa(a, c, count))
