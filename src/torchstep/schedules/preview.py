"""Schedules without an optimizer: their values for N steps, and a PNG plot (matplotlib, optional:
``pip install torchstep[plot]``)."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from .schedule import Schedule

__all__ = ["preview", "preview_scheduler", "plot", "PLOT_EXTRA_HINT"]

PLOT_EXTRA_HINT = "plotting schedules needs matplotlib: pip install torchstep[plot]"


def preview(schedule: Callable[[int], Any], steps: int, *, start: int = 0, tensor: bool = False) -> Any:
    """``schedule(t)`` for ``t = start, ..., start + steps - 1``: a list of floats, or a float64 tensor."""
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"Invalid steps: {steps} (steps must be an int >= 0)")
    values = [float(schedule(t)) for t in range(start, start + steps)]
    return torch.tensor(values, dtype=torch.float64) if tensor else values


class _StandInOptimizer:
    """Just enough of an optimizer for a scheduler: one param group, no parameters."""

    def __init__(self, lr: float, momentum: float) -> None:
        self.defaults = {"lr": lr, "momentum": momentum}
        self.param_groups = [{"params": [], "lr": lr, "momentum": momentum}]

    def step(self, closure: Any = None) -> None:
        return None


def preview_scheduler(scheduler_cls: type, steps: int, *, lr: float = 1.0, momentum: float = 0.9,
                      **kwargs: Any) -> list[float]:
    """Run a torchstep scheduler class on a stand-in optimizer: the lr at steps ``0 .. steps-1``.

    ``preview_scheduler(StepLR, 100, lr=0.1, step_size=30)`` -- exactly what the scheduler would set,
    chaining rules included, with no model or optimizer.
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"Invalid steps: {steps} (steps must be an int >= 0)")
    optimizer = _StandInOptimizer(lr, momentum)
    scheduler = scheduler_cls(optimizer, **kwargs)
    values = []
    for t in range(steps):
        if t:
            scheduler.step()
        values.append(float(optimizer.param_groups[0]["lr"]))
    return values


def _as_series(item: Any, steps: int) -> list[float]:
    if isinstance(item, Schedule) or callable(item):
        return preview(item, steps)
    return [float(v) for v in item]


def plot(schedules: Schedule | Mapping[str, Any] | Sequence[Any], steps: int, path: Any, *,
         title: str | None = None, log_scale: bool = False, ylabel: str = "learning rate") -> Any:
    """Save a PNG of one or several schedules over ``steps`` steps; returns ``path``.

    ``schedules``: a schedule, a ``{label: schedule}`` mapping, or a list of schedules; a value may
    also be a precomputed list of values (e.g. from :func:`preview_scheduler`).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(PLOT_EXTRA_HINT) from err
    if isinstance(schedules, Mapping):
        series = dict(schedules)
    elif isinstance(schedules, Schedule) or callable(schedules):
        series = {type(schedules).__name__: schedules}
    else:
        series = {f"schedule {i + 1}": s for i, s in enumerate(schedules)}
    figure = Figure(figsize=(10, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, item in series.items():
        axes.plot(range(steps), _as_series(item, steps)[:steps], label=label, linewidth=1.6)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    if log_scale:
        axes.set_yscale("log")
    if title:
        axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    figure.savefig(path, format="png", bbox_inches="tight")
    return path
