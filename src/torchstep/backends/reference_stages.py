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
all-reduced along the reduced one (:func:`torchstep.core.dtensors.whole`). The per-tensor
numbers of a group's DTensors are completed together: one all-reduce per item, kind of reduction
and layout, not per tensor (:meth:`ReferenceLane.run`). A lane holding one gives each of its tensors the
per-tensor value ``dtensor`` (whether it is one), so an ``Across`` item knows which sums are
already whole.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import dtensors, wrappers
from ..core.stages import Along, MatrixStage, Pass, PerTensor, Staged, Summed, arguments, first_reading_g, names_of


def local_reduce(value: Any) -> torch.Tensor:
    """One tensor's reduction of ``value`` (see the module docstring); for a DTensor, still
    partial (each rank's part of it)."""
    if isinstance(value, Summed):
        return value.value.sum(dtype=torch.float64)
    if isinstance(value, Along):
        return torch.linalg.vector_norm(value.value, dim=value.dim, keepdim=True)
    return torch.linalg.vector_norm(value)


def reduce(value: Any) -> torch.Tensor:
    """One tensor's reduction of ``value``, over the whole logical tensor when it is a DTensor
    (:func:`~torchstep.core.dtensors.whole`)."""
    return dtensors.whole(local_reduce(value))


def made_names(items: list, group: dict) -> set[str]:
    """The temporaries ``items`` make for ``group``."""
    return {n for item in items if isinstance(item, (Pass, MatrixStage)) and item.when(group)
            for n in names_of(item.makes, group)}


class ReferenceLane:
    """Some of a group's tensors, each run through the program on its own."""

    def __init__(self, opt: Any, algo: Staged, group: dict, params: list[torch.Tensor]) -> None:
        self.opt, self.algo, self.group, self.params = opt, algo, group, params
        self.values: list[dict[str, Any]] = [{"numel": p.numel()} for p in params]
        self.sharded = any(dtensors.is_dtensor(p) for p in params)
        if self.sharded:
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

    def _run_item(self, item: Any, p: torch.Tensor, values: dict, scalars: dict, options: dict,
                  partial: list | None = None) -> None:
        """One item for one tensor. ``partial``: collect its reductions there, still partial, as
        (values, name, value), for the caller to complete together; else complete each now."""
        if isinstance(item, PerTensor):
            values.update(item.fn(**arguments(item.fn, {**values, **scalars})))
            return
        group = self.group
        operands = self._operands(item, p, values, options)
        if isinstance(item, Pass):
            operands.update({n: torch.empty_like(p) for n in names_of(item.makes, group)})
        extra = {k: v for k, v in arguments(item.fn, {**scalars, **values}).items() if k not in operands}
        result = item.fn(**operands, **extra) or {}
        if isinstance(item, MatrixStage):
            values.update(result)
            return
        values.update({n: operands[n] for n in names_of(item.makes, group)})
        if partial is None:
            values.update({k: reduce(v) for k, v in result.items()})
        else:
            partial.extend((values, k, local_reduce(v)) for k, v in result.items())

    def run(self, items: list, context: dict) -> dict[str, list[torch.Tensor]]:
        """Run ``items`` over the tensors; returns every per-tensor value, tensor by tensor.
        Plain tensors go through all of ``items`` one at a time (their temporaries dropped before
        the next makes its own). A lane holding DTensors runs item by item over all its tensors
        instead, so each item's reductions are completed together: one all-reduce per kind of
        reduction and layout (:func:`~torchstep.core.dtensors.whole_all`), not one per tensor --
        at the price of every tensor's temporaries of the segment alive at once."""
        scalars = self.algo.scalars(self.group, context)
        options = self.algo.wrappers(self.group, context)
        made = made_names(items, self.group)
        pairs = list(zip(self.params, self.values))
        if self.sharded:
            for item in items:
                if not item.when(self.group):
                    continue
                partial: list = []
                for p, values in pairs:
                    self._run_item(item, p, values, scalars, options, partial)
                for (values, name, _), value in zip(partial, dtensors.whole_all([v for _, _, v in partial])):
                    values[name] = value
        else:
            live = [item for item in items if item.when(self.group)]
            for p, values in pairs:
                for item in live:
                    self._run_item(item, p, values, scalars, options)
                for n in made:
                    values.pop(n, None)
        if self.sharded:
            for values in self.values:
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
