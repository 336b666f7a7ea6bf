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
import ctypes
import functools
from typing import Any

import torch

from ..core import wrappers
from . import cpu_kernel, reference, triton_kernel
from .plan import Bucket, Plan, grad_table, pointer_table
from .trace import trace

_programs: dict[tuple, Any] = {}


def _structure(value: Any) -> Any:
    """What of a scalar's value shapes the program (its type and booleans), not its number."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    return "#"


class CKernel:
    """A compiled C/OpenMP kernel for CPU tensors."""

    def __init__(self, program, dtype: torch.dtype) -> None:
        self.lib = cpu_kernel.load(cpu_kernel.generate(program, dtype))

    def run(self, tables: list[torch.Tensor], sizes: tuple[int, ...], args: list[float], device=None,
            sums: torch.Tensor | None = None) -> None:
        """``tables[k]``: int64 data pointers of operand k (p, g, state...) for every tensor, then
        the per-tensor scalars (float64); ``sums``: (reductions, chunks) float64 output, if any."""
        table_of_tables = (ctypes.c_int64 * len(tables))(*(t.data_ptr() for t in tables))
        chunk_t, chunk_s, chunk_n = _chunks(sizes, cpu_kernel.CHUNK)
        self.lib.step(len(chunk_t), chunk_t.data_ptr(), chunk_s.data_ptr(), chunk_n.data_ptr(), table_of_tables,
                      (ctypes.c_double * len(args))(*args), None if sums is None else sums.data_ptr(),
                      torch.get_num_threads())


class TritonKernel:
    """A Triton kernel (CUDA tensors; CPU tensors under ``TRITON_INTERPRET=1``)."""

    def __init__(self, program, dtype: torch.dtype, device: torch.device | None = None) -> None:
        self.kernel = triton_kernel.load(triton_kernel.generate(program, dtype))

    def run(self, tables: list[torch.Tensor], sizes: tuple[int, ...], args: list[float], device=None,
            sums: torch.Tensor | None = None) -> None:
        """As :meth:`CKernel.run`; per-tensor scalars arrive as float64 tables viewed as int64."""
        chunks = _chunks(sizes, triton_kernel.BLOCK)
        ptrs = torch.cat([t.view(torch.int64).to(device) for t in tables])
        triton_kernel.launch(self.kernel, ptrs, len(sizes), chunks, torch.tensor(args, dtype=torch.float64), device, sums)


def kernel_kind(p: torch.Tensor, force_triton: bool = False) -> str | None:
    """Which kernel serves this parameter's device and dtype ("c", "triton"), or None."""
    dtype = wrappers.as_real(p).dtype
    if p.device.type == "cpu" and not force_triton:
        return "c" if cpu_kernel.supported_dtype(dtype) else None
    if (p.device.type == "cuda" or (p.device.type == "cpu" and triton_kernel.interpreting())) and triton_kernel.available():
        return "triton" if triton_kernel.supported_dtype(dtype) else None
    return None


def _kernel(algo, names: tuple[str, ...], group: dict, scalars: dict, dtype: torch.dtype, unscale: bool,
            kind: str = "c"):
    """The kernel (and its program) for this algorithm structure, dtype and kernel kind."""
    wd = wrappers.plain(group.get("weight_decay", 0))
    has_wd = not algo.applies_weight_decay and (isinstance(wd, torch.Tensor) or wd != 0)
    flags = (bool(group.get("maximize", False)), has_wd, bool(group.get("decoupled_weight_decay", False)), unscale)
    key = (kind, algo.name, names, dtype, flags, tuple((k, _structure(v)) for k, v in sorted(scalars.items())))
    if key not in _programs:
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
        program = trace(fused_update, ["p", "g", *names], ["p", *names], {**scalars, **extra})
        _programs[key] = ((CKernel if kind == "c" else TritonKernel)(program, dtype), program)
    return _programs[key]


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


def can_fuse(p: torch.Tensor, g: torch.Tensor, force_triton: bool = False) -> bool:
    return (
        not g.is_sparse
        and can_fuse_device_dtype(p, force_triton)
        and g.device == p.device
        and g.dtype == p.dtype
        and p.is_contiguous()
        and g.is_contiguous()
    )


def _build_plan(opt: Any, group: dict, with_grad: list, names: tuple, all_names: tuple, force_triton: bool) -> Plan:
    """The slow path: sort parameters into fused / reference, create state, attach counters,
    group by dtype and kernel kind, and build the pointer tables that do not change."""
    algo = opt.algorithm
    params, leftover, states, firsts = [], [], [], []
    for p in with_grad:
        g = p.grad
        if not can_fuse(p, g, force_triton):
            leftover.append(p)
            continue
        state = opt.state[p]
        first = reference.ensure_state(algo, p, group, state, all_names)
        if not all(state[n].is_contiguous() and state[n].dtype == p.dtype and state[n].device == p.device for n in names):
            leftover.append(p)
            continue
        params.append(p)
        states.append(state)
        firsts.append(first)
    counted = (("step",) if algo.counts_steps else ()) + tuple(algo.scalar_state)
    plan = Plan(with_grad, params, leftover, states, [], [p.data_ptr() for p in params], firsts=firsts)
    if params and counted:
        plan.counters.attach(counted, params, states)
    plan.tensors = [tuple(s[n] for n in (*names, *counted)) for s in states]
    by_kind: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        by_kind.setdefault((kernel_kind(p, force_triton), wrappers.as_real(p).dtype), []).append(i)
    for (kind, dtype), members in by_kind.items():
        tables = [pointer_table([wrappers.as_real(params[i]) for i in members])]
        tables += [pointer_table([wrappers.as_real(states[i][n]) for i in members]) for n in names]
        sizes = tuple(wrappers.as_real(params[i]).numel() for i in members)
        plan.buckets.append(Bucket(kind, dtype, members, sizes, tables))
    return plan


def step_group(opt: Any, group: dict, cache: dict, grad_scale=None, force_triton: bool = False) -> list[torch.Tensor]:
    """Fused step of ``group``; returns the parameters left for the reference backend.
    ``cache`` keeps this group's :class:`Plan` between steps."""
    algo = opt.algorithm
    names = algo.elementwise_names(group)
    counted_names = (("step",) if algo.counts_steps else ()) + tuple(algo.scalar_state)
    with_grad = [p for p in group["params"] if p.grad is not None]
    plan = cache.get("plan")
    grads = plan.still_valid(with_grad, (*names, *counted_names)) if plan is not None else None
    if grads is None:
        plan = _build_plan(opt, group, with_grad, names, algo.state_names(group), force_triton)
        cache["plan"] = plan
        grads = [p.grad for p in plan.params]
    firsts, plan.firsts = plan.firsts or [False] * len(plan.params), []  # state is new only once
    if not plan.params:
        return plan.leftover
    inv_scale = None if grad_scale is None else 1.0 / float(grad_scale.item())
    steps = plan.counters.bump("step") if algo.counts_steps else None
    held = [plan.counters.values(n) for n in algo.scalar_state]
    uniform = all(len(set(column)) <= 1 for column in (steps or [], firsts, *held))
    for bucket in plan.buckets:
        if uniform:  # the usual case: every parameter is at the same step
            _run_bucket(opt, group, plan, bucket, None, steps[0] if steps else None, firsts[0], names, inv_scale, grads)
            continue
        groups: dict[tuple, list[int]] = {}
        for j, i in enumerate(bucket.members):
            key = (steps[i] if steps else None, firsts[i], tuple(h[i] for h in held))
            groups.setdefault(key, []).append(j)
        for (step, first, _), js in groups.items():
            _run_bucket(opt, group, plan, bucket, js, step, first, names, inv_scale, grads)
    return plan.leftover


def _run_bucket(opt, group, plan: Plan, bucket: Bucket, subset, step, first, names, inv_scale, grads) -> None:
    algo = opt.algorithm
    members = bucket.members if subset is None else [bucket.members[j] for j in subset]
    scalars = algo.scalars(group, step, first)
    if algo.advance is not None:
        lead = plan.states[members[0]]
        scalars = {**scalars, **algo.advance(scalars, **{n: lead[n] for n in algo.scalar_state})}
        if len(members) > 1:
            for n in algo.scalar_state:
                plan.counters.broadcast(n, members, lead[n])
    runner, program = _kernel(algo, names, group, scalars, bucket.dtype, inv_scale is not None, bucket.kind)
    values = {**scalars, "__lr": group["lr"], "__wd": group.get("weight_decay", 0), "__inv_scale": inv_scale}
    uniform = cpu_kernel.evaluate_uniform(program, [wrappers.plain(values[k]) for k in program.scalars])
    grad_ptrs = grad_table(grads, members)
    if subset is None:
        tables, sizes = [bucket.tables[0], grad_ptrs, *bucket.tables[1:]], bucket.sizes
    else:
        pick = torch.tensor(subset, dtype=torch.int64)
        tables = [bucket.tables[0][pick], grad_ptrs, *(t[pick] for t in bucket.tables[1:])]
        sizes = tuple(bucket.sizes[j] for j in subset)
    runner.run(tables, sizes, uniform, plan.params[members[0]].device)
