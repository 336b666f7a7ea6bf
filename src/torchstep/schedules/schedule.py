"""The ``Schedule`` type and the ways to combine schedules, as data.

A schedule is a value as a pure function of the step: ``schedule(t) -> float``. It holds no
state and never touches an optimizer, so it can be evaluated at any step, in any order, previewed
and plotted. Schedules are frozen dataclasses: they compare by value, print their parameters and
pickle.

Composition is data too: :class:`Join` runs schedules one after another at step boundaries,
:class:`Scaled` maps a factor schedule onto a range (``low + (high - low) * factor``) and
:class:`Floor` bounds a schedule from below. None of them repeats a formula; each evaluates the
schedules it holds.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["Schedule", "Join", "Scaled", "Floor"]


class Schedule:
    """Base of every schedule: ``schedule(t)`` is the value at step ``t`` (``t = 0, 1, 2, ...``).

    Steps may be fractional where a schedule says so (warm restarts take fractional epochs).
    """

    def __call__(self, step: float) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define its value at a step")

    def values(self, steps: int, start: int = 0) -> list[float]:
        """``[self(start), self(start + 1), ..., self(start + steps - 1)]``."""
        return [self(t) for t in range(start, start + steps)]

    def then(self, other: Schedule, at: float) -> Join:
        """Run ``self`` for ``at`` steps, then ``other`` (whose step restarts at 0)."""
        return Join((self, other), (at,))

    def floor(self, minimum: float) -> Floor:
        """``max(self(t), minimum)``."""
        return Floor(self, minimum)

    def ratio(self, step: float) -> Any:
        """The factor one step applies, ``v(t) / v(t - 1)``; the integer ``1`` where nothing changes.

        torch's chainable schedulers move the current lr by this factor each step, so a shape
        whose quotient simplifies (``gamma`` for an exponential) states the simplified form: the
        recursion then multiplies by exactly the number torch multiplies by. Where ``v(t - 1) = 0``
        the division raises ZeroDivisionError, as torch's does, unless the shape knows the step
        another way: then it returns ``None`` and :meth:`difference` gives the step.
        """
        return self(step) / self(step - 1)

    def difference(self, step: float) -> Any:
        """The change one step makes, ``v(t) - v(t - 1)`` (used where :meth:`ratio` is ``None``)."""
        return self(step) - self(step - 1)


def _as_tuple(xs: Sequence[Any]) -> tuple:
    return tuple(xs)


@dataclass(frozen=True)
class Join(Schedule):
    """Schedules one after another, each restarting its step count at its boundary.

    With boundaries ``b_0 < b_1 < ... < b_{n-2}`` (and ``b_{-1} = 0``), piece ``k`` runs on
    ``b_{k-1} <= t < b_k``:

        v(t) = pieces[k](t - b_{k-1})

    The last piece runs from ``b_{n-2}`` on, forever.
    """

    pieces: tuple[Schedule, ...]
    boundaries: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "pieces", _as_tuple(self.pieces))
        object.__setattr__(self, "boundaries", _as_tuple(self.boundaries))
        if len(self.pieces) != len(self.boundaries) + 1:
            raise ValueError(
                f"Join needs one boundary fewer than pieces (pieces has {len(self.pieces)} "
                f"schedules, boundaries has {len(self.boundaries)} steps)"
            )
        if list(self.boundaries) != sorted(self.boundaries):
            raise ValueError(f"Join boundaries must be non-decreasing (boundaries={list(self.boundaries)})")

    def _index(self, step: float) -> int:
        return bisect.bisect_right(self.boundaries, step)

    def _offset(self, k: int) -> float:
        return self.boundaries[k - 1] if k > 0 else 0

    def __call__(self, step: float) -> Any:
        k = self._index(step)
        return self.pieces[k](step - self._offset(k))

    def ratio(self, step: float) -> Any:
        """Inside a piece, that piece's own ratio; on a boundary, the quotient of the values.

        Stepping switches pieces on the step that equals a boundary, as torch's recursion does
        (ConstantLR's ``last_epoch == total_iters``): a fractional boundary is stepped over with
        ratio 1, though the closed form switches at ``ceil(boundary)``.
        """
        k = self._index(step)
        if self._index(step - 1) == k:
            return self.pieces[k].ratio(step - self._offset(k))
        if step in self.boundaries:
            return super().ratio(step)
        return 1


@dataclass(frozen=True)
class Scaled(Schedule):
    """A factor schedule mapped onto ``[low, high]``:

        v(t) = low + (high - low) * factor(t)

    ``Scaled(f, base_lr)`` is ``base_lr * f(t)``; torch's schedulers are the factor schedules
    of :mod:`torchstep.schedules.shapes` scaled this way per parameter group.
    """

    factor: Schedule
    high: Any
    low: Any = 0.0

    def __call__(self, step: float) -> Any:
        return self.low + (self.high - self.low) * self.factor(step)


@dataclass(frozen=True)
class Floor(Schedule):
    """A schedule bounded from below:

        v(t) = max(schedule(t), minimum)
    """

    schedule: Schedule
    minimum: float

    def __call__(self, step: float) -> Any:
        return max(self.schedule(step), self.minimum)
