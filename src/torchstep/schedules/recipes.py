"""The modern schedules, built as data from the shapes: warmup then decay, warmup-stable-decay.

Every recipe returns a :class:`~.schedule.Join` (or a :class:`~.schedule.Floor` of one) that can be
printed, compared, previewed and plotted. Each starts with a linear warmup from ``init`` to
``peak`` over ``warmup`` steps (``warmup=0`` skips it) and ends holding ``floor``::

    warmup_cosine(peak=1e-3, warmup=100, total=1000, floor=1e-5)
    == Join((Linear(0.0, 1e-3, 100), Cosine(1e-3, 1e-5, 900), Constant(1e-5)), (100, 1000))

``total`` counts the warmup. Use ``peak=1.0`` for a factor to hand to ``LambdaLR`` (which
multiplies each group's own lr by it); use absolute values with ``ScheduledLR``.
"""

from __future__ import annotations

import math

from .schedule import Floor, Join, Schedule
from .shapes import Constant, Cosine, Exponential, InverseSqrt, Linear, OneMinusSqrt

__all__ = [
    "warmup_constant",
    "warmup_cosine",
    "warmup_linear",
    "warmup_exponential",
    "warmup_inverse_sqrt",
    "wsd",
    "COOLDOWNS",
]


def _check_steps(**steps: float) -> None:
    for name, value in steps.items():
        if not value >= 0:
            raise ValueError(f"Invalid {name}: {value} ({name} must be >= 0)")


def _check_total(warmup: float, total: float) -> None:
    _check_steps(warmup=warmup, total=total)
    if total <= warmup:
        raise ValueError(f"Invalid total: {total} (total must be > warmup={warmup}; total counts the warmup)")


def _warmup(init: float, peak: float, warmup: float) -> Schedule:
    # a zero-length warmup is never evaluated (its Join boundary is 0), so any length works there
    return Linear(init, peak, warmup or 1)


def warmup_constant(peak: float, warmup: int, *, init: float = 0.0) -> Join:
    """``init -> peak`` linearly over ``warmup`` steps, then ``peak`` forever."""
    _check_steps(warmup=warmup)
    return Join((_warmup(init, peak, warmup), Constant(peak)), (warmup,))


def warmup_cosine(peak: float, warmup: int, total: int, *, floor: float = 0.0, init: float = 0.0) -> Join:
    """Linear warmup, then cosine from ``peak`` to ``floor`` at step ``total``, then ``floor``."""
    _check_total(warmup, total)
    decay = Cosine(peak, floor, total - warmup)
    return Join((_warmup(init, peak, warmup), decay, Constant(floor)), (warmup, total))


def warmup_linear(peak: float, warmup: int, total: int, *, floor: float = 0.0, init: float = 0.0) -> Join:
    """Linear warmup, then a straight line from ``peak`` to ``floor`` at step ``total``, then ``floor``."""
    _check_total(warmup, total)
    decay = Linear(peak, floor, total - warmup)
    return Join((_warmup(init, peak, warmup), decay, Constant(floor)), (warmup, total))


def warmup_exponential(peak: float, warmup: int, gamma: float, *, floor: float = 0.0,
                       init: float = 0.0) -> Floor:
    """Linear warmup, then ``peak * gamma ** (t - warmup)``, never below ``floor``."""
    _check_steps(warmup=warmup)
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"Invalid gamma: {gamma} (gamma must be in (0, 1] for a decay)")
    return Floor(Join((_warmup(init, peak, warmup), Exponential(gamma, peak)), (warmup,)), floor)


def warmup_inverse_sqrt(peak: float, warmup: int, *, floor: float = 0.0, init: float = 0.0,
                        timescale: float | None = None) -> Floor:
    """Linear warmup, then ``peak * sqrt(s / (s + t - warmup))`` with ``s = timescale or warmup``."""
    _check_steps(warmup=warmup)
    scale = timescale if timescale is not None else max(warmup, 1)
    if not scale > 0:
        raise ValueError(f"Invalid timescale: {scale} (timescale must be > 0)")
    return Floor(Join((_warmup(init, peak, warmup), InverseSqrt(peak, scale)), (warmup,)), floor)


COOLDOWNS = {"linear": Linear, "cosine": Cosine, "1-sqrt": OneMinusSqrt}


def wsd(peak: float, warmup: int, total: int, *, decay: float = 0.2, cooldown: str = "1-sqrt",
        floor: float = 0.0, init: float = 0.0) -> Join:
    """Warmup-stable-decay (arXiv:2404.06395, 2405.18392): warm up, hold ``peak``, cool down to ``floor``.

    ``decay`` is the cool-down length: a fraction of ``total`` when < 1, else a number of steps.
    The cool-down starts at ``total - decay_steps`` and uses the ``cooldown`` shape ("linear",
    "cosine" or "1-sqrt"); ``floor`` is held from ``total`` on.
    """
    _check_total(warmup, total)
    if cooldown not in COOLDOWNS:
        raise ValueError(f"Invalid cooldown: {cooldown!r} (cooldown must be one of {sorted(COOLDOWNS)})")
    if not decay > 0:
        raise ValueError(f"Invalid decay: {decay} (decay must be > 0: a fraction of total or a step count)")
    decay_steps = math.ceil(decay * total) if decay < 1 else decay
    if decay_steps > total - warmup:
        raise ValueError(
            f"Invalid decay: {decay} (the cool-down of {decay_steps} steps must fit after the "
            f"warmup: at most total - warmup = {total - warmup})"
        )
    stable_end = total - decay_steps
    pieces = (_warmup(init, peak, warmup), Constant(peak), COOLDOWNS[cooldown](peak, floor, decay_steps),
              Constant(floor))
    return Join(pieces, (warmup, stable_end, total))
