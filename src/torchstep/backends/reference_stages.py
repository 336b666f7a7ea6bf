"""The reference backend of staged algorithms (:mod:`torchstep.core.stages`): every item of the
program run tensor by tensor -- the literal definition the fused lanes are tested against.

A pass is called on each tensor with its real operands (``g`` after the shared wrappers); a bare
reduction is that tensor's L2 norm (``torch.linalg.vector_norm``, in the tensor's dtype), a
``Summed`` one its sum accumulated in float64; per-tensor arithmetic gets that tensor's 0-d values.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import wrappers
from ..core.stages import PerTensor, Staged, Summed, arguments, names_of


def _reduce(value: Any) -> torch.Tensor:
    if isinstance(value, Summed):
        return value.value.sum(dtype=torch.float64)
    return torch.linalg.vector_norm(value)


class ReferenceLane:
    """Some of a group's tensors, each run through the program on its own."""

    def __init__(self, opt: Any, algo: Staged, group: dict, params: list[torch.Tensor]) -> None:
        self.opt, self.algo, self.group, self.params = opt, algo, group, params
        self.values: list[dict[str, Any]] = [{} for _ in params]

    def begin(self) -> None:
        """Bump each tensor's ``step`` counter and make its step scalars."""
        if self.algo.counter != "tensor":
            return
        by_step: dict = {}
        for p, values in zip(self.params, self.values):
            state = self.opt.state[p]
            state["step"] += 1
            if self.algo.step_scalars is not None:
                t = state["step"].item()
                if t not in by_step:
                    by_step[t] = self.algo.step_scalars(self.group, t)
                values.update(by_step[t])

    def run(self, items: list, context: dict) -> dict[str, list[torch.Tensor]]:
        """Run ``items`` over each tensor in turn; returns every per-tensor value, tensor by tensor."""
        group = self.group
        scalars = self.algo.scalars(group, context)
        options = self.algo.wrappers(group, context)
        for item in items:
            if not item.when(group):
                continue
            if isinstance(item, PerTensor):
                for values in self.values:
                    values.update(item.fn(**arguments(item.fn, {**values, **scalars})))
                continue
            reads, fixed = names_of(item.reads, group), arguments(item.fn, scalars)
            for p, values in zip(self.params, self.values):
                state = self.opt.state[p]
                operands = {n: p if n == "p" else p.grad if n == "grad" else None if n == "g" else state[n] for n in reads}
                if "g" in reads:
                    operands["g"] = wrappers.prepare_grad(p, p.grad, options)
                reduced = item.fn(**operands, **fixed, **arguments(item.fn, values)) or {}
                values.update({k: _reduce(v) for k, v in reduced.items()})
        names = set().union(*self.values) if self.values else set()
        return {k: [values[k] for values in self.values] for k in names}

    def end(self) -> None:
        """Bump Python-int ``step`` counters (Prodigy's) once the step is done."""
        if self.algo.counter == "int":
            for p in self.params:
                self.opt.state[p]["step"] += 1


def run_group(opt: Any, algo: Staged, group: dict, params: list[torch.Tensor]) -> None:
    """The whole program over ``params`` of ``group`` (for a program without :class:`Across`)."""
    lane = ReferenceLane(opt, algo, group, params)
    lane.begin()
    for items, _ in algo.segments():
        lane.run(items, algo.context(opt))
    lane.end()
