"""The shared ``step`` of algorithms written as stages (:mod:`torchstep.core.stages`): LAMB,
LARS, Prodigy, Adafactor, Muon. A subclass sets ``stages`` (a
:class:`~torchstep.core.stages.Staged`); the backends run it (:mod:`torchstep.backends.stage_step`):
fused where they can, tensor by tensor otherwise, from the same stage functions.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..backends import reference_stages, stage_step
from ..core.optimizer import Optimizer
from ..core.stages import Staged


class StagedOptimizer(Optimizer):
    """Base class: ``step`` evaluates the closure and runs ``stages`` over every group."""

    stages: Staged  # (not ``algorithm``: that names an element-wise spec the base class interprets)

    def update_group(self, group: dict, params: list[torch.Tensor]) -> None:
        """The reference backend's step of ``params`` (of ``group``, state created): the
        program run tensor by tensor, for a program without a step-wide reduction."""
        reference_stages.run_group(self, self.stages, group, params)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step over every parameter with a gradient; returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stage_step.step(self)
        return loss
