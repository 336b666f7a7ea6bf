"""What the fused backend remembers about a parameter group between steps, and the checks that
keep it honest.

Building a step's work list -- which parameters take the fused path, their state, the tables of
data pointers the kernel reads -- costs Python time per tensor. A :class:`Plan` keeps that work.
Because a kernel that takes raw pointers is trusted with memory, nothing cached is believed
without a check: every step, before any kernel runs, :meth:`Plan.still_valid` compares each
tensor the kernel will touch (parameters, gradients, every state tensor) with what the plan
recorded -- data pointer, strides, size, dtype, device (contiguity, the only layout the
kernels take, follows), and the identity of the state tensors (``load_state_dict`` replaces them) -- and
checks that no gradient overlaps memory the kernel writes. Anything else rebuilds the plan, and
the build refuses what the kernel must never see (:func:`is_plain`, :func:`check_state_shape`,
:func:`overlapping`).
"""

from __future__ import annotations

import array
import bisect
import itertools
import operator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core import dtensors, lowbit
from ..core.dtensors import DTensor, Partial

_T = torch.Tensor
_dtype_of = operator.attrgetter("dtype")
_device_of = operator.attrgetter("device")
grad_of = operator.attrgetter("grad")
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)
_PLAIN_SET = frozenset(_PLAIN_TYPES)


def is_plain(t: Any) -> bool:
    """A dense tensor of no subclass (``nn.Parameter`` aside): the only kind whose data pointer
    may be handed to a kernel. DTensors and other subclasses take the reference path."""
    return type(t) in _PLAIN_TYPES and t.layout == torch.strided


# The plain tensor a kernel works on for ``t``: ``t`` itself, or a DTensor's local shard
# (element-wise math on the shards of a parameter, its gradient and its state, all laid out
# alike, is the math on the whole tensor).
shard_of = dtensors.local_of


def same_layout(a: Any, b: Any) -> bool:
    """Whether ``b`` is laid out over devices as ``a`` is: both plain, or both DTensors on one
    mesh with the same placements, none of them Partial (a partial value is no element-wise
    operand until it is reduced)."""
    if type(a) is not DTensor or type(b) is not DTensor:
        return type(a) is not DTensor and type(b) is not DTensor
    sa, sb = a._spec, b._spec
    return ((sa.mesh is sb.mesh or sa.mesh == sb.mesh) and sa.placements == sb.placements
            and not any(isinstance(x, Partial) for x in sa.placements))


def layout_key(t: Any) -> Any:
    """What kernel calls are bucketed by besides dtype and kernel: the mesh and placements of a
    DTensor (tensors of different meshes or placements never share a call), None for plain ones."""
    return (id(t._spec.mesh), t._spec.placements) if type(t) is DTensor else None


def state_fits(p: torch.Tensor, state: dict, names: tuple[str, ...], forms: dict | None = None) -> bool:
    """Whether every named state tensor of ``p`` is one a kernel may take beside it: laid out as
    ``p`` is (:func:`same_layout`), plain (its shard, for a DTensor), contiguous, of ``p``'s
    dtype and on its device -- or, for state held in fewer bits (``forms``, by name; see
    :mod:`torchstep.core.lowbit`), of the dtype and shape that form has (block scales are plain
    tensors of the local shard's blocks)."""
    if not all(name.endswith(lowbit.ABSMAX) or same_layout(p, state[name]) for name in names):
        return False
    p = shard_of(p)
    if forms and any(f != lowbit.FULL for f in forms.values()) or lowbit.KAHAN in names:
        for name in names:
            s = shard_of(state.get(name))
            if s is None or not is_plain(s) or not s.is_contiguous() or s.device != p.device:
                return False
            if (s.dtype, tuple(s.shape)) != lowbit.expected(p, name, forms or {}):
                return False
        return True
    return all(is_plain(s) and s.is_contiguous() and s.dtype == p.dtype and s.device == p.device
               for s in map(shard_of, (state[n] for n in names)))


def check_state_shape(index: int, p: torch.Tensor, name: str, value: Any, shape: tuple | None = None) -> None:
    """Raise when a parameter-shaped state tensor does not have its parameter's shape (or
    ``shape``, for state laid out otherwise, e.g. flattened)."""
    want = tuple(p.shape) if shape is None else tuple(shape)
    if isinstance(value, torch.Tensor) and tuple(value.shape) != want:
        raise RuntimeError(
            f"state '{name}' of parameter {index} has shape {tuple(value.shape)}, but the parameter has "
            f"shape {tuple(p.shape)}{'' if shape is None else f' (the state must have shape {want})'}; a state "
            "loaded from another model (or groups in another order)? The state must have the parameter's shape."
        )


def extent(t: torch.Tensor) -> tuple[int, int]:
    """The bytes a contiguous tensor covers, as [start, end)."""
    start = t.data_ptr()
    return start, start + t.numel() * t.element_size()


def overlapping(columns: list[list[torch.Tensor]]) -> set[int]:
    """Rows (positions in each column) whose tensors share memory with any other tensor of any
    column -- two parameters on one storage, a state tensor that is a view of a parameter, ...
    Zero-size tensors cover no memory."""
    spans = sorted((*extent(t), row) for col in columns for row, t in enumerate(col) if t.numel())
    bad: set[int] = set()
    reach, reach_row = -1, -1
    for start, end, row in spans:
        if start < reach:
            bad.update((row, reach_row))
        if end > reach:
            reach, reach_row = end, row
    return bad


class Written:
    """The sorted byte ranges a plan's kernels write, for a per-step check of the gradients.
    (Plain Python on purpose: torch's vector operations would use its intra-op threads, which
    stall for a scheduler time slice when another process holds a core.)"""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        spans = sorted(extent(t) for t in tensors if t.numel()) or [(0, 0)]
        self.starts, self.ends = [s for s, _ in spans], [e for _, e in spans]

    def hit_by(self, starts: list[int], nbytes: list[int]) -> bool:
        """Whether any [starts[i], starts[i] + nbytes[i]) overlaps a written range."""
        find, written_starts, written_ends = bisect.bisect_left, self.starts, self.ends
        for s, n in zip(starts, nbytes):
            k = find(written_starts, s + n) - 1
            if k >= 0 and written_ends[k] > s:
                return True
        return False


class Column:
    """One operand's tensors (e.g. every fused parameter's ``exp_avg``) and the metadata of what
    the kernel sees of them (their shards, for DTensors: ``sharded``)."""

    __slots__ = ("tensors", "sharded", "ptrs", "strides", "numels", "dtypes")

    def __init__(self, tensors: list[torch.Tensor], sharded: bool = False) -> None:
        self.tensors, self.sharded = tensors, sharded
        seen = list(map(shard_of, tensors)) if sharded else tensors
        self.ptrs = list(map(_T.data_ptr, seen))
        self.strides = list(map(_T.stride, seen))
        self.numels = list(map(_T.numel, seen))
        self.dtypes = list(map(_dtype_of, seen))

    def seen(self) -> list[torch.Tensor]:
        """What the kernel sees of the recorded tensors now."""
        return list(map(shard_of, self.tensors)) if self.sharded else self.tensors

    def holds(self, tensors: list[torch.Tensor], same_objects: bool = False) -> bool:
        """Same objects (unless the caller knows they are), same storage address, strides, size
        and dtype. (The tensors were contiguous when recorded: with the same strides and size
        they still are, and -- for a contiguous tensor -- strides and size fix the shape.)"""
        if not (same_objects or all(map(operator.is_, tensors, self.tensors))):
            return False
        if self.sharded:  # each DTensor's shard, as it is now (FSDP2 may swap it)
            tensors = list(map(shard_of, tensors))
        return (list(map(_T.data_ptr, tensors)) == self.ptrs
                and list(map(_T.stride, tensors)) == self.strides
                and list(map(_T.numel, tensors)) == self.numels
                and list(map(_dtype_of, tensors)) == self.dtypes)


class GroupCounters:
    """A group's per-parameter 0-d state (``step``, and e.g. NAdam's ``mu_product``). Where every
    parameter's counter of a name has one dtype and device, they become views into one buffer,
    so bumping or refreshing all of them is one operation while every ``state[name]`` stays a
    0-d tensor of its own, as torch lays it out. Otherwise (a group mixing float32 and float64
    parameters, whose loaded ``mu_product`` follows each parameter's dtype) they stay as they are
    and are handled one by one."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}
        self.loose: dict[str, list[torch.Tensor]] = {}

    def attach(self, names: tuple[str, ...], params: list, states: list) -> None:
        """Make every listed counter a view into a fresh buffer holding the current values (the
        i-th parameter's counter is element i), where their dtypes and devices agree."""
        self.buffers, self.loose = {}, {}
        for n in names:
            held = [s[n] for s in states]
            if len({(t.dtype, t.device) for t in held}) > 1:
                self.loose[n] = held
                continue
            buf = torch.tensor([float(t.item()) for t in held], dtype=held[0].dtype, device=held[0].device)
            for i, s in enumerate(states):
                s[n] = buf[i]
            self.buffers[n] = buf

    def bump(self, name: str, members: list[int] | None = None) -> None:
        """Add one to the counters of ``name`` (all of them, or those at ``members``)."""
        if name in self.loose:
            for i in range(len(self.loose[name])) if members is None else members:
                self.loose[name][i].add_(1)
        elif members is None:
            self.buffers[name].add_(1)
        else:
            buf = self.buffers[name]
            index = torch.tensor(members, dtype=torch.int64, device=buf.device)
            buf.index_add_(0, index, torch.ones(len(members), dtype=buf.dtype, device=buf.device))

    def values(self, name: str) -> list[float]:
        if name in self.loose:
            return [float(t) for t in self.loose[name]]
        return self.buffers[name].tolist()

    def sharing_keys(self, name: str) -> list:
        """What must agree for parameters to share one advance of ``name``: its value, and in
        the loose case its dtype too (a float32 ``mu_product`` rounds where a float64 one does
        not, as each parameter's own does in torch)."""
        if name in self.loose:
            return [(float(t), t.dtype) for t in self.loose[name]]
        return self.buffers[name].tolist()

    def broadcast(self, name: str, positions: list[int], source: torch.Tensor) -> None:
        """Copy one parameter's (just advanced) value to the others of its bucket."""
        if name in self.loose:
            for i in positions:
                if self.loose[name][i] is not source:
                    self.loose[name][i].copy_(source)
            return
        self.buffers[name].index_fill_(0, torch.tensor(positions, dtype=torch.int64), source)


@dataclass
class Bucket:
    """Parameters of one dtype and kernel kind, with their cached pointer tables."""

    kind: str
    dtype: torch.dtype
    members: list[int]  # positions in Plan.params
    sizes: tuple[int, ...]
    tables: list[torch.Tensor]  # pointer table per written operand: p, then each state tensor
    launch: Any = None  # the fused backend's prepared launch (tables with the gradients'), while it holds


@dataclass
class Plan:
    with_grad: list[torch.Tensor]  # every parameter of the group that had a gradient
    params: list[torch.Tensor]  # the fused ones
    leftover: list[torch.Tensor]  # the ones for the reference backend
    states: list[dict]
    names: tuple[str, ...] = ()  # the state tensors the kernels touch (counters aside)
    counted: tuple[str, ...] = ()  # 0-d counters kept as views of one buffer
    buckets: list[Bucket] = field(default_factory=list)
    counters: GroupCounters = field(default_factory=GroupCounters)
    firsts: list[bool] = field(default_factory=list)
    columns: list[Column] = field(default_factory=list)  # params, then one per name in ``names``
    held_counters: list[list] = field(default_factory=list)  # counter objects, for identity checks
    written: Written | None = None
    created: list[list[str]] = field(default_factory=list)  # state keys the build created, per fused parameter
    force_triton: bool = False  # built for Triton kernels on CPU tensors (the tests' interpreter mode)
    passes: dict = field(default_factory=dict)  # staged algorithms: buckets and pointer tables of their passes
    sharded: bool = False  # some fused parameters are DTensors: the kernels see their shards
    algo_names: tuple[str, ...] = ()  # the algorithm's element-wise state names (``names`` adds scales, buffers)
    forms: tuple[str, ...] = ()  # how each of ``algo_names`` is held (:mod:`torchstep.core.lowbit`); () all full
    rounding: str = ""  # how the parameters are written: "sr", "kahan" or to nearest

    def seal(self) -> None:
        """Record the metadata every later step is checked against."""
        sharded = self.sharded
        self.columns = [Column(list(self.params), sharded)] + [Column([s[n] for s in self.states], sharded)
                                                              for n in self.names]
        self.held_counters = [[s[n] for s in self.states] for n in self.counted]
        self.written = Written([t for col in self.columns for t in col.seen()])
        shards = self.columns[0].seen()
        self._devices = list(map(_device_of, shards))
        self.grad_ptrs: list[int] = []
        self._nbytes = [t.numel() * t.element_size() for t in shards]
        self._specs = [getattr(p, "_spec", None) for p in self.params] if sharded else None

    def still_valid(self, with_grad: list[torch.Tensor], their_grads: list | None = None) -> list[torch.Tensor] | None:
        """The per-step check (see the module docstring); returns the fused parameters'
        gradients (their shards, for DTensors) when every cached pointer still holds, else None
        (rebuild). ``their_grads``: the gradients of ``with_grad``, when the caller has them already."""
        if len(with_grad) != len(self.with_grad) or not all(map(operator.is_, with_grad, self.with_grad)):
            return None
        params, columns = self.params, self.columns
        # (no device check for the parameters: a tensor moved to another device has another
        # address, since host and device memory share one address space)
        if not columns[0].holds(params, same_objects=True):
            return None
        states = self.states
        for col, n in zip(columns[1:], self.names):
            if not col.holds(list(map(dict.get, states, itertools.repeat(n)))):
                return None
        for held, n in zip(self.held_counters, self.counted):
            if not all(map(operator.is_, map(dict.get, states, itertools.repeat(n)), held)):
                return None
        if their_grads is not None and len(params) == len(with_grad):  # all fused: the usual case
            grads = their_grads
        else:
            grads = list(map(grad_of, params))
        if self.sharded:  # each gradient laid out as its parameter, whose layout is as recorded
            if (not all(map(operator.is_, (getattr(p, "_spec", None) for p in params), self._specs))
                    or not all(map(same_layout, params, grads))):
                return None
            grads = list(map(shard_of, grads))
        if not set(map(type, grads)) <= _PLAIN_SET:
            return None
        try:
            if not all(map(_T.is_contiguous, grads)):
                return None
        except RuntimeError:  # a sparse gradient has no strides
            return None
        if (list(map(_T.numel, grads)) != columns[0].numels or list(map(_dtype_of, grads)) != columns[0].dtypes
                or list(map(_device_of, grads)) != self._devices):
            return None
        starts = list(map(_T.data_ptr, grads))
        if starts != self.grad_ptrs:  # (the same as last step's were checked then; the list is kept)
            if self.written.hit_by(starts, self._nbytes):
                return None
            self.grad_ptrs = starts
        return grads


def grad_table(ptrs: list[int], members: list[int]) -> torch.Tensor:
    """Pointers to this step's gradients of a bucket's members (a complex tensor's real view
    starts at the same address, so no view is needed)."""
    if len(members) != len(ptrs):
        ptrs = [ptrs[i] for i in members]
    return torch.frombuffer(array.array("q", ptrs), dtype=torch.int64)


def pointer_table(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64)


def held_by(opt: Any, attr: str, group: dict, make: Any) -> Any:
    """Per-group fused-backend memory kept on ``opt`` under ``attr``: the entry of ``group``,
    created by ``make()`` if missing. Entries of groups no longer in ``opt.param_groups`` (after
    ``load_state_dict``, or when the group dicts are rebuilt) are dropped, so nothing they hold
    -- state tensors, pointer tables -- outlives them."""
    entries = opt.__dict__.setdefault(attr, {})
    entry = entries.get(id(group))
    if entry is not None and entry[0] is group:
        return entry[1]
    live = {id(g) for g in opt.param_groups}
    for key in [k for k, (g, _) in entries.items() if k not in live]:
        del entries[key]
    value = make()
    entries[id(group)] = (group, value)
    return value
