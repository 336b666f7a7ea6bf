"""Fused passes for per-tensor algorithms (LAMB, LARS): element-wise passes with per-tensor
scalars in and per-tensor sums of squares out.

Such an algorithm is not one element-wise ``update``: it needs norms of each tensor between two
element-wise stages. It is written as a few small element-wise functions, each run here as one
fused kernel over every tensor of a group (:func:`run_pass`): a function may read per-tensor
scalars (given as one float64 value per tensor, e.g. a trust ratio) and may return
``{name: expression}``, whose squares the kernel sums per tensor -- per chunk in the kernel (in
double), then chunks to tensors with one ``index_add``; nothing the size of the parameters is
materialised. Between passes the algorithm computes its per-tensor scalars with a few vector
operations on those sums.
"""

from __future__ import annotations

import collections
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..core import wrappers
from . import cpu_kernel, fused, triton_kernel
from .memo import FunctionCache, scalar_structure
from .plan import GroupCounters, Plan, check_state_shape, is_plain, overlapping
from .trace import trace

# stage function -> {(operands, written, scalar structure, per-tensor names, dtype, kind): (kernel, program)}
_kernels = FunctionCache()


def _kernel(fn: Callable, names: tuple, written: tuple, scalars: dict, per_tensor: tuple, dtype, kind: str):
    structure = (names, written, scalar_structure(scalars), per_tensor, dtype, kind)
    found = _kernels.get(fn, structure)
    if found is None:
        program = trace(fn, list(names), list(written), scalars, per_tensor)
        runner = fused.CKernel(program, dtype) if kind == "c" else fused.TritonKernel(program, dtype)
        found = _kernels.put(fn, structure, (runner, program))
    return found


@dataclass
class StagePlan(Plan):
    """Which parameters of a group the fused passes take, re-checked each step exactly as the
    fused backend's :class:`~.plan.Plan` is; ``cache`` keeps pointer tables while the plan holds."""

    cache: dict = field(default_factory=dict)

    @classmethod
    def build(cls, opt: Any, with_grad: list[torch.Tensor], force_triton: bool) -> "StagePlan":
        """Sort ``with_grad`` (dense gradients: the per-tensor step checked them) into fused and
        per-tensor parameters; a state tensor shaped unlike its parameter raises."""
        occurrences = collections.Counter(map(id, with_grad))
        params, leftover = [], []
        for p in with_grad:
            held = {k: v for k, v in opt.state[p].items() if k != "step" and isinstance(v, torch.Tensor)}
            for k, v in held.items():
                check_state_shape(fused.param_index(opt, p), p, k, v)
            ok = occurrences[id(p)] == 1 and p.numel() > 0 and fused.can_fuse(p, p.grad, force_triton) and all(
                is_plain(v) and v.is_contiguous() and v.dtype == p.dtype and v.device == p.device for v in held.values())
            (params if ok else leftover).append(p)
        names = tuple(sorted({k for p in params for k, v in opt.state[p].items()
                              if k != "step" and isinstance(v, torch.Tensor)}))
        whole = [all(n in opt.state[p] for n in names) for p in params]
        leftover += [p for p, ok in zip(params, whole) if not ok]
        params = [p for p, ok in zip(params, whole) if ok]
        states = [opt.state[p] for p in params]
        shared = overlapping([params] + [[s[n] for s in states] for n in names])
        if shared:
            leftover += [params[i] for i in sorted(shared)]
            params = [p for i, p in enumerate(params) if i not in shared]
            states = [opt.state[p] for p in params]
        plan = cls(with_grad, params, leftover, states, names=names, force_triton=force_triton)
        plan.seal()
        return plan


def run_pass(fn: Callable, operands: dict[str, list[torch.Tensor]], written: tuple[str, ...], scalars: dict,
             per_tensor: dict[str, torch.Tensor] | None = None, force_triton: bool = False,
             cache: dict | None = None) -> dict[str, torch.Tensor]:
    """Run ``fn(**elements, **scalars, **per_tensor)`` over every tensor of ``operands`` (name ->
    one tensor per parameter; the first name decides dtype and device), storing ``written``.
    ``per_tensor`` maps a name to a float64 vector (one value per parameter). Returns, for each
    name ``fn`` returned, a float64 vector of per-parameter sums of squares. ``cache`` (a
    :class:`StagePlan`'s) keeps the buckets, sizes and pointer tables of every operand but the
    gradient ``g``."""
    cache = {} if cache is None else cache
    per_tensor = per_tensor or {}
    names = tuple(operands)
    first = operands[names[0]]
    if "buckets" not in cache:
        cache["buckets"] = {}
        for i, p in enumerate(first):
            cache["buckets"].setdefault((p.device, p.dtype), []).append(i)
    out: dict[str, torch.Tensor] = {}
    for (device, dtype), members in cache["buckets"].items():
        kind = fused.kernel_kind(first[members[0]], force_triton)
        runner, program = _kernel(fn, names, written, scalars, tuple(per_tensor), dtype, kind)
        whole = len(members) == len(first)
        pick = None if whole else torch.tensor(members, dtype=torch.int64)
        tables = [_table(cache, operands[n], members, None if n == "g" else (n, device, dtype)) for n in names]
        tables += [(v if whole else v[pick.to(v.device)]).to(device, torch.float64).contiguous() for v in per_tensor.values()]
        sizes = cache.get(("sizes", device, dtype)) or cache.setdefault(("sizes", device, dtype),
                                                                         tuple(first[i].numel() for i in members))
        chunk_t = fused._chunks(sizes, cpu_kernel.CHUNK if kind == "c" else triton_kernel.BLOCK)[0]
        sums = torch.empty((len(program.reductions), len(chunk_t)), dtype=torch.float64, device=device)
        values = [wrappers.squeeze_scalar(scalars[k]) for k in program.scalars]
        runner.run(tables, sizes, cpu_kernel.evaluate_uniform(program, values), device, sums if program.reductions else None)
        if not program.reductions:
            continue
        totals = torch.zeros((len(sums), len(members)), dtype=torch.float64, device=device)
        totals.index_add_(1, chunk_t.to(device), sums)
        for r, name in enumerate(program.reductions):
            if whole:
                out[name] = totals[r]
            else:
                out.setdefault(name, torch.zeros(len(first), dtype=torch.float64, device=device))[pick.to(device)] = totals[r]
    return out


def _table(cache: dict, tensors: list[torch.Tensor], members: list[int], key: tuple | None) -> torch.Tensor:
    if key in cache:
        return cache[key]
    table = torch.tensor([tensors[i].data_ptr() for i in members], dtype=torch.int64)
    if key is not None:
        cache[key] = table
    return table


def norms_in(sums: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """Norms from sums of squares, in the parameters' dtype (float64 if the dtypes are mixed),
    so ratios are then computed in the precision the per-tensor path computes them in."""
    dtypes = {p.dtype for p in params}
    return sums.sqrt().to(dtypes.pop() if len(dtypes) == 1 else torch.float64)


class StepCounts:
    """The ``step`` counters of a group's parameters, kept (as the fused backend keeps them) as
    0-d views into one buffer, so reading and bumping all of them is one operation each."""

    def __init__(self) -> None:
        self.counters, self.held = GroupCounters(), []

    def next(self, params: list[torch.Tensor], states: list[dict]) -> list[float]:
        """The values the counters take at this step (``bump`` then stores them)."""
        steps = [s["step"] for s in states]
        if len(steps) != len(self.held) or not all(map(operator.is_, steps, self.held)):
            self.counters.attach(("step",), params, states)
            self.held = [s["step"] for s in states]
        return [t + 1 for t in self.counters.values("step")]

    def bump(self) -> None:
        self.counters.bump("step")
