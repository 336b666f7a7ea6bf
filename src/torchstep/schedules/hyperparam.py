"""ScheduleHyperparam: put any param-group hyperparameter on a schedule, not only the lr.

    momentum = ScheduleHyperparam(opt, "momentum", Cosine(0.85, 0.95, 1000))
    beta2 = ScheduleHyperparam(opt, "betas", Linear(0.95, 0.999, 500), index=1)
    ...
    opt.step(); momentum.step(); beta2.step()

Each ``step()`` sets ``group[key] = schedule(t)`` in every group (``t`` counts steps from 0; the
constructor applies step 0). For a tuple such as ``betas``, ``index`` picks the entry and the rest of
the tuple is kept. A tensor entry is filled in place, as torch's schedulers do for a tensor lr.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .adapters.base import check_optimizer, format_param, write_group_value
from .schedule import Schedule

__all__ = ["ScheduleHyperparam"]


class ScheduleHyperparam:
    """Drive ``group[key]`` (or ``group[key][index]``) of every param group from a schedule.

    ``schedule`` is one schedule for all groups or a list with one per group.
    """

    def __init__(self, optimizer: Any, key: str, schedule: Schedule | list[Schedule], *,
                 index: int | None = None, last_step: int = -1) -> None:
        check_optimizer(optimizer)
        self.optimizer = optimizer
        self.schedules = format_param("schedule", optimizer, schedule)
        for i, group in enumerate(optimizer.param_groups):
            if key not in group:
                raise KeyError(f"param_groups[{i}] has no {key!r} to schedule (its keys: {sorted(group)})")
            is_tuple = isinstance(group[key], (tuple, list))
            if is_tuple and (index is None or not -len(group[key]) <= index < len(group[key])):
                raise ValueError(
                    f"Invalid index: {index} ({key!r} is a tuple of {len(group[key])} in param_groups[{i}]; "
                    f"pass index in range({len(group[key])}))"
                )
            if not is_tuple and index is not None:
                raise ValueError(f"Invalid index: {index} ({key!r} is a single value in param_groups[{i}]; pass index=None)")
        self.key = key
        self.index = index
        self.last_step = last_step
        self.step()

    def _set(self, group: dict, value: Any) -> None:
        if self.index is None:
            write_group_value(group, self.key, value)
            return
        entries = list(group[self.key])
        if isinstance(entries[self.index], Tensor):
            entries[self.index].fill_(value)
        else:
            entries[self.index] = value
            group[self.key] = tuple(entries)

    def step(self) -> None:
        """Advance one step and set the hyperparameter in every group."""
        self.last_step += 1
        for group, schedule in zip(self.optimizer.param_groups, self.schedules):
            self._set(group, schedule(self.last_step))

    def get_last(self) -> list[Any]:
        """The value each group holds now."""
        values = [g[self.key] for g in self.optimizer.param_groups]
        return values if self.index is None else [v[self.index] for v in values]

    def state_dict(self) -> dict[str, Any]:
        """The step count and what is scheduled (the schedules are code: rebuild them on load)."""
        return {"key": self.key, "index": self.index, "last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume at the saved step and re-apply its value."""
        self.key, self.index, self.last_step = state_dict["key"], state_dict["index"], state_dict["last_step"]
        for group, schedule in zip(self.optimizer.param_groups, self.schedules):
            self._set(group, schedule(self.last_step))
