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
import functools
from typing import Any

import torch

from ..core import wrappers
from . import cpu_kernel, reference, triton_kernel
from .trace import NotTraceable, trace

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

    def run(self, columns: list[list[torch.Tensor]], args: torch.Tensor) -> None:
        tables = [torch.tensor([t.data_ptr() for t in column], dtype=torch.int64) for column in columns]
        table_of_tables = torch.tensor([t.data_ptr() for t in tables], dtype=torch.int64)
        chunk_t, chunk_s, chunk_n = _chunks(tuple(t.numel() for t in columns[0]), cpu_kernel.CHUNK)
        self.lib.step(len(chunk_t), chunk_t.data_ptr(), chunk_s.data_ptr(), chunk_n.data_ptr(),
                      table_of_tables.data_ptr(), args.data_ptr(), torch.get_num_threads())


class TritonKernel:
    """A Triton kernel (CUDA tensors; CPU tensors under ``TRITON_INTERPRET=1``)."""

    def __init__(self, program, dtype: torch.dtype) -> None:
        self.kernel = triton_kernel.load(triton_kernel.generate(program, dtype))

    def run(self, columns: list[list[torch.Tensor]], args: torch.Tensor) -> None:
        chunks = _chunks(tuple(t.numel() for t in columns[0]), triton_kernel.BLOCK)
        tables = [[t.data_ptr() for t in column] for column in columns]
        triton_kernel.launch(self.kernel, tables, chunks, args, columns[0][0].device)


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
    has_wd = isinstance(wd, torch.Tensor) or wd != 0
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


class GroupCounters:
    """A group's per-parameter 0-d state (``step``, and e.g. NAdam's ``mu_product``), each name
    kept as views into one buffer, so bumping or refreshing all of them is one operation while
    every ``state[name]`` stays a 0-d tensor of its own, as torch lays it out."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}
        self.index: dict[int, int] = {}

    def _valid(self, names: tuple[str, ...], params: list, states: list) -> bool:
        for n in names:
            buf = self.buffers.get(n)
            if buf is None:
                return False
            base, size = buf.data_ptr(), buf.element_size()
            for p, s in zip(params, states):
                i = self.index.get(id(p))
                if i is None or s[n].data_ptr() != base + i * size:
                    return False
        return True

    def attach(self, names: tuple[str, ...], params: list, states: list) -> torch.Tensor:
        """Make sure every listed state counter is a view into this object's buffers (rebuilding
        them from the current values if not); returns the parameters' indices."""
        if not self._valid(names, params, states):
            self.buffers, self.index = {}, {id(p): i for i, p in enumerate(params)}
            for n in names:
                template = states[0][n]
                buf = torch.tensor([float(s[n].item()) for s in states], dtype=template.dtype, device=template.device)
                for i, s in enumerate(states):
                    s[n] = buf[i]
                self.buffers[n] = buf
        return torch.tensor([self.index[id(p)] for p in params], dtype=torch.int64)

    def bump(self, name: str, idx: torch.Tensor) -> list[float]:
        buf = self.buffers[name]
        buf.index_add_(0, idx, torch.ones(len(idx), dtype=buf.dtype, device=buf.device))
        return buf[idx].tolist()

    def values(self, name: str, idx: torch.Tensor) -> list[float]:
        return self.buffers[name][idx].tolist()

    def broadcast(self, name: str, idx: torch.Tensor, source: torch.Tensor) -> None:
        """Copy one parameter's (just advanced) value to the others of its bucket."""
        self.buffers[name].index_fill_(0, idx, source)


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


def step_group(opt: Any, group: dict, counters: GroupCounters, grad_scale=None,
               force_triton: bool = False) -> list[torch.Tensor]:
    """Fused step of ``group``; returns the parameters left for the reference backend."""
    algo = opt.algorithm
    all_names = algo.state_names(group)
    names = algo.elementwise_names(group)
    fused, leftover, states, firsts = [], [], [], []
    for p in group["params"]:
        g = p.grad
        if g is None:
            continue
        if not can_fuse(p, g, force_triton):
            leftover.append(p)
            continue
        state = opt.state[p]
        first = reference.ensure_state(algo, p, group, state, all_names)
        if not all(state[n].is_contiguous() and state[n].dtype == p.dtype and state[n].device == p.device for n in names):
            leftover.append(p)
            continue
        fused.append(p)
        states.append(state)
        firsts.append(first)
    if not fused:
        return leftover
    counted = (("step",) if algo.counts_steps else ()) + tuple(algo.scalar_state)
    idx = counters.attach(counted, fused, states) if counted else None
    step_values = counters.bump("step", idx) if algo.counts_steps else [None] * len(fused)
    held = list(zip(*(counters.values(n, idx) for n in algo.scalar_state))) or [()] * len(fused)
    buckets: dict[tuple, list[int]] = {}
    for i, p in enumerate(fused):
        buckets.setdefault((p.dtype, step_values[i], firsts[i], held[i]), []).append(i)
    inv_scale = None if grad_scale is None else 1.0 / float(grad_scale.item())
    for (dtype, step, first, _), members in buckets.items():
        scalars = algo.scalars(group, step, first)
        if algo.advance is not None:
            lead = states[members[0]]
            scalars = {**scalars, **algo.advance(scalars, **{n: lead[n] for n in algo.scalar_state})}
            if len(members) > 1:
                positions = idx[members]
                for n in algo.scalar_state:
                    counters.broadcast(n, positions, lead[n])
        lead_p = fused[members[0]]
        runner, program = _kernel(algo, names, group, scalars, wrappers.as_real(lead_p).dtype, inv_scale is not None,
                                  kernel_kind(lead_p, force_triton))
        values = {**scalars, "__lr": group["lr"], "__wd": group.get("weight_decay", 0), "__inv_scale": inv_scale}
        uniform = cpu_kernel.evaluate_uniform(program, [wrappers.plain(values[k]) for k in program.scalars])
        columns = [[wrappers.as_real(fused[i]) for i in members], [wrappers.as_real(fused[i].grad) for i in members]]
        columns += [[wrappers.as_real(states[i][n]) for i in members] for n in names]
        runner.run(columns, torch.tensor(uniform, dtype=torch.float64))
    return leftover

