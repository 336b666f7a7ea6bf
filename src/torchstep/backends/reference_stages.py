"""The reference backend of staged algorithms (:mod:`torchstep.core.stages`): every item of the
program run tensor by tensor -- the literal definition the fused lanes are tested against.

Each tensor goes through a segment's items before the next one starts (items of one segment are
independent from tensor to tensor), so its temporaries are dropped before the next tensor makes
its own. A pass is called with the tensor's real operands (``g`` after the shared wrappers, the
decoupled decay only in the program's first pass reading it); a bare reduction is that tensor's
L2 norm (``torch.linalg.vector_norm``, in the tensor's dtype), a ``Summed`` one its sum
accumulated in float64, an ``Along`` one its norms along the dimension; per-tensor arithmetic
gets that tensor's 0-d values, a matrix stage its tensors.

DTensor parameters (FSDP2, tensor parallel) run here, never in the fused lanes: their passes are
DTensor operations on the local shards, and every reduction is taken over the whole logical
tensor -- a per-tensor norm or sum is all-reduced over the mesh into a plain 0-d tensor, the same
on every rank; an ``Along`` one keeps the tensor's sharding along the other dimension and is
all-reduced along the reduced one (:func:`torchstep.core.dtensors.whole`). One all-reduce per
reduction and tensor: exact, not batched. A lane holding one gives each of its tensors the
per-tensor value ``dtensor`` (whether it is one), so an ``Across`` item knows which sums are
already whole.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import dtensors, wrappers
from ..core.stages import Along, MatrixStage, Pass, PerTensor, Staged, Summed, arguments, first_reading_g, names_of


def reduce(value: Any) -> torch.Tensor:
    """One tensor's reduction of ``value`` (see the module docstring), over the whole logical
    tensor when it is a DTensor (:func:`~torchstep.core.dtensors.whole`)."""
    if isinstance(value, Summed):
        out = value.value.sum(dtype=torch.float64)
    elif isinstance(value, Along):
        out = torch.linalg.vector_norm(value.value, dim=value.dim, keepdim=True)
    else:
        out = torch.linalg.vector_norm(value)
    return dtensors.whole(out)


def made_names(items: list, group: dict) -> set[str]:
    """The temporaries ``items`` make for ``group``."""
    return {n for item in items if isinstance(item, (Pass, MatrixStage)) and item.when(group)
            for n in names_of(item.makes, group)}


class ReferenceLane:
    """Some of a group's tensors, each run through the program on its own."""

    def __init__(self, opt: Any, algo: Staged, group: dict, params: list[torch.Tensor]) -> None:
        self.opt, self.algo, self.group, self.params = opt, algo, group, params
        self.values: list[dict[str, Any]] = [{"numel": p.numel()} for p in params]
        if any(dtensors.is_dtensor(p) for p in params):
            for p, values in zip(params, self.values):
                values["dtensor"] = dtensors.is_dtensor(p)
        self.decaying = first_reading_g(algo.program, group)

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

    def _operands(self, item: Any, p: torch.Tensor, values: dict, options: dict) -> dict:
        state, group = self.opt.state[p], self.group
        operands = {}
        for n in names_of(item.reads, group):
            operands[n] = p if n == "p" else p.grad if n == "grad" else None if n == "g" else \
                values[n] if n in values else state[n]
        if "g" in operands:
            once = options.get("decoupled_weight_decay", False) and item is not self.decaying
            decay = {**options, "weight_decay": 0} if once else options
            operands["g"] = wrappers.prepare_grad(p, p.grad, decay)
        return operands

    def _run_one(self, items: list, p: torch.Tensor, values: dict, scalars: dict, options: dict) -> None:
        group = self.group
        for item in items:
            if not item.when(group):
                continue
            if isinstance(item, PerTensor):
                values.update(item.fn(**arguments(item.fn, {**values, **scalars})))
                continue
            operands = self._operands(item, p, values, options)
            if isinstance(item, Pass):
                operands.update({n: torch.empty_like(p) for n in names_of(item.makes, group)})
            extra = {k: v for k, v in arguments(item.fn, {**scalars, **values}).items() if k not in operands}
            result = item.fn(**operands, **extra) or {}
            if isinstance(item, MatrixStage):
                values.update(result)
            else:
                values.update({n: operands[n] for n in names_of(item.makes, group)})
                values.update({k: reduce(v) for k, v in result.items()})

    def run(self, items: list, context: dict) -> dict[str, list[torch.Tensor]]:
        """Run ``items`` over each tensor in turn; returns every per-tensor value, tensor by tensor."""
        scalars = self.algo.scalars(self.group, context)
        options = self.algo.wrappers(self.group, context)
        made = made_names(items, self.group)
        for p, values in zip(self.params, self.values):
            self._run_one(items, p, values, scalars, options)
            for n in made:
                values.pop(n, None)
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
