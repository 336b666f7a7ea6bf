"""ScheduledLR: any torchstep ``Schedule`` as a torch-shaped ``LRScheduler``.

Use it where a framework wants an ``LRScheduler`` (Lightning, Hugging Face) and the schedule is one
of the modern ones. For a factor of each group's own lr, pass the schedule to ``LambdaLR`` instead.
"""

from __future__ import annotations

from typing import Any

from ..schedule import Schedule
from .base import LRScheduler, check_optimizer, format_param

__all__ = ["ScheduledLR"]


class ScheduledLR(LRScheduler):
    """``group["lr"] = schedule(t)`` -- absolute values; one schedule, or a list with one per group.

    Not chainable: it sets the lr outright. ``step(epoch)`` jumps to ``epoch``.
    """

    def __init__(self, optimizer: Any, schedule: Schedule | list[Schedule], last_epoch: int = -1) -> None:
        check_optimizer(optimizer)
        self.schedules = format_param("schedule", optimizer, schedule)
        for i, s in enumerate(self.schedules):
            if not callable(s):
                raise TypeError(f"schedule should be a Schedule (a function of the step), but got "
                                f"{type(s).__name__} for param group {i}")
        super().__init__(optimizer, last_epoch)

    def schedule(self, group: int = 0) -> Schedule:
        """Group ``group``'s schedule."""
        return self.schedules[group]

    def get_lr(self) -> list[Any]:
        self._warn_if_not_stepping()
        return [s(self.last_epoch) for s in self.schedules]
