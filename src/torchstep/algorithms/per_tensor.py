"""The shared ``step`` of algorithms that are not element-wise (Adafactor, Muon).

Such an algorithm is a per-tensor stage: for each parameter group, every parameter with a
gradient is checked (dense, real) and gets its initial state before any is updated -- as torch
does, so an unsupported tensor leaves the whole step undone -- and then ``update_group`` runs
the algorithm over them. Subclasses provide ``init_state`` and ``update_group``. (Algorithms
written as stages, with a fused path, use :class:`~torchstep.algorithms.stage_optimizer.StagedOptimizer`.)
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..core import check
from ..core.optimizer import Optimizer


class PerTensorOptimizer(Optimizer):
    """Base class: ``step`` evaluates the closure, prepares state, calls ``update_group``."""

    def init_state(self, p: torch.Tensor, group: dict) -> dict[str, Any]:
        """The state a parameter starts with (called on its first step with a gradient)."""
        raise NotImplementedError

    def update_group(self, group: dict, params: list[torch.Tensor]) -> None:
        """Update ``params`` (those of ``group`` with a gradient) and their state in place."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step over every parameter with a gradient; returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                check.dense_real(p, type(self).__name__)
                if not self.state[p]:
                    self.state[p] = self.init_state(p, group)
            self.update_group(group, params)
        return loss
