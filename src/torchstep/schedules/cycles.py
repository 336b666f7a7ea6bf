"""Cyclical schedules: triangular cycles (CLR), the one-cycle policy, cosine with warm restarts.

Each is one closed form of the step, stated in its docstring; the one-cycle and warm-restart
schedules evaluate the :class:`~.shapes.Cosine` / :class:`~.shapes.Linear` shapes on their pieces
instead of restating them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from .schedule import Schedule, _as_tuple
from .shapes import Cosine, Linear

__all__ = ["Cyclic", "OneCycle", "WarmRestarts", "restart_position", "CYCLIC_MODES", "ANNEAL_SHAPES",
           "mode_scale_fn"]

CYCLIC_MODES = ("triangular", "triangular2", "exp_range")
ANNEAL_SHAPES = {"cos": Cosine, "linear": Linear}


def triangular_scale(x: float) -> float:
    """"triangular": no amplitude scaling."""
    return 1.0


def triangular2_scale(x: float) -> float:
    """"triangular2": the amplitude halves every cycle, ``1 / 2 ** (cycle - 1)``."""
    return 1 / (2.0 ** (x - 1))


def exp_range_scale(gamma: float, x: float) -> float:
    """"exp_range": ``gamma ** iteration``."""
    return gamma**x


def mode_scale_fn(mode: str, gamma: float) -> Callable[[float], float]:
    """The amplitude scaling of a built-in CyclicLR mode, as a function of one argument."""
    if mode == "triangular":
        return triangular_scale
    if mode == "triangular2":
        return triangular2_scale
    if mode == "exp_range":
        return partial(exp_range_scale, gamma)
    raise ValueError(f"mode is invalid and scale_fn is None (mode={mode!r}; allowed: {CYCLIC_MODES})")


@dataclass(frozen=True)
class Cyclic(Schedule):
    """Cyclical learning rate (Smith, arXiv:1506.01186): ``low`` to ``high`` and back each cycle.

    With ``period`` steps per cycle of which the fraction ``rise`` goes up::

        cycle(t) = floor(1 + t / period)                   (1, 2, 3, ...)
        x(t)     = 1 + t / period - cycle(t)               (position in the cycle, in [0, 1))
        h(t)     = x / rise              if x <= rise
                   (x - 1) / (rise - 1)  otherwise         (0 -> 1 -> 0)
        v(t)     = low + (high - low) * h(t) * scale

    where ``scale`` is ``scale_fn(cycle(t))`` or ``scale_fn(t)`` (``scale_mode`` "cycle" or
    "iterations"). The modes fix both: "triangular" 1 per cycle, "triangular2" ``1 / 2**(cycle-1)``
    per cycle, "exp_range" ``gamma ** t`` per iteration. ``low > high`` gives the inverted cycle
    (momentum, which falls while the learning rate rises).
    """

    low: Any
    high: Any
    period: float
    rise: float = 0.5
    mode: str = "triangular"
    gamma: float = 1.0
    scale_fn: Callable[[float], float] | None = None
    scale_mode: str = "cycle"

    @classmethod
    def from_steps(cls, low: Any, high: Any, step_size_up: float, step_size_down: float | None = None,
                   **kwargs: Any) -> Cyclic:
        """Build from the steps going up and down (``down`` defaults to ``up``), as CyclicLR does."""
        up = float(step_size_up)
        down = float(step_size_down) if step_size_down is not None else up
        period = up + down
        return cls(low, high, period, up / period, **kwargs)

    def scale(self, x: float) -> float:
        """The amplitude factor at ``x`` (a cycle number or a step, see :meth:`scale_argument`)."""
        if self.scale_fn is not None:
            return self.scale_fn(x)
        return mode_scale_fn(self.mode, self.gamma)(x)

    def scale_argument(self) -> str:
        """What :meth:`scale` is a function of: "cycle" or "iterations" (fixed by the built-in modes)."""
        if self.scale_fn is not None:
            return self.scale_mode
        return "iterations" if self.mode == "exp_range" else "cycle"

    def __call__(self, step: float) -> Any:
        cycle = math.floor(1 + step / self.period)
        x = 1.0 + step / self.period - cycle
        height = x / self.rise if x <= self.rise else (x - 1) / (self.rise - 1)
        scale = self.scale(cycle if self.scale_argument() == "cycle" else step)
        return self.low + (self.high - self.low) * height * scale


@dataclass(frozen=True)
class OneCycle(Schedule):
    """Piecewise annealing through phases (Smith & Topin, arXiv:1708.07120, as in torch's OneCycleLR).

    ``phases`` are ``(end_step, start, end)``; phase ``k`` covers ``e_{k-1} < t <= e_k``
    (``e_{-1} = 0``; the last phase also takes every later step) and anneals over it::

        v(t) = anneal(start_k, end_k, 1)(pct),    pct = (t - e_{k-1}) / (e_k - e_{k-1})

    with ``anneal`` the :class:`~.shapes.Cosine` ("cos") or :class:`~.shapes.Linear` ("linear")
    shape -- or a function ``anneal(start, end, pct)`` of the fraction ``pct`` of the phase done
    (what checkpoints of older torch versions carry as ``anneal_func``).
    """

    phases: tuple[tuple[float, Any, Any], ...]
    anneal: str | Callable[[Any, Any, float], Any] = "cos"

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", tuple(tuple(p) for p in _as_tuple(self.phases)))
        if not callable(self.anneal) and self.anneal not in ANNEAL_SHAPES:
            raise ValueError(
                f"anneal_strategy must be one of 'cos' or 'linear', instead got {self.anneal}"
            )

    def __call__(self, step: float) -> Any:
        begin = 0.0
        last = len(self.phases) - 1
        for k, (end_step, start, end) in enumerate(self.phases):
            if step <= end_step or k == last:
                pct = (step - begin) / (end_step - begin)  # torch's order of operations, to the bit
                if callable(self.anneal):
                    return self.anneal(start, end, pct)
                return ANNEAL_SHAPES[self.anneal](start, end, 1.0)(pct)
            begin = end_step
        raise ValueError("OneCycle needs at least one phase")


def restart_position(step: float, T_0: int, T_mult: int = 1) -> tuple[float, int]:
    """Where step ``t`` falls in SGDR's cycles: ``(T_cur, T_i)``, steps into the cycle and its length.

    Cycle ``n`` (from 0) has length ``T_0 * T_mult**n`` and starts at
    ``S_n = T_0 * (T_mult**n - 1) / (T_mult - 1)`` (``S_n = n * T_0`` when ``T_mult == 1``); ``n``
    is the largest with ``S_n <= t``, and ``T_cur = t - S_n``, ``T_i = T_0 * T_mult**n``.
    """
    if step < T_0:
        return step, T_0
    if T_mult == 1:
        return step % T_0, T_0
    n = int(math.log(step / T_0 * (T_mult - 1) + 1, T_mult))
    # the logarithm can land a hair below an integer exactly at a restart: settle n exactly
    while T_0 * (T_mult ** (n + 1) - 1) // (T_mult - 1) <= step:
        n += 1
    while n > 0 and T_0 * (T_mult**n - 1) // (T_mult - 1) > step:
        n -= 1
    return step - T_0 * (T_mult**n - 1) / (T_mult - 1), T_0 * T_mult**n


@dataclass(frozen=True)
class WarmRestarts(Schedule):
    """Cosine annealing with warm restarts (SGDR, arXiv:1608.03983):

        v(t) = Cosine(start, end, T_i)(T_cur),    (T_cur, T_i) = restart_position(t, T_0, T_mult)

    i.e. ``end + (start - end) * (1 + cos(pi * T_cur / T_i)) / 2``, restarting at ``start`` after
    ``T_0``, ``T_0 * T_mult``, ... steps. Fractional steps are allowed.
    """

    start: Any
    end: Any
    T_0: int
    T_mult: int = 1

    def __call__(self, step: float) -> Any:
        t_cur, t_i = restart_position(step, self.T_0, self.T_mult)
        return Cosine(self.start, self.end, t_i)(t_cur)
