"""What the fused backend remembers about a parameter group between steps.

Building a step's work list -- which parameters take the fused path, their state, the tables of
data pointers the kernel reads -- costs Python time per tensor. A :class:`Plan` keeps that work
and is re-checked each step with cheap identity and pointer comparisons: the same parameters
have gradients, their storage has not moved (``model.to()`` replaces ``p.data``), their state
tensors are the same objects (``load_state_dict`` replaces them) and the gradients are dense and
contiguous. Anything else rebuilds the plan.
"""

from __future__ import annotations

import array
import operator
from dataclasses import dataclass, field

import torch


class GroupCounters:
    """A group's per-parameter 0-d state (``step``, and e.g. NAdam's ``mu_product``), each name
    kept as views into one buffer, so bumping or refreshing all of them is one operation while
    every ``state[name]`` stays a 0-d tensor of its own, as torch lays it out."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def attach(self, names: tuple[str, ...], params: list, states: list) -> None:
        """Make every listed counter a view into a fresh buffer holding the current values; the
        i-th parameter's counter is element i."""
        self.buffers = {}
        for n in names:
            template = states[0][n]
            buf = torch.tensor([float(s[n].item()) for s in states], dtype=template.dtype, device=template.device)
            for i, s in enumerate(states):
                s[n] = buf[i]
            self.buffers[n] = buf

    def bump(self, name: str) -> list[float]:
        """Add one to every counter of ``name``; the new values."""
        return self.buffers[name].add_(1).tolist()

    def values(self, name: str) -> list[float]:
        return self.buffers[name].tolist()

    def broadcast(self, name: str, positions: list[int], source: torch.Tensor) -> None:
        """Copy one parameter's (just advanced) value to the others of its bucket."""
        self.buffers[name].index_fill_(0, torch.tensor(positions, dtype=torch.int64), source)


@dataclass
class Bucket:
    """Parameters of one dtype and kernel kind, with their cached pointer tables."""

    kind: str
    dtype: torch.dtype
    members: list[int]  # positions in Plan.params
    sizes: tuple[int, ...]
    tables: list[torch.Tensor]  # pointer table per written operand: p, then each state tensor


@dataclass
class Plan:
    with_grad: list[torch.Tensor]  # every parameter of the group that had a gradient
    params: list[torch.Tensor]  # the fused ones
    leftover: list[torch.Tensor]  # the ones for the reference backend
    states: list[dict]
    tensors: list[tuple]  # the state tensors (and counters) each fused parameter had, for identity checks
    p_ptrs: list[int]
    buckets: list[Bucket] = field(default_factory=list)
    counters: GroupCounters = field(default_factory=GroupCounters)
    firsts: list[bool] = field(default_factory=list)

    def still_valid(self, with_grad: list[torch.Tensor], names: tuple[str, ...]) -> list[torch.Tensor] | None:
        """Cheap re-check at the start of a step (see the module docstring); returns the fused
        parameters' gradients when the plan still holds, else None."""
        if len(with_grad) != len(self.with_grad) or not all(map(operator.is_, with_grad, self.with_grad)):
            return None
        if [p.data_ptr() for p in self.params] != self.p_ptrs:
            return None
        held = [s.get(n) for s in self.states for n in names]
        if not all(map(operator.is_, held, self.flat_tensors)):
            return None
        grads = [p.grad for p in self.params]
        try:
            if not all(map(torch.Tensor.is_contiguous, grads)):
                return None
        except RuntimeError:  # a sparse gradient has no strides
            return None
        return grads

    @property
    def flat_tensors(self) -> list:
        return [t for held in self.tensors for t in held]


def grad_table(grads: list[torch.Tensor], members: list[int]) -> torch.Tensor:
    """Pointers to this step's gradients of a bucket's members (a complex tensor's real view
    starts at the same address, so no view is needed)."""
    return torch.frombuffer(array.array("q", [grads[i].data_ptr() for i in members]), dtype=torch.int64)


def pointer_table(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64)
