r"""Strong-Wolfe line search with cubic interpolation, as used by :class:`~torchstep.optim.LBFGS`.

Along a descent direction :math:`d` from :math:`x`, with :math:`\phi(t) = f(x + t d)`, find a step
:math:`t` satisfying the strong Wolfe conditions

.. math::
    \phi(t) \le \phi(0) + c_1 t \phi'(0) \qquad |\phi'(t)| \le -c_2 \phi'(0)

(``c1`` = 1e-4, ``c2`` = 0.9). Two phases, after Nocedal & Wright, *Numerical Optimization*
(2nd ed., 2006), Algorithm 3.5 (bracketing: grow the step by cubic extrapolation until an
interval is known to contain an acceptable step) and Algorithm 3.6 (zoom: shrink that interval
by cubic interpolation, with a safeguard that keeps each trial at least 10 % of the interval
away from its ends once progress stalls). Each trial costs one evaluation of the objective and
its gradient; at most ``max_ls`` trials follow the first.

The cubic through :math:`(a, f_a, g_a)` and :math:`(b, f_b, g_b)`, with :math:`b` the larger
abscissa, has its minimizer at (N&W eq. 3.59)

.. math::
    d_1 = g_a + g_b - 3\frac{f_a - f_b}{a - b}, \qquad d_2 = \sqrt{d_1^2 - g_a g_b}, \qquad
    t^* = b - (b - a)\frac{g_b + d_2 - d_1}{g_b - g_a + 2 d_2}

clamped to the allowed interval; when :math:`d_1^2 < g_a g_b` the cubic has no minimizer and
the interval's midpoint is used. Arithmetic keeps the types torch.optim's LBFGS uses (Python
floats for losses, 0-d tensors for directional derivatives), so the trials agree to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

SUFFICIENT_DECREASE = 1e-4  # c1
CURVATURE = 0.9  # c2


def cubic_minimizer(x1, f1, g1, x2, f2, g2, bounds: tuple[Any, Any] | None = None):
    """Minimizer of the cubic matching values ``f`` and slopes ``g`` at ``x1`` and ``x2``,
    clamped to ``bounds`` (default: the interval between the two points)."""
    low, high = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    discriminant = d1**2 - g1 * g2
    if not discriminant >= 0:
        return (low + high) / 2.0
    d2 = discriminant.sqrt() if isinstance(discriminant, torch.Tensor) else math.sqrt(discriminant)
    (xa, ga), (xb, gb) = ((x1, g1), (x2, g2)) if x1 <= x2 else ((x2, g2), (x1, g1))
    t = xb - (xb - xa) * ((gb + d2 - d1) / (gb - ga + 2 * d2))
    return min(max(t, low), high)


@dataclass
class Trial:
    """One evaluated step: length ``t``, loss ``f``, flat gradient ``g``, slope ``gtd = g . d``."""

    t: Any
    f: float
    g: torch.Tensor
    gtd: Any


def strong_wolfe(
    evaluate: Callable[[Any], tuple[float, torch.Tensor]],
    t: Any,
    d: torch.Tensor,
    f: float,
    g: torch.Tensor,
    gtd: Any,
    *,
    tolerance_change: float = 1e-9,
    max_ls: int = 25,
) -> tuple[float, torch.Tensor, Any, int]:
    """Search along ``d`` from the point with loss ``f``, gradient ``g`` and slope ``gtd``,
    starting at step ``t``; ``evaluate(t)`` returns the loss and flat gradient at ``x + t d``.

    Returns ``(loss, flat_grad, t, evaluations)`` at the accepted step.
    """
    d_scale = d.abs().max()
    origin = Trial(0, f, g, gtd)

    def trial(step: Any) -> Trial:
        loss, grad = evaluate(step)
        return Trial(step, loss, grad, grad.dot(d))

    def armijo_fails(p: Trial) -> bool:
        return bool(p.f > (f + SUFFICIENT_DECREASE * p.t * gtd))

    def curvature_holds(p: Trial) -> bool:
        return bool(abs(p.gtd) <= -CURVATURE * gtd)

    # phase 1 (N&W Algorithm 3.5): extrapolate until a bracket or an acceptable step is found
    prev, new = origin, trial(t)
    evals, iters = 1, 0
    bracket: list[Trial] | None = None
    while iters < max_ls:
        if armijo_fails(new) or (iters > 1 and new.f >= prev.f):
            bracket = [prev, new]
            break
        if curvature_holds(new):
            return new.f, new.g, new.t, evals
        if new.gtd >= 0:
            bracket = [prev, new]
            break
        bounds = (new.t + 0.01 * (new.t - prev.t), new.t * 10)
        step = cubic_minimizer(prev.t, prev.f, prev.gtd, new.t, new.f, new.gtd, bounds=bounds)
        prev, new = new, trial(step)
        evals += 1
        iters += 1
    if bracket is None:  # out of trials: the best of the origin and the last trial
        best = origin if origin.f <= new.f else new
        return best.f, best.g, best.t, evals

    # phase 2 (N&W Algorithm 3.6): shrink the bracket; lo holds the lowest loss seen
    lo, hi = (0, 1) if bracket[0].f <= bracket[1].f else (1, 0)
    stalled = False
    while iters < max_ls:
        if abs(bracket[1].t - bracket[0].t) * d_scale < tolerance_change:
            break
        a, b = bracket[0], bracket[1]
        step = cubic_minimizer(a.t, a.f, a.gtd, b.t, b.f, b.gtd)
        left, right = min(a.t, b.t), max(a.t, b.t)
        margin = 0.1 * (right - left)
        if min(right - step, step - left) < margin:
            # too close to an end: move it inside if progress already stalled or it sits on an end
            if stalled or step >= right or step <= left:
                step = right - margin if abs(step - right) < abs(step - left) else left + margin
                stalled = False
            else:
                stalled = True
        else:
            stalled = False
        new = trial(step)
        evals += 1
        iters += 1
        if armijo_fails(new) or new.f >= bracket[lo].f:
            bracket[hi] = new
            lo, hi = (0, 1) if bracket[0].f <= bracket[1].f else (1, 0)
            continue
        if curvature_holds(new):
            return new.f, new.g, new.t, evals
        if new.gtd * (bracket[hi].t - bracket[lo].t) >= 0:
            bracket[hi] = bracket[lo]
        bracket[lo] = new
    best = bracket[lo]
    return best.f, best.g, best.t, evals
