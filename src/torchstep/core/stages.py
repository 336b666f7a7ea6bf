"""Algorithms with reductions, written once as stages: element-wise passes and the scalar
computations between them.

A :class:`Staged` algorithm's step is its ``program``, a sequence of

* :class:`Pass` -- an element-wise function run over every tensor. It is called with keyword
  arguments: its operands (``reads``: ``"p"``; ``"g"``, the gradient after the shared wrappers of
  :mod:`.wrappers`; ``"grad"``, the gradient as stored; state names), the uniform scalars of the
  group and the per-tensor values it names (``numel``, the element count, is always one). It
  updates the operands named in ``writes`` in place and may return ``{name: expression}``: per-tensor reductions -- the L2 norm of a bare
  expression, the plain sum of one wrapped in :class:`Summed` (a dot product, an L1 norm), the
  L2 norms along one of the last two dimensions of one wrapped in :class:`Along` (a tensor per
  parameter: one norm per row, or per column, of each matrix -- Adafactor's factored statistics).
  ``makes`` names temporaries the pass fills: parameter-shaped tensors of the parameter's dtype,
  created empty for it, that later items of the same segment read as operands.
* :class:`MatrixStage` -- a per-tensor function run with torch operations on real tensors (a
  matrix function: Newton--Schulz; row and column factors). It reads operands (not ``"g"``) and
  per-tensor values and returns ``{name: value}``: parameter-shaped temporaries (``makes``) later
  passes read as operands, and per-tensor numbers (``values``).
* :class:`PerTensor` -- ``fn(**values, **scalars) -> {name: value}``: arithmetic on one value per
  tensor (norms in, a trust ratio out). Written with element-wise tensor operations, it serves
  one tensor's 0-d values and a vector of many tensors' values alike.
* :class:`Across` -- ``fn(opt, context, reductions) -> dict | None``: a computation over the
  reductions of every tensor of every group (Prodigy's distance estimate). ``reductions`` lists,
  per lane (a group's fused tensors, or its tensors run one by one), ``(group, {name: [tensor,
  ...]})``, each tensor holding the values of some of the group's tensors. It returns updates of
  the step's ``context``, or None to end the step there (nothing after it runs).

The step's ``context`` starts as ``context(opt)`` (global scalars; it may raise for invalid
options). Uniform scalars of a group come from ``scalars(group, context)``; ``step_scalars(group,
step)`` gives per-tensor values that depend on that tensor's ``step`` (bias corrections). A
function receives only the names its signature lists.

Backends interpret this; none re-types the math. The reference backend runs every item tensor by
tensor (norms with ``torch.linalg.vector_norm`` in the tensor's dtype, sums accumulated in
float64); the fused backend runs each pass as one kernel per bucket of tensors, accumulating
reductions per chunk in float64, and each :class:`PerTensor` on vectors. A :class:`MatrixStage`
runs tensor by tensor with torch operations in both, and so does an :class:`Along` reduction
(``torch.linalg.vector_norm`` along the dimension): the fused backend takes it, before the pass's
kernel, from the operand it names -- a per-row or per-column reduction of a computed expression
has no kernel (strided per-row sums would need their own code generator), so such a pass falls
back to the reference backend.

DTensor parameters (FSDP2, tensor parallel) always run on the reference backend: their passes are
DTensor operations on the local shards and every reduction is completed over the mesh, so a
per-tensor value is that of the whole logical tensor (see :mod:`torchstep.backends.reference_stages`
and :mod:`torchstep.core.dtensors`). A matrix stage that needs the whole matrix gathers it
itself (Muon), and one that reduces a sharded tensor of values completes that too (Adafactor's
mean of its row factor). An ``Across`` item gets, from a lane holding DTensors, the per-tensor
value ``dtensor``: whether that tensor's sums are already whole (and the same on every rank).

A group's tensors may need different programs (Adafactor factors matrices, not vectors):
``split(group, params)`` returns ``[(extras, params), ...]``; each part runs as if its group were
``{**group, **extras}`` (its own lanes and plans), so ``state_names``, ``when`` and ``scalars``
can read the extras.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

Names = tuple[str, ...]
GRADIENTS = ("g", "grad")


@dataclass
class Along:
    """A reduced expression whose L2 norms along ``dim`` (-1: one per row, -2: one per column of
    the last two dimensions) are wanted, keeping that dimension with size 1."""

    value: Any
    dim: int


@dataclass
class Summed:
    """A reduced expression whose plain per-tensor sum is wanted (a bare one gives its L2 norm;
    the fused kernels compute that from the sum of squares)."""

    value: Any


def _always(group: dict) -> bool:
    return True


def names_of(names: Names | Callable[[dict], Names], group: dict) -> Names:
    """Operand names, given as a tuple or as a function of the group."""
    return names(group) if callable(names) else names


@dataclass(frozen=True)
class Pass:
    """An element-wise stage (see the module docstring). A pass reading ``"g"`` also reads
    ``"p"``: decoupled weight decay, applied with the gradient in the first pass of the program
    that reads it (once per step; later ones get ``g`` without it), writes it."""

    fn: Callable[..., Any]
    reads: Names | Callable[[dict], Names]
    writes: Names | Callable[[dict], Names] = ()
    when: Callable[[dict], bool] = _always
    makes: Names | Callable[[dict], Names] = ()


@dataclass(frozen=True)
class MatrixStage:
    """A per-tensor function with torch operations between passes (see the module docstring):
    ``makes`` names the parameter-shaped tensors it returns, ``values`` its per-tensor numbers."""

    fn: Callable[..., dict]
    reads: Names | Callable[[dict], Names]
    makes: Names | Callable[[dict], Names] = ()
    values: Names = ()
    when: Callable[[dict], bool] = _always


@dataclass(frozen=True)
class PerTensor:
    """Per-tensor scalar arithmetic between passes; ``outputs`` names what ``fn`` returns."""

    fn: Callable[..., dict]
    outputs: Names
    when: Callable[[dict], bool] = _always


@dataclass(frozen=True)
class Across:
    """A computation over every tensor's reductions, between passes (see the module docstring)."""

    fn: Callable[[Any, dict, list], dict | None]


def first_reading_g(program: tuple, group: dict) -> Any:
    """The first item of ``program`` that runs for ``group`` and reads ``"g"`` (it applies the
    decoupled weight decay), or None."""
    return next((item for item in program
                 if isinstance(item, Pass) and item.when(group) and "g" in names_of(item.reads, group)), None)


def group_wrappers(group: dict, context: dict) -> dict:
    """The options of the shared wrappers, read from the group as for element-wise algorithms."""
    return {k: group.get(k, d) for k, d in
            (("maximize", False), ("weight_decay", 0), ("decoupled_weight_decay", False), ("lr", None))}


@dataclass(frozen=True)
class Staged:
    """One algorithm with reductions: its state, its stages and its scalars.

    ``state_names(group)``: the tensors of a parameter's state the passes take (``step`` aside);
    ``init(p, group)``: a parameter's whole initial state (a missing entry is taken from it);
    ``counter``: ``"tensor"`` (``step`` a 0-d tensor, bumped before the first pass), ``"int"``
    (a Python int, bumped after the last pass, Prodigy) or None; ``wrappers(group, context)``: the
    options (``maximize``, ``weight_decay``, ``decoupled_weight_decay``, ``lr``) the shared
    wrappers apply to ``"g"`` -- decay that is part of the algorithm's own math is left out of
    them; ``takes(group)``: whether the group steps at all; ``fusable(group)`` and
    ``fusable_state(p, state, group)``: what the fused backend may take; ``state_shape(p, name,
    group)``: the shape a state tensor must have (the parameter's unless said otherwise);
    ``split``: see the module docstring; ``check(p)``: raises for a parameter the algorithm
    refuses, called for every parameter with a gradient before anything moves."""

    name: str
    state_names: Callable[[dict], Names]
    init: Callable[[torch.Tensor, dict], dict]
    program: tuple
    scalars: Callable[[dict, dict], dict]
    step_scalars: Callable[[dict, Any], dict] | None = None
    counter: str | None = "tensor"
    context: Callable[[Any], dict] = lambda opt: {}
    wrappers: Callable[[dict, dict], dict] = group_wrappers
    takes: Callable[[dict], bool] = _always
    fusable: Callable[[dict], bool] = _always
    fusable_state: Callable[[torch.Tensor, dict, dict], bool] = lambda p, state, group: True
    state_shape: Callable[[torch.Tensor, str, dict], tuple] = lambda p, name, group: tuple(p.shape)
    split: Callable[[dict, list], list[tuple[dict, list]]] | None = None
    check: Callable[[torch.Tensor], None] | None = None

    def segments(self) -> list[tuple[list, Across | None]]:
        """The program cut at its :class:`Across` items: (items, the Across ending them or None)."""
        out, items = [], []
        for item in self.program:
            if isinstance(item, Across):
                out.append((items, item))
                items = []
            else:
                items.append(item)
        out.append((items, None))
        return out


@functools.lru_cache(maxsize=None)
def _accepted(fn: Callable) -> frozenset[str] | None:
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


def parts(algo: Staged, group: dict, params: list) -> list[tuple[dict, tuple, list]]:
    """``group``'s parameters as :attr:`Staged.split` divides them: (the group as that part sees
    it, a key naming the part -- () for an undivided group -- , its parameters)."""
    if algo.split is None:
        return [(group, (), params)]
    return [({**group, **extras}, tuple(sorted(extras.items())), ps) for extras, ps in algo.split(group, params) if ps]


def arguments(fn: Callable, available: dict) -> dict:
    """The entries of ``available`` that ``fn``'s signature names (all, if it takes ``**kw``)."""
    accepted = _accepted(fn)
    return dict(available) if accepted is None else {k: v for k, v in available.items() if k in accepted}
