"""The fused backend: one pass over memory per (dtype, step) bucket of a parameter group.

The kernel is derived, never re-typed: the algorithm's ``update`` -- with the cross-cutting
wrappers (grad unscaling, maximize, weight decay) in front -- is traced into an element-wise
program (:mod:`.trace`) and compiled to one C/OpenMP loop (:mod:`.cpu_kernel`). Hyperparameters
and step-dependent scalars are runtime arguments, so changing lr every step builds nothing new.

Per step and group the Python work is: collect the parameters with gradients, bump all their
``step`` counters at once (each ``state["step"]`` is a 0-d view into one per-group buffer, which
keeps torch's checkpoint layout while making the increment a single operation), and hand the
kernel one table of data pointers per operand. Tensors the kernel cannot take (sparse or
non-contiguous gradients, unsupported dtypes or devices) go through the reference backend.
"""

from __future__ import annotations

import array
import collections
import ctypes
import dataclasses
import functools
import itertools
import operator
from typing import Any

import torch

from ..core import lowbit, wrappers
from ..core.state import ensure_state
from . import cpu_kernel, triton_kernel
from . import plan as plan_mod
from .memo import FunctionCache, scalar_structure
from .plan import Bucket, Plan, grad_table, pointer_table
from .repeat import Repeat
from .trace import NotTraceable, trace

# update function -> {(kernel kind, state names, dtype, wrapper flags, scalar structure): (kernel, program)}
_programs = FunctionCache()


class CKernel:
    """A compiled C/OpenMP kernel for CPU tensors."""

    def __init__(self, program, dtype: torch.dtype, forms: tuple = (), rounding: str = "") -> None:
        self.lib = cpu_kernel.load(cpu_kernel.generate(program, dtype, forms, rounding))

    def run(self, tables: list[torch.Tensor], sizes: tuple[int, ...], args: list[float], device=None,
            sums: torch.Tensor | None = None) -> None:
        """``tables[k]``: int64 data pointers of operand k (p, g, state...) for every tensor, then
        the per-tensor scalars (float64); ``sums``: (reductions, chunks) float64 output, if any."""
        self.run_prepared(Launch(tables, sizes, device), args, sums)

    def run_prepared(self, launch: "Launch", args: list[float], sums: torch.Tensor | None = None) -> None:
        """:meth:`run` with the tables and chunks of ``launch`` (kept while they hold)."""
        self.lib.step(launch.nchunks, *launch.chunk_ptrs, launch.table_of_tables, (ctypes.c_double * len(args))(*args),
                      None if sums is None else sums.data_ptr(),
                      min(torch.get_num_threads(), launch.nchunks))  # no idle threads to wait for


class Launch:
    """What a kernel launch needs besides its scalars: the pointer tables (kept alive here), the
    table of their addresses, and the chunking of the tensors. A plan keeps one per bucket while
    its tables -- the gradients' included -- stay the same, so a step builds none of it."""

    __slots__ = ("tables", "sizes", "device", "chunks", "chunk_ptrs", "nchunks", "table_of_tables", "grad_ptrs")

    def __init__(self, tables: list[torch.Tensor], sizes: tuple[int, ...], device=None, chunk: int = 0) -> None:
        self.tables, self.sizes, self.device = tables, sizes, device
        self.chunks = _chunks(sizes, chunk or cpu_kernel.CHUNK)
        self.chunk_ptrs = tuple(c.data_ptr() for c in self.chunks)
        self.nchunks = self.chunks[0].numel()
        self.table_of_tables = (ctypes.c_int64 * len(tables))(*(t.data_ptr() for t in tables))
        self.grad_ptrs: list[int] | None = None  # the plan's gradient addresses the tables hold


class TritonKernel:
    """A Triton kernel (CUDA tensors; CPU tensors under ``TRITON_INTERPRET=1``)."""

    def __init__(self, program, dtype: torch.dtype, forms: tuple = (), rounding: str = "") -> None:
        self.forms = tuple(forms)
        self.kernel = triton_kernel.load(triton_kernel.generate(program, dtype, forms, rounding))

    def run(self, tables: list[torch.Tensor], sizes: tuple[int, ...], args: list[float], device=None,
            sums: torch.Tensor | None = None) -> None:
        """As :meth:`CKernel.run`; per-tensor scalars arrive as float64 tables viewed as int64."""
        chunks = _chunks(sizes, triton_kernel.BLOCK)
        ptrs = torch.cat([t.view(torch.int64).to(device) for t in tables])
        if any(f in lowbit.INT8_FORMS for f in self.forms):  # the code maps after the scalars (and seed)
            args = list(args) + triton_kernel.lowbit_args(self.forms)
        triton_kernel.launch(self.kernel, ptrs, len(sizes), chunks, torch.tensor(args, dtype=torch.float64), device, sums)

    def run_prepared(self, launch: Launch, args: list[float], sums: torch.Tensor | None = None) -> None:
        self.run(launch.tables, launch.sizes, args, launch.device, sums)


def kernel_kind(p: torch.Tensor, force_triton: bool = False) -> str | None:
    """Which kernel serves this parameter's device and dtype ("c", "triton"), or None."""
    dtype = wrappers.as_real(p).dtype
    if p.device.type == "cpu" and not force_triton:
        return "c" if cpu_kernel.supported_dtype(dtype) else None
    if (p.device.type == "cuda" or (p.device.type == "cpu" and triton_kernel.interpreting())) and triton_kernel.available():
        return "triton" if triton_kernel.supported_dtype(dtype) else None
    return None


class _Failed:
    """A cached refusal: this program structure cannot be fused (the reason is kept)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _kernel(algo, names: tuple[str, ...], group: dict, scalars: dict, dtype: torch.dtype, unscale: bool,
            kind: str = "c", forms: tuple = (), rounding: str = ""):
    """The kernel (and its program) for this update function, structure, dtype and kernel kind.
    Raises :class:`~.cpu_kernel.KernelUnavailable` when there is none; a structure the tracer
    cannot model is remembered for that structure only."""
    wd = wrappers.squeeze_scalar(group.get("weight_decay", 0))
    has_wd = not algo.applies_weight_decay and (isinstance(wd, torch.Tensor) or wd != 0)
    decoupled = has_wd and bool(group.get("decoupled_weight_decay", False))  # read only when it matters, as torch
    flags = (bool(group.get("maximize", False)), has_wd, decoupled, unscale)
    structure = (kind, names, dtype, flags, scalar_structure(scalars), forms, rounding)
    found = _programs.get(algo.update, structure)
    if isinstance(found, _Failed):
        raise cpu_kernel.KernelUnavailable(found.reason)
    if found is None:
        maximize, _, decoupled, _ = flags

        def fused_update(p, g, __lr=None, __wd=None, __inv_scale=None, **rest):
            if unscale:
                g = g * __inv_scale
            pseudo = {"maximize": maximize, "weight_decay": __wd if has_wd else 0,
                      "decoupled_weight_decay": decoupled, "lr": __lr}
            g = wrappers.prepare_grad(p, g, pseudo)
            algo.update(p, g, **{n: rest.pop(n) for n in names}, **rest)

        extra = {"__lr": 1.0, "__wd": 1.0}
        if unscale:
            extra["__inv_scale"] = 1.0
        try:
            program = trace(fused_update, ["p", "g", *names], ["p", *names], {**scalars, **extra})
        except NotTraceable as exc:
            failed = _programs.put(algo.update, structure,
                                   _Failed(f"the update uses an operation the tracer does not model: {exc}"))
            raise cpu_kernel.KernelUnavailable(failed.reason) from None
        try:
            cpu_kernel.uniform_steps(program)
        except ValueError as exc:
            raise cpu_kernel.KernelUnavailable(_programs.put(algo.update, structure, _Failed(str(exc))).reason) from None
        found = _programs.put(algo.update, structure,
                              ((CKernel if kind == "c" else TritonKernel)(program, dtype, forms, rounding), program))
    return found


def concrete_flags(scalars: dict) -> dict:
    """0-d boolean tensors among the scalars (e.g. RAdam's ``rectified`` with tensor betas) choose
    the program's structure, as Python booleans do: make them booleans."""
    return {k: bool(v) if isinstance(v, torch.Tensor) and v.dtype == torch.bool else v for k, v in scalars.items()}


@functools.lru_cache(maxsize=64)
def _chunks(sizes: tuple[int, ...], chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tensor_idx, starts, lens = array.array("q"), array.array("q"), array.array("q")
    for t, n in enumerate(sizes):
        for s in range(0, n, chunk):
            tensor_idx.append(t)
            starts.append(s)
            lens.append(min(chunk, n - s))
    return (torch.frombuffer(tensor_idx, dtype=torch.int64), torch.frombuffer(starts, dtype=torch.int64),
            torch.frombuffer(lens, dtype=torch.int64))


def can_fuse_device_dtype(p: torch.Tensor, force_triton: bool = False) -> bool:
    """Whether a kernel exists for this parameter's device and dtype."""
    return kernel_kind(p, force_triton) is not None


def can_fuse(p: torch.Tensor, g: torch.Tensor, force_triton: bool = False, shards: bool = False) -> bool:
    """Whether the kernel may take this parameter and gradient: plain dense tensors (no tensor
    subclass: its data pointer is not the whole story), a kernel for the device and dtype,
    matching gradient, contiguous. ``shards``: DTensors too (element-wise algorithms), when the
    gradient is laid out as the parameter (:func:`~.plan.same_layout`) and their shards, real,
    qualify as plain tensors would."""
    if shards and type(p) is plan_mod.DTensor:
        if not plan_mod.same_layout(p, g) or p.is_complex():
            return False
        p, g = plan_mod.shard_of(p), plan_mod.shard_of(g)
    return (
        plan_mod.is_plain(p)
        and plan_mod.is_plain(g)
        and can_fuse_device_dtype(p, force_triton)
        and g.device == p.device
        and g.dtype == p.dtype
        and g.shape == p.shape
        and p.is_contiguous()
        and g.is_contiguous()
    )


def param_index(opt: Any, p: torch.Tensor) -> int:
    """``p``'s number in ``state_dict()`` (for error messages)."""
    return opt._param_numbers().get(id(p), -1)


def _forget(opt: Any, p: torch.Tensor, created: list[str]) -> None:
    """Undo the state a plan build created for ``p`` (it goes the reference way, which must
    see its first step as a first step)."""
    state = opt.state.get(p)
    if state is None:
        return
    for n in created:
        state.pop(n, None)
    if not state:
        del opt.state[p]


def _build_plan(opt: Any, group: dict, with_grad: list, names: tuple, force_triton: bool,
                layout: tuple = ((), "")) -> Plan:
    """The slow path: sort parameters into fused / reference, check and create state, attach
    counters, group by dtype and kernel kind, and build the pointer tables. Refused for the
    kernel: duplicates (torch updates such a tensor once per occurrence), zero-element tensors,
    subclasses, non-contiguous or mismatched tensors, and tensors sharing memory."""
    algo = opt.algorithm
    all_names = algo.state_names(group)
    forms, how = layout
    operands = lowbit.operand_names(names, forms, how) if (forms or how) else names
    form_of = dict(zip(names, forms))
    occurrences = collections.Counter(map(id, with_grad))
    params, leftover, states, firsts, created = [], [], [], [], []
    for p in with_grad:
        if (occurrences[id(p)] > 1 or plan_mod.shard_of(p).numel() == 0
                or not can_fuse(p, p.grad, force_triton, shards=True)):
            leftover.append(p)
            continue
        state = opt.state.get(p, {})
        for n in names:
            if n in state:
                plan_mod.check_state_shape(param_index(opt, p), p, n, state[n])
        state = opt.state[p]
        before = set(state)
        first = ensure_state(algo, p, group, state, all_names)
        made = [k for k in state if k not in before]
        if not plan_mod.state_fits(p, state, operands, form_of):
            _forget(opt, p, made)
            leftover.append(p)
            continue
        params.append(p)
        states.append(state)
        firsts.append(first)
        created.append(made)
    shard = plan_mod.shard_of
    shared = plan_mod.overlapping([list(map(shard, params))] + [[shard(s[n]) for s in states] for n in operands])
    if shared:
        for i in sorted(shared):
            _forget(opt, params[i], created[i])
            leftover.append(params[i])
        keep = [i for i in range(len(params)) if i not in shared]
        params, states, firsts, created = ([xs[i] for i in keep] for xs in (params, states, firsts, created))
    counted = (("step",) if algo.counts_steps else ()) + tuple(algo.scalar_state)
    plan = Plan(with_grad, params, leftover, states, names=operands, counted=counted, firsts=firsts, created=created,
                force_triton=force_triton, sharded=any(type(p) is plan_mod.DTensor for p in params),
                algo_names=names, forms=forms, rounding=how)
    if params and counted:
        plan.counters.attach(counted, params, states)
    by_kind: dict[tuple, list[int]] = {}
    shard, real = plan_mod.shard_of, wrappers.as_real
    for i, p in enumerate(params):  # DTensors of different meshes or placements never share a call
        p = shard(p)
        by_kind.setdefault((kernel_kind(p, force_triton), real(p).dtype, plan_mod.layout_key(params[i])), []).append(i)
    for (kind, dtype, _), members in by_kind.items():
        tables = [pointer_table([real(shard(params[i])) for i in members])]
        tables += [pointer_table([real(shard(states[i][n])) for i in members]) for n in operands]
        if lowbit.needs_bits(forms, how):  # the parameters' numbers, for their rounding bits
            numbers = opt._param_numbers()
            tables.append(torch.tensor([numbers[id(params[i])] for i in members], dtype=torch.int64))
            tables.append(torch.tensor([lowbit.element_offset(params[i]) for i in members], dtype=torch.int64))
        sizes = tuple(real(shard(params[i])).numel() for i in members)
        plan.buckets.append(Bucket(kind, dtype, members, sizes, tables))
    plan.seal()
    return plan


def _roll_back(opt: Any, plan: Plan, members: list[int]) -> None:
    for i in members:
        if plan.firsts[i]:
            _forget(opt, plan.params[i], plan.created[i])


def run_fused_kernels(opt: Any, group: dict, cache: dict, grad_scale=None,
                      force_triton: bool = False, repeatable: bool = False) -> tuple[list[torch.Tensor], list[str]]:
    """Fused step of ``group``: returns the parameters left for the reference backend, and the
    reasons (to warn about) why a kernel could not be had for some. ``cache`` keeps this group's
    :class:`Plan` between steps, and -- where ``repeatable`` (``group`` is the optimizer's own
    group, no GradScaler) and the step's shape allows -- a :class:`~.repeat.Repeat` of it.

    Transactional: every kernel is obtained (traced, compiled, loaded) before any counter or
    tensor changes; parameters whose kernel cannot be had go to the reference backend untouched,
    with any state this step created removed again, so they see exactly one step."""
    algo = opt.algorithm
    cache.pop("repeat", None)
    names = algo.elementwise_names(group)
    every = group["params"]
    all_grads = list(map(plan_mod.grad_of, every))
    if not all(map(operator.is_not, all_grads, itertools.repeat(None))):
        with_grad = [p for p, g in zip(every, all_grads) if g is not None]
        all_grads = [g for g in all_grads if g is not None]
    else:
        with_grad = list(every)
    options = tuple(group.get(k) for k in lowbit.OPTIONS)
    if cache.get("lowbit") != options:  # plans made under other options hold state in other forms
        for key in [k for k in cache if k != "lowbit"]:
            del cache[key]
        cache["lowbit"] = options
    if not lowbit.active(group):
        return _run_plan(opt, group, cache, with_grad, all_grads, names, ((), ""), grad_scale, force_triton, repeatable)
    # which layout each parameter's state is held in: worked out once per set of parameters (and
    # dtypes), not every step; the options are part of the cache's key above
    key = (tuple(map(id, with_grad)), tuple(p.dtype for p in with_grad), names)
    parts = cache.get("layouts")
    if parts is None or parts[0] != key:
        by_layout: dict[tuple, list[int]] = {}
        for i, p in enumerate(with_grad):
            by_layout.setdefault((lowbit.forms_of(algo, p, group, names), lowbit.rounding(p, group)), []).append(i)
        parts = cache["layouts"] = (key, list(by_layout.items()))
    leftover: list[torch.Tensor] = []
    reasons: list[str] = []
    for layout, members in parts[1]:
        ps, gs = [with_grad[i] for i in members], [all_grads[i] for i in members]
        more, why = _run_plan(opt, group, cache.setdefault(("part", layout), {}), ps, gs, names, layout,
                              grad_scale, force_triton, False)
        leftover += more
        reasons += why
    return leftover, reasons


def _run_plan(opt: Any, group: dict, cache: dict, with_grad: list, all_grads: list, names: tuple, layout: tuple,
              grad_scale, force_triton: bool, repeatable: bool) -> tuple[list[torch.Tensor], list[str]]:
    """:func:`run_fused_kernels` for the parameters ``with_grad`` whose state is held in one
    layout (``(forms, rounding)``, see :mod:`torchstep.core.lowbit`; all of them, usually)."""
    algo = opt.algorithm
    plan = cache.get("plan")
    grads = None
    if plan is not None and plan.algo_names == names and plan.force_triton == force_triton:
        grads = plan.still_valid(with_grad, all_grads)
    if grads is None:
        cache.pop("plan", None)
        plan = _build_plan(opt, group, with_grad, names, force_triton, layout)
        grads = plan.still_valid(with_grad) if plan.params else []
        if grads is None:  # a gradient shares memory with what the kernel writes
            _roll_back(opt, plan, list(range(len(plan.params))))
            return list(with_grad), []
        cache["plan"] = plan
    if not plan.params:
        return plan.leftover, []
    firsts, plan.firsts = plan.firsts, [False] * len(plan.params)  # state is new only once
    inv_scale = None if grad_scale is None else 1.0 / float(grad_scale.item())
    steps = [v + 1 for v in plan.counters.values("step")] if algo.counts_steps else None
    held = [plan.counters.sharing_keys(n) for n in algo.scalar_state]
    work, failed, reasons = [], [], []
    for bucket in plan.buckets:
        for subset, step, first in _partition(bucket, steps, firsts, held):
            members = bucket.members if subset is None else [bucket.members[j] for j in subset]
            try:
                work.append(_prepare(opt, group, plan, bucket, subset, members, step, first, inv_scale))
            except cpu_kernel.KernelUnavailable as exc:
                failed += members
                reasons.append(str(exc))
    leftover = plan.leftover
    if failed:
        plan.firsts = firsts
        _roll_back(opt, plan, failed)
        cache.pop("plan", None)
        leftover = leftover + [plan.params[i] for i in sorted(failed)]
    if algo.counts_steps and work:
        plan.counters.bump("step", None if not failed else [i for w in work for i in w.members])
    for item in work:
        _launch(opt, plan, item)
    if repeatable and not failed and not force_triton and len(work) == 1 and work[0].subset is None \
            and Repeat.allowed(algo, group, plan):
        item = work[0]
        cache["repeat"] = Repeat(algo, group, plan, item.bucket, item.runner, item.program,
                                 scalar_structure(item.scalars),
                                 functools.partial(whole_bucket_launch, plan, item.bucket, item.runner))
    return leftover, reasons


def _partition(bucket: Bucket, steps, firsts, held):
    """(subset of the bucket, step, first) runs that share their scalars: the whole bucket in the
    usual case, where every parameter is at the same step."""
    members = bucket.members
    if all(len(set(column)) <= 1 for column in (steps or (), firsts, *held)):  # all plan-wide
        yield None, (steps[members[0]] if steps else None), firsts[members[0]]
        return
    keys = [((steps[i] if steps else None), firsts[i], tuple(h[i] for h in held)) for i in members]
    runs: dict[tuple, list[int]] = {}
    for j, key in enumerate(keys):
        runs.setdefault(key, []).append(j)
    for (step, first, _), js in runs.items():
        yield js, step, first


@dataclasses.dataclass
class _Work:
    bucket: Bucket
    subset: list[int] | None
    members: list[int]
    scalars: dict
    values: dict
    runner: Any
    program: Any
    group: dict


def _prepare(opt, group, plan: Plan, bucket: Bucket, subset, members, step, first, inv_scale) -> _Work:
    """Everything a launch needs, with no side effect: scalars and the kernel."""
    algo = opt.algorithm
    scalars = concrete_flags(algo.scalars(group, step, first))
    probe = scalars
    if algo.advance is not None:  # the structure advance's scalars give, from copies of the state
        lead = plan.states[members[0]]
        probe = {**scalars, **algo.advance(scalars, **{n: lead[n].clone() for n in algo.scalar_state})}
    runner, program = _kernel(algo, plan.algo_names, group, probe, bucket.dtype, inv_scale is not None, bucket.kind,
                              plan.forms, plan.rounding)
    values = {"__lr": group["lr"], "__wd": group.get("weight_decay", 0), "__inv_scale": inv_scale}
    return _Work(bucket, subset, members, scalars, values, runner, program, group)


def _launch(opt, plan: Plan, item: _Work) -> None:
    algo = opt.algorithm
    scalars, members, bucket, subset = item.scalars, item.members, item.bucket, item.subset
    if algo.advance is not None:
        lead = plan.states[members[0]]
        scalars = {**scalars, **concrete_flags(algo.advance(scalars, **{n: lead[n] for n in algo.scalar_state}))}
        if len(members) > 1:
            for n in algo.scalar_state:
                plan.counters.broadcast(n, members, lead[n])
    values = {**scalars, **item.values}
    uniform = cpu_kernel.evaluate_uniform(item.program, [wrappers.squeeze_scalar(values[k]) for k in item.program.scalars])
    if lowbit.needs_bits(plan.forms, plan.rounding):  # the seed and step the rounding bits are drawn from
        group = item.group
        uniform = [*uniform, float(lowbit.seed(group)), float(int(group.get("rounding_step", 0)) & 0xFFFFFFFF)]
    device = plan_mod.shard_of(plan.params[members[0]]).device
    if subset is None:  # the whole bucket: its launch is kept while the gradients stay where they were
        launch = bucket.launch
        if launch is None or launch.grad_ptrs is not plan.grad_ptrs:
            launch = whole_bucket_launch(plan, bucket, item.runner)
    else:
        pick = torch.tensor(subset, dtype=torch.int64)
        tables = [bucket.tables[0][pick], grad_table(plan.grad_ptrs, members), *(t[pick] for t in bucket.tables[1:])]
        launch = Launch(tables, tuple(bucket.sizes[j] for j in subset), device, _chunk_of(item.runner))
    item.runner.run_prepared(launch, uniform)


def whole_bucket_launch(plan: Plan, bucket: Bucket, runner: Any) -> Launch:
    """The launch of a whole bucket with this step's gradients; kept as ``bucket.launch``."""
    tables = [bucket.tables[0], grad_table(plan.grad_ptrs, bucket.members), *bucket.tables[1:]]
    device = plan_mod.shard_of(plan.params[bucket.members[0]]).device
    launch = bucket.launch = Launch(tables, bucket.sizes, device, _chunk_of(runner))
    launch.grad_ptrs = plan.grad_ptrs
    return launch


def _chunk_of(runner: Any) -> int:
    return triton_kernel.BLOCK if isinstance(runner, TritonKernel) else cpu_kernel.CHUNK
