"""The per-parameter state layout every backend shares: how ``step`` counters are laid out, how a
parameter's state is created on its first step, and how older checkpoints' scalar state is
brought to the current layout.

This is bookkeeping on the :class:`~torchstep.core.algorithm.Algorithm` spec, not the running of
an update, so it lives in ``core``: the base class, the algorithms and every backend read it
from here.
"""

from __future__ import annotations

from typing import Any

import torch

from . import lowbit


def _scalar_dtype(fused: bool) -> torch.dtype:
    if fused:
        return torch.float32
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def new_step_tensor(p: torch.Tensor, group: dict, value: float = 0.0) -> torch.Tensor:
    """A ``step`` counter laid out as torch lays it out (CPU unless capturable/fused)."""
    fused = bool(group.get("fused", False))
    on_device = fused or bool(group.get("capturable", False))
    return torch.tensor(value, dtype=_scalar_dtype(fused), device=p.device if on_device else "cpu")


def ensure_state(algo: Any, p: torch.Tensor, group: dict, state: dict, names: tuple[str, ...]) -> bool:
    """Create whatever state ``p`` lacks; True when something was created (a first step)."""
    missing = [n for n in names if n not in state]
    first = bool(missing) or (algo.counts_steps and "step" not in state)
    if first:
        initial = algo.initial_state(p, group)
        if algo.counts_steps and "step" not in state:
            state["step"] = initial["step"] if "step" in initial else new_step_tensor(p, group)
        for n in missing:
            state[n] = initial[n]
    if lowbit.touched(group, state, p):
        lowbit.conform(algo, p, group, state)
    return first


def upgrade_scalar_state(opt: Any) -> None:
    """Old checkpoints stored 0-d per-parameter state (``mu_product``, ``eta``, ...) as Python
    numbers; make each a tensor laid out as the algorithm's ``init`` lays it out."""
    algo = opt.algorithm
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p) or {}
            for n in algo.scalar_state:
                if n in state and not torch.is_tensor(state[n]):
                    state[n] = algo.initial_state(p, group)[n].fill_(float(state[n]))
