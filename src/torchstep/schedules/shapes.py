"""Closed-form schedule shapes: each is one formula of the step ``t``, stated in its docstring.

This module is the only place these formulas live. torch's schedulers are these shapes used as
factors (``start = 1``) and scaled per parameter group; the modern recipes join them.

Unless its docstring says otherwise a shape is defined for every ``t >= 0``; holding a value once a
shape has run its course is done by joining a :class:`Constant` (see :class:`~.schedule.Join`).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Callable

from .schedule import Schedule, _as_tuple

__all__ = [
    "Constant",
    "Linear",
    "Cosine",
    "Exponential",
    "StepDecay",
    "MultiStepDecay",
    "Polynomial",
    "InverseSqrt",
    "OneMinusSqrt",
    "Lambda",
    "CumulativeProduct",
]


@dataclass(frozen=True)
class Constant(Schedule):
    """v(t) = value"""

    value: Any

    def __call__(self, step: float) -> Any:
        return self.value

    def ratio(self, step: float) -> Any:
        return 1


@dataclass(frozen=True)
class Linear(Schedule):
    """A straight line from ``start`` (t = 0) to ``end`` (t = steps):

        v(t) = start + (end - start) * t / steps                 (hold=False)
        v(t) = start + (end - start) * min(t, steps) / steps     (hold=True: ``end`` is kept)

    Unheld, past ``steps`` the line continues (torch's OneCycleLR relies on this on its last step).
    One step multiplies the value by ``1 + (end - start) / (steps * start + (t - 1) * (end - start))``.
    """

    start: float
    end: float
    steps: float
    hold: bool = False

    def __call__(self, step: float) -> Any:
        t = min(step, self.steps) if self.hold else step
        return self.start + (self.end - self.start) * t / self.steps

    def ratio(self, step: float) -> Any:
        if self.hold and step > self.steps:
            return 1
        rise = self.end - self.start
        return 1.0 + rise / (self.steps * self.start + (step - 1) * rise)


@dataclass(frozen=True)
class Cosine(Schedule):
    """Half a cosine wave from ``start`` (t = 0) to ``end`` (t = steps) (SGDR, arXiv:1608.03983):

        v(t) = end + (start - end) * (1 + cos(pi * t / steps)) / 2

    Not clamped: past ``steps`` the wave goes on, rising back to ``start`` at ``2 * steps``, as
    torch's CosineAnnealingLR does; join a ``Constant(end)`` to hold ``end``.
    """

    start: float
    end: float
    steps: float

    def __call__(self, step: float) -> Any:
        return self.end + (self.start - self.end) * (1 + math.cos(math.pi * step / self.steps)) / 2

    def at_trough(self, step: float) -> bool:
        """True at the bottom of a wave, ``t = steps, 3 * steps, ...`` (where ``v = end``)."""
        return (step - self.steps) % (2 * self.steps) == 0

    def ratio(self, step: float) -> Any:
        """``(1 + cos(pi t / steps)) / (1 + cos(pi (t - 1) / steps))`` (for ``end = 0``); ``None``
        one step after a trough."""
        if self.at_trough(step - 1):
            return None
        if self.end != 0:
            return super().ratio(step)
        return (1 + math.cos(math.pi * step / self.steps)) / (1 + math.cos(math.pi * (step - 1) / self.steps))

    def difference(self, step: float) -> Any:
        if self.at_trough(step - 1):  # the first step up out of a trough
            return (self.start - self.end) * (1 - math.cos(math.pi / self.steps)) / 2
        return super().difference(step)


@dataclass(frozen=True)
class Exponential(Schedule):
    """v(t) = start * gamma ** t"""

    gamma: float
    start: Any = 1.0

    def __call__(self, step: float) -> Any:
        return self.start * self.gamma**step

    def ratio(self, step: float) -> Any:
        return self.gamma


@dataclass(frozen=True)
class StepDecay(Schedule):
    """Decay by ``gamma`` every ``step_size`` steps:

        v(t) = start * gamma ** floor(t / step_size)
    """

    step_size: int
    gamma: float = 0.1
    start: Any = 1.0

    def __call__(self, step: float) -> Any:
        return self.start * self.gamma ** (step // self.step_size)

    def ratio(self, step: float) -> Any:
        """``gamma`` at every multiple of ``step_size``, else 1 -- the step torch's StepLR takes,
        also for a negative ``step_size`` (where torch's closed form and recursion part ways)."""
        return self.gamma if step % self.step_size == 0 else 1


@dataclass(frozen=True)
class MultiStepDecay(Schedule):
    """Decay by ``gamma`` at each milestone (a milestone listed twice decays twice):

        v(t) = start * gamma ** #{m in milestones : m <= t}
    """

    milestones: tuple[int, ...]
    gamma: float = 0.1
    start: Any = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(sorted(_as_tuple(self.milestones))))

    def __call__(self, step: float) -> Any:
        return self.start * self.gamma ** bisect.bisect_right(self.milestones, step)

    def ratio(self, step: float) -> Any:
        """``gamma ** k`` at a milestone listed ``k`` times, else 1."""
        hits = bisect.bisect_right(self.milestones, step) - bisect.bisect_left(self.milestones, step)
        return self.gamma**hits if hits else 1


@dataclass(frozen=True)
class Polynomial(Schedule):
    """Polynomial decay from ``start`` to ``end`` over ``steps``, then ``end`` held:

        v(t) = end + (start - end) * (1 - min(t, steps) / steps) ** power
    """

    steps: float
    power: float = 1.0
    start: Any = 1.0
    end: Any = 0.0

    def __call__(self, step: float) -> Any:
        return self.end + (self.start - self.end) * (1.0 - min(self.steps, step) / self.steps) ** self.power

    def ratio(self, step: float) -> Any:
        """``((1 - t / steps) / (1 - (t - 1) / steps)) ** power`` up to ``steps`` (for ``end = 0``), then 1."""
        if step > self.steps:
            return 1
        if self.end != 0:
            return super().ratio(step)
        return ((1.0 - step / self.steps) / (1.0 - (step - 1) / self.steps)) ** self.power


@dataclass(frozen=True)
class InverseSqrt(Schedule):
    """Inverse-square-root decay (Transformer, arXiv:1706.03762), ``start`` at t = 0:

        v(t) = start * sqrt(timescale / (timescale + t))

    After a warmup of ``w`` steps, ``timescale = w`` gives the usual ``peak * sqrt(w / step)``.
    """

    start: float
    timescale: float

    def __call__(self, step: float) -> Any:
        return self.start * math.sqrt(self.timescale / (self.timescale + step))


@dataclass(frozen=True)
class OneMinusSqrt(Schedule):
    """The "1 - sqrt" cool-down of warmup-stable-decay (Hägele et al., arXiv:2405.18392):

        v(t) = end + (start - end) * (1 - sqrt(min(t, steps) / steps))
    """

    start: float
    end: float
    steps: float

    def __call__(self, step: float) -> Any:
        return self.end + (self.start - self.end) * (1.0 - math.sqrt(min(self.steps, step) / self.steps))


@dataclass(frozen=True)
class Lambda(Schedule):
    """Any function of the step (torch's LambdaLR factor):

        v(t) = start * fn(t)
    """

    fn: Callable[[Any], Any]
    start: Any = 1.0

    def __call__(self, step: float) -> Any:
        return self.start * self.fn(step)


@dataclass(frozen=True)
class CumulativeProduct(Schedule):
    """The product of per-step factors (torch's MultiplicativeLR):

        v(t) = start * fn(1) * fn(2) * ... * fn(t),    i.e.  v(t) = v(t - 1) * fn(t),  v(0) = start

    Evaluating step ``t`` costs ``t`` calls of ``fn``; the scheduler applies the recurrence instead.
    """

    fn: Callable[[int], Any]
    start: Any = 1.0

    def __call__(self, step: float) -> Any:
        value = self.start
        for k in range(1, int(step) + 1):
            value = value * self.fn(k)
        return value
