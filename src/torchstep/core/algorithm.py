"""The Algorithm spec: an element-wise optimizer written once, as data the backends interpret.

An algorithm is

* ``state_names(group)`` -- the per-parameter tensors it keeps, under torch's key names, in the
  order torch stores them (``step``, if ``counts_steps``, comes first and is handled by the backend);
* ``init(p, group)`` -- their initial values (zeros unless the algorithm says otherwise);
* ``scalars(group, step, first)`` -- everything that depends only on hyperparameters and the step
  number (bias corrections, decayed lr, ...), computed once per (group, step);
* ``update(p, g, **state, **scalars)`` -- the element-wise math: reads ``g``, updates the state
  tensors and ``p`` in place. This is the only place an algorithm's math lives.

Optionally, an algorithm with per-parameter 0-d state that is not element-wise (NAdam's
``mu_product``, ASGD's ``eta`` and ``mu``) names it in ``scalar_state`` (it stays in
``state_names``, for torch's key order) and gives

* ``advance(scalars, **scalar_state)`` -- the per-parameter stage: reads those 0-d tensors,
  updates them in place and returns the further scalars ``update`` takes for this parameter.
  ``update`` never sees the 0-d tensors themselves.

``init`` may also return ``step``, when the counter is not laid out as usual (ASGD keeps it on the
parameter's device).

``g`` reaching ``update`` has already been negated for ``maximize`` and has L2 weight decay added
(or ``p`` decayed, for decoupled weight decay) -- unless the algorithm sets
``applies_weight_decay``, for a decay that is part of its own math (Schedule-Free's, taken after
AdamW's normalization); complex tensors arrive viewed as real. See :mod:`torchstep.core.wrappers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

Scalars = dict[str, Any]


def zeros_state(names: tuple[str, ...]) -> Callable[[torch.Tensor, dict], dict[str, torch.Tensor]]:
    """An ``init`` that makes every named state tensor a zero tensor shaped like the parameter."""

    def init(p: torch.Tensor, group: dict) -> dict[str, torch.Tensor]:
        return {n: torch.zeros_like(p, memory_format=torch.preserve_format) for n in names}

    return init


@dataclass(frozen=True)
class Algorithm:
    """One optimizer's math and state layout; see the module docstring for each field."""

    name: str
    state_names: Callable[[dict], tuple[str, ...]]
    scalars: Callable[[dict, Any, bool], Scalars]
    update: Callable[..., None]
    init: Callable[[torch.Tensor, dict], dict[str, torch.Tensor]] | None = None
    counts_steps: bool = True
    # how a sparse gradient is handled: None rejects it with ``sparse_error``
    sparse_update: Callable[..., None] | None = None
    sparse_error: str = ""
    sparse_weight_decay: bool = True
    # per-parameter 0-d state handled by ``advance`` rather than ``update`` (see module docstring)
    scalar_state: tuple[str, ...] = ()
    advance: Callable[..., Scalars] | None = None
    # True when ``update`` applies ``weight_decay`` itself: the backends then leave it out
    applies_weight_decay: bool = False
    # True when a missing state entry is simply created at the next step (SGD's momentum
    # buffer, which torch reads with ``.get``); otherwise a parameter's state is created whole
    # at its first step, and a loaded non-empty state lacking an entry is a KeyError (as in torch)
    lazy_state: bool = False
    # for ``state_dtype`` (:mod:`torchstep.core.lowbit`): state that is never negative (coded with
    # the unsigned map), and state that always keeps the parameter's dtype (a copy or average of
    # the weights, which fewer bits would corrupt)
    nonnegative_state: tuple[str, ...] = ()
    exact_state: tuple[str, ...] = ()

    def elementwise_names(self, group: dict) -> tuple[str, ...]:
        """The state tensors ``update`` takes: ``state_names`` less ``scalar_state``."""
        return tuple(n for n in self.state_names(group) if n not in self.scalar_state)

    def initial_state(self, p: torch.Tensor, group: dict) -> dict[str, torch.Tensor]:
        """The state tensors a parameter starts with."""
        if self.init is not None:
            return self.init(p, group)
        return zeros_state(self.state_names(group))(p, group)
