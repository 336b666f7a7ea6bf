"""The fused backend of staged algorithms (:mod:`torchstep.core.stages`: LAMB, LARS, Prodigy,
Adafactor, Muon): each pass one kernel over every tensor of a group's bucket, with per-tensor
scalars in and per-tensor reductions out; matrix stages and per-row/column norms with torch
operations between the kernels.

:func:`run_pass` runs one element-wise function as one fused kernel over many tensors: it may
read per-tensor scalars (one float64 value per tensor, e.g. a trust ratio) and may return
``{name: expression}``, whose squares (or plain values, for ``Summed``) the kernel sums per
tensor -- per chunk in the kernel (in double), then chunks to tensors with one ``index_add``;
nothing the size of the parameters is materialised. :class:`FusedLane` runs a staged program's
items over a group's fused tensors: passes through :func:`run_pass`, per-tensor arithmetic on
vectors. Its :class:`~.plan.Plan` is built and re-checked every step as the element-wise
algorithms' is, and every kernel it needs is obtained (:meth:`FusedLane.prepare`) before any
counter or tensor changes.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable

import torch

from ..core import wrappers
from ..core.stages import GRADIENTS, MatrixStage, Pass, PerTensor, Staged, arguments, first_reading_g, names_of
from . import cpu_kernel, fused, triton_kernel
from .memo import FunctionCache, scalar_structure
from .plan import Plan, check_state_shape, overlapping, state_fits
from .reference_stages import made_names
from .trace import NotTraceable, trace

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


def run_pass(fn: Callable, operands: dict[str, list[torch.Tensor]], written: tuple[str, ...], scalars: dict,
             per_tensor: dict[str, torch.Tensor] | None = None, force_triton: bool = False,
             cache: dict | None = None, norms: bool = False, fresh: tuple = ()) -> dict[str, torch.Tensor]:
    """Run ``fn(**elements, **scalars, **per_tensor)`` over every tensor of ``operands`` (name ->
    one tensor per parameter; the first name decides dtype and device), storing ``written``.
    ``per_tensor`` maps a name to a float64 vector (one value per parameter). Returns, for each
    name ``fn`` returned, a float64 vector of per-parameter sums of squares (with ``norms``: their
    square roots, as :func:`norms_in` gives them) or plain sums (:class:`~torchstep.core.stages.Summed`).
    ``cache`` (a :class:`~.plan.Plan`'s ``passes``) keeps the buckets, sizes and pointer tables of
    every operand but the gradients (``g``, ``grad``) and those named in ``fresh`` (temporaries)."""
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
        tables = [_table(cache, operands[n], members, None if n in GRADIENTS or n in fresh else (n, device, dtype))
                  for n in names]
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
        summed = program.summed
    if norms:
        out = {k: v if k in summed else norms_in(v, first) for k, v in out.items()}
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


def build_plan(opt: Any, algo: Staged, group: dict, with_grad: list[torch.Tensor], force_triton: bool) -> Plan:
    """Sort ``with_grad`` (dense, real, with their state created) into fused and per-tensor
    parameters; a state tensor shaped unlike ``algo.state_shape`` says raises. Refused for the
    kernels: duplicates, zero-element tensors, subclasses, non-contiguous or mismatched tensors,
    state the algorithm keeps for the per-tensor path (``fusable_state``), shared memory."""
    names = algo.state_names(group)
    occurrences = collections.Counter(map(id, with_grad))
    params, leftover = [], []
    for p in with_grad:
        state = opt.state[p]
        if not algo.fusable_state(p, state, group):
            leftover.append(p)
            continue
        for n in names:
            check_state_shape(fused.param_index(opt, p), p, n, state[n], algo.state_shape(p, n, group))
        ok = (occurrences[id(p)] == 1 and p.numel() > 0 and fused.can_fuse(p, p.grad, force_triton)
              and state_fits(p, state, names))
        (params if ok else leftover).append(p)
    shared = overlapping([params] + [[opt.state[p][n] for p in params] for n in names])
    if shared:
        leftover += [params[i] for i in sorted(shared)]
        params = [p for i, p in enumerate(params) if i not in shared]
    states = [opt.state[p] for p in params]
    counted = ("step",) if algo.counter == "tensor" else ()
    plan = Plan(with_grad, params, leftover, states, names=names, counted=counted, force_triton=force_triton)
    if params and counted:
        plan.counters.attach(counted, params, states)
    plan.seal()
    return plan


@functools.lru_cache(maxsize=None)
def _with_wrappers(fn: Callable, maximize: bool, has_wd: bool, decoupled: bool) -> Callable:
    """``fn`` with the shared wrappers in front of its gradient ``g`` (one function object per
    combination, so the kernel cache keys on it)."""

    def stage(p, g, __lr=None, __wd=None, **rest):
        options = {"maximize": maximize, "weight_decay": __wd if has_wd else 0,
                   "decoupled_weight_decay": decoupled, "lr": __lr}
        return fn(p=p, g=wrappers.prepare_grad(p, g, options), **rest)

    return stage


def wrapped_pass(item: Pass, algo: Staged, group: dict, context: dict) -> tuple[Callable, tuple, tuple, dict]:
    """(function, operands, written operands, extra scalars) of a pass as a kernel runs it: a
    pass reading ``g`` gets the shared wrappers (and writes ``p`` under decoupled decay, applied
    by the program's first pass reading ``g`` only); a pass's temporaries are operands it writes."""
    made = names_of(item.makes, group)
    reads, writes = names_of(item.reads, group) + made, names_of(item.writes, group) + made
    if "g" not in reads:
        return item.fn, reads, writes, {}
    options = algo.wrappers(group, context)
    if options.get("decoupled_weight_decay", False) and item is not first_reading_g(algo.program, group):
        options = {**options, "weight_decay": 0}
    wd = wrappers.squeeze_scalar(options.get("weight_decay", 0))
    has_wd = isinstance(wd, torch.Tensor) or wd != 0
    decoupled = has_wd and bool(options.get("decoupled_weight_decay", False))
    maximize = bool(options.get("maximize", False))
    if not (maximize or has_wd):
        return item.fn, reads, writes, {}
    fn = _with_wrappers(item.fn, maximize, has_wd, decoupled)
    written = writes if not decoupled or "p" in writes else ("p", *writes)
    return fn, reads, written, {"__lr": options.get("lr"), "__wd": wd}


class FusedLane:
    """A group's fused tensors (``plan.params``) through a staged program: passes as kernels,
    per-tensor arithmetic on vectors (one entry per tensor) kept in ``values``; matrix stages and
    per-row/column norms tensor by tensor with torch operations, their tensors (and the passes'
    temporaries) kept in ``tensors``, one per parameter."""

    def __init__(self, opt: Any, algo: Staged, group: dict, plan: Plan, grads: list[torch.Tensor]) -> None:
        self.opt, self.algo, self.group, self.plan, self.grads = opt, algo, group, plan, grads
        self.device = plan.params[0].device
        numel = plan.passes.get("numel")
        if numel is None:
            numel = torch.tensor([p.numel() for p in plan.params], dtype=torch.float64, device=self.device)
            plan.passes["numel"] = numel
        self.values: dict[str, torch.Tensor] = {"numel": numel}
        self.tensors: dict[str, list[torch.Tensor]] = {}

    def _operand(self, name: str) -> list[torch.Tensor]:
        if name == "p":
            return self.plan.params
        if name in GRADIENTS:
            return self.grads
        if name in self.tensors:
            return self.tensors[name]
        return [s[name] for s in self.plan.states]

    def _pass(self, item: Pass, context: dict, scalars: dict, per_tensor: list[str]) -> tuple:
        fn, reads, written, extra = wrapped_pass(item, self.algo, self.group, context)
        return fn, reads, written, {**arguments(item.fn, scalars), **extra}, sorted(arguments(item.fn, dict.fromkeys(per_tensor)))

    def prepare(self, context: dict) -> None:
        """Obtain (trace, compile, load) every kernel the step will run, changing nothing;
        raises :class:`~.cpu_kernel.KernelUnavailable` when one cannot be had."""
        algo, group, force_triton = self.algo, self.group, self.plan.force_triton
        scalars = algo.scalars(group, context)
        per_tensor = ["numel", *(algo.step_scalars(group, 1) if algo.step_scalars else ())]
        buckets = {(p.device, p.dtype): p for p in self.plan.params}
        for item in algo.program:
            if not isinstance(item, Pass) or not item.when(group):
                per_tensor += item.outputs if isinstance(item, PerTensor) and item.when(group) else \
                    item.values if isinstance(item, MatrixStage) and item.when(group) else ()
                continue
            fn, reads, written, values, names = self._pass(item, context, scalars, per_tensor)
            for (_, dtype), p in buckets.items():
                try:
                    _, program = _kernel(fn, reads, written, values, tuple(names), dtype,
                                         fused.kernel_kind(p, force_triton))
                except NotTraceable as exc:
                    raise cpu_kernel.KernelUnavailable(
                        f"a stage uses an operation the tracer does not model: {exc}") from None
                if any(program.nodes[node][0] != "in" for node, _ in program.along.values()):
                    raise cpu_kernel.KernelUnavailable(
                        "a per-row or per-column reduction of a computed expression has no kernel")
                per_tensor += [k for k in program.reductions if k not in per_tensor]

    def begin(self) -> None:
        """Bump the ``step`` counters (one operation) and make the per-tensor step scalars."""
        algo, plan = self.algo, self.plan
        if algo.counter != "tensor":
            return
        plan.counters.bump("step")
        if algo.step_scalars is not None:
            steps = plan.counters.values("step")
            by_step = {t: algo.step_scalars(self.group, t) for t in set(steps)}
            for k in by_step[steps[0]]:
                self.values[k] = torch.tensor([by_step[t][k] for t in steps], dtype=torch.float64, device=self.device)

    def _run_pass(self, item: Pass, context: dict, scalars: dict) -> None:
        fn, reads, written, values, names = self._pass(item, context, scalars, list(self.values))
        first = self.plan.params[0]
        _, program = _kernel(fn, reads, written, values, tuple(names), first.dtype,
                             fused.kernel_kind(first, self.plan.force_triton))
        for n in names_of(item.makes, self.group):
            self.tensors[n] = [torch.empty_like(p) for p in self.plan.params]
        operands = {n: self._operand(n) for n in reads}
        for name, (node, dim) in program.along.items():  # from an operand, before the kernel may write it
            source = operands[program.inputs[program.nodes[node][1]]]
            self.tensors[name] = [torch.linalg.vector_norm(t, dim=dim, keepdim=True) for t in source]
        sums = run_pass(fn, operands, written, values, {k: self.values[k] for k in names}, self.plan.force_triton,
                        self.plan.passes, norms=True, fresh=tuple(self.tensors))
        self.values.update(sums)

    def _run_matrix(self, item: MatrixStage, scalars: dict) -> None:
        reads, made = names_of(item.reads, self.group), names_of(item.makes, self.group)
        columns = {n: self._operand(n) for n in reads}
        wanted = arguments(item.fn, {**scalars, **self.values, **self.tensors})
        numbers = {k: self.values[k].tolist() for k in wanted if k in self.values}
        tensors = {k: self.tensors[k] for k in wanted if k in self.tensors and k not in reads}
        fixed = {k: v for k, v in wanted.items() if k not in numbers and k not in tensors and k not in reads}
        results = [item.fn(**{n: c[i] for n, c in columns.items()}, **fixed, **{k: v[i] for k, v in numbers.items()},
                           **{k: v[i] for k, v in tensors.items()}) for i in range(len(self.plan.params))]
        self.tensors.update({n: [r[n].contiguous() for r in results] for n in made})  # the kernels read them flat
        self.values.update({n: torch.tensor([float(r[n]) for r in results], dtype=torch.float64, device=self.device)
                            for n in item.values})

    def run(self, items: list, context: dict) -> dict[str, list[torch.Tensor]]:
        """Run ``items``; returns every per-tensor value (temporaries dropped)."""
        scalars = self.algo.scalars(self.group, context)
        for item in items:
            if not item.when(self.group):
                continue
            if isinstance(item, PerTensor):
                self.values.update(item.fn(**arguments(item.fn, {**self.values, **scalars})))
            elif isinstance(item, MatrixStage):
                self._run_matrix(item, scalars)
            else:
                self._run_pass(item, context, scalars)
        for n in made_names(items, self.group):
            self.tensors.pop(n, None)
        return {**{k: [v] for k, v in self.values.items()}, **self.tensors}

    def end(self) -> None:
        """Bump Python-int ``step`` counters (Prodigy's) once the step is done."""
        if self.algo.counter == "int":
            for state in self.plan.states:
                state["step"] += 1


def prepare_lane(opt: Any, algo: Staged, group: dict, params: list[torch.Tensor], context: dict, cache: dict,
                 force_triton: bool) -> tuple[FusedLane | None, list[torch.Tensor], list[str]]:
    """The fused lane of ``group`` for this step, its kernels obtained: (lane or None, the
    parameters left for the reference backend, reasons to warn about). ``cache`` holds the
    group's :class:`~.plan.Plan`, used while :meth:`~.plan.Plan.still_valid` says it holds."""
    names = algo.state_names(group)
    plan, grads = cache.get("plan"), None
    if plan is not None and plan.names == names and plan.force_triton == force_triton:
        grads = plan.still_valid(params)
    if grads is None:
        cache.pop("plan", None)
        plan = build_plan(opt, algo, group, params, force_triton)
        grads = plan.still_valid(params) if plan.params else []
        if grads is None:  # a gradient shares memory with what the kernels write
            return None, list(params), []
        cache["plan"] = plan
    if not plan.params:
        return None, plan.leftover, []
    lane = FusedLane(opt, algo, group, plan, grads)
    lane.prepare(context)
    return lane, plan.leftover, []
