"""torch's decay schedulers as thin adapters over the closed-form shapes.

Chaining. torch's schedulers move each group's *current* lr instead of recomputing it from
``base_lr``, so several schedulers on one optimizer compose. Here every chainable scheduler is a
factor schedule ``u(t)`` (a shape of :mod:`..shapes`) and an anchor ``a`` (0, or ``eta_min`` for
CosineAnnealingLR). Its closed form -- ``step(epoch)``, ``SequentialLR``'s milestones,
:meth:`schedule` -- is ``lr(t) = a + (base_lr - a) * u(t)``; a step moves the current lr by the
shape's one-step factor :meth:`~..schedule.Schedule.ratio`::

    lr <- a + (lr - a) * u.ratio(t)                         ratio = u(t) / u(t-1)
    lr <- lr + (base_lr - a) * u.difference(t)              where u(t-1) = 0 (ratio is None)

(the second line covers the step out of the cosine's trough). Alone, this is the closed form;
chained, it is torch's recursive form, which is *not* the product of the closed forms when a
CosineAnnealingLR with ``eta_min != 0`` is chained (its update is affine around ``eta_min``).
Where torch's arguments are degenerate (``StepLR(step_size=-1)``, ``ConstantLR(total_iters=0)``,
negative milestones) torch's recursion and its closed form disagree; each is reproduced where
torch uses it, because the shapes state their one-step factor the way torch's recursion does.

Two more of torch's rules decide what a step does when a scheduler is not used the usual way
(resumed with ``last_epoch=k >= 0``, or stepped from ``last_epoch=-1`` by a ``ChainedScheduler``
nested in a ``SequentialLR``):

* the construction step: Linear/Exponential/Polynomial/CosineAnnealingLR keep the group's lr
  there (except LinearLR's step 0); StepLR, MultiStepLR and ConstantLR apply their transition;
* step 0 (:meth:`_ChainableLR.step_zero_factor`): StepLR keeps the lr, ConstantLR applies
  ``factor`` and LinearLR ``start_factor`` whatever their ``total_iters``; the others apply their
  shape's ratio (e.g. one factor ``gamma``).
"""

from __future__ import annotations

import types
from collections import Counter
from typing import Any, Callable, Iterable

from ..schedule import Join, Scaled, Schedule
from ..shapes import (Constant, Cosine, CumulativeProduct, Exponential, Lambda, Linear, MultiStepDecay,
                      Polynomial, StepDecay)
from .base import LRScheduler, check_optimizer, read_group_values

__all__ = ["LambdaLR", "MultiplicativeLR", "StepLR", "MultiStepLR", "ConstantLR", "LinearLR",
           "ExponentialLR", "PolynomialLR", "CosineAnnealingLR"]


def _scale(lr: Any, anchor: float, ratio: Any) -> Any:
    """``anchor + (lr - anchor) * ratio`` in torch's operation order.

    A shape's "no change" is the integer 1, which keeps ``lr``'s value and type (an int lr stays
    an int, as where torch returns the group's lr untouched); a float factor of 1.0 makes it a
    float, as torch's multiplication does.
    """
    if anchor == 0:
        return lr * ratio
    return ratio * (lr - anchor) + anchor


class _ChainableLR(LRScheduler):
    """A scheduler given by a factor schedule :meth:`factor` and an anchor (see the module docstring)."""

    _keeps_lr_when_constructed = True
    _closed_form_on_first_step = False

    def factor_schedule(self) -> Schedule:
        """The factor schedule ``u(t)`` (``u(0)`` is the first factor; before step 0 it is 1)."""
        raise NotImplementedError

    def anchor(self) -> float:
        """The value the factor scales towards: ``lr(t) = anchor + (base_lr - anchor) * u(t)``."""
        return 0

    def schedule(self, group: int = 0) -> Schedule:
        """The closed form of group ``group``'s lr: ``Scaled(u, base_lr, anchor)``."""
        return Scaled(self.factor_schedule(), self.base_lrs[group], self.anchor())

    def step_zero_factor(self) -> Any:
        """The factor torch applies at step 0 whatever the shape says there, or ``None``."""
        return None

    def get_lr(self) -> list[Any]:
        self._warn_if_not_stepping()
        t, a = self.last_epoch, self.anchor()
        groups = self.optimizer.param_groups
        ratio = self.step_zero_factor() if t == 0 else None
        if ratio is None:
            if self._is_initial and self._keeps_lr_when_constructed:
                return read_group_values(self.optimizer, "lr")
            if self._closed_form_on_first_step and self._step_count == 1 and t > 0:
                return self._get_closed_form_lr()
            u = self.factor_schedule()
            ratio = u.ratio(t)
            if ratio is None:
                rise = u.difference(t)
                return [g["lr"] + (base - a) * rise for g, base in zip(groups, self.base_lrs)]
        return [_scale(g["lr"], a, ratio) for g in groups]

    def _get_closed_form_lr(self) -> list[Any]:
        u, a, t = self.factor_schedule(), self.anchor(), self.last_epoch
        if a == 0:
            return [base * u(t) for base in self.base_lrs]
        return [a + (base - a) * u(t) for base in self.base_lrs]


class StepLR(_ChainableLR):
    """Multiply the lr by ``gamma`` every ``step_size`` steps: ``lr(t) = base_lr * gamma ** (t // step_size)``."""

    _keeps_lr_when_constructed = False

    def __init__(self, optimizer: Any, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def factor_schedule(self) -> Schedule:
        return StepDecay(self.step_size, self.gamma, 1)

    def step_zero_factor(self) -> Any:
        return 1


class MultiStepLR(_ChainableLR):
    """Multiply the lr by ``gamma`` at each milestone: ``lr(t) = base_lr * gamma ** #{m <= t}``."""

    _keeps_lr_when_constructed = False

    def __init__(self, optimizer: Any, milestones: Iterable[int], gamma: float = 0.1, last_epoch: int = -1) -> None:
        self.milestones = Counter(milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def factor_schedule(self) -> Schedule:
        return MultiStepDecay(tuple(self.milestones.elements()), self.gamma, 1)


class ConstantLR(_ChainableLR):
    """``lr(t) = base_lr * factor`` for ``t < total_iters``, then ``base_lr``.

    Stepping multiplies by ``factor`` at step 0 and by ``1 / factor`` at ``total_iters``, as torch
    does: with ``factor=0`` that step raises ZeroDivisionError, and with ``total_iters <= 0`` the
    factor is never taken back (the closed form gives ``base_lr`` there).
    """

    _keeps_lr_when_constructed = False

    def __init__(self, optimizer: Any, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch: int = -1) -> None:
        if factor > 1.0 or factor < 0:
            raise ValueError(
                f"Constant multiplicative factor expected to be between 0 and 1. (factor={factor}; "
                f"allowed: 0 <= factor <= 1)"
            )
        self.factor = factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def factor_schedule(self) -> Schedule:
        # after total_iters: 1, of the type torch's closed form gives it (factor + (1 - factor))
        return Join((Constant(self.factor), Constant(self.factor + (1 - self.factor))), (self.total_iters,))

    def step_zero_factor(self) -> Any:
        return self.factor


class LinearLR(_ChainableLR):
    """``lr(t) = base_lr * (s + (e - s) * min(t, total_iters) / total_iters)`` (s, e = start/end factor)."""

    def __init__(self, optimizer: Any, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5, last_epoch: int = -1) -> None:
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError(
                "Starting multiplicative factor expected to be greater than 0 and less or equal to 1. "
                f"(start_factor={start_factor}; allowed: 0 < start_factor <= 1)"
            )
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError(
                "Ending multiplicative factor expected to be between 0 and 1. "
                f"(end_factor={end_factor}; allowed: 0 <= end_factor <= 1)"
            )
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def factor_schedule(self) -> Schedule:
        return Linear(self.start_factor, self.end_factor, self.total_iters, hold=True)

    def step_zero_factor(self) -> Any:
        return self.start_factor


class ExponentialLR(_ChainableLR):
    """``lr(t) = base_lr * gamma ** t``."""

    def __init__(self, optimizer: Any, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def factor_schedule(self) -> Schedule:
        return Exponential(self.gamma, 1)


class PolynomialLR(_ChainableLR):
    """``lr(t) = base_lr * (1 - min(t, total_iters) / total_iters) ** power``."""

    def __init__(self, optimizer: Any, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1) -> None:
        self.total_iters = total_iters
        self.power = power
        super().__init__(optimizer, last_epoch)

    def factor_schedule(self) -> Schedule:
        return Polynomial(self.total_iters, self.power)


class CosineAnnealingLR(_ChainableLR):
    """``lr(t) = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2`` (SGDR without restarts).

    Past ``T_max`` the cosine goes on (the lr rises again), as in torch. A resumed scheduler's
    first ``step()`` (``_step_count == 1``, ``last_epoch > 0``) takes the closed form, as in torch.
    """

    _closed_form_on_first_step = True

    def __init__(self, optimizer: Any, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def factor_schedule(self) -> Schedule:
        return Cosine(1.0, 0.0, self.T_max)

    def anchor(self) -> float:
        return self.eta_min


class _LambdaState:
    """torch's state_dict rule for lr_lambdas: plain functions are dropped (``None``), callable
    objects are saved as a copy of their ``__dict__``."""

    lr_lambdas: list[Callable[[int], Any]]
    __dict__: dict[str, Any]

    def _set_lambdas(self, optimizer: Any, lr_lambda: Any) -> None:
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"Expected {n} lr_lambdas, but got {len(lr_lambda)} (one per param group)")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * n

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        state["lr_lambdas"] = [
            None if isinstance(fn, types.FunctionType) else fn.__dict__.copy() for fn in self.lr_lambdas
        ]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.pop("lr_lambdas")
        try:
            self.__dict__.update(state_dict)
        finally:
            state_dict["lr_lambdas"] = saved
        for fn, fn_state in zip(self.lr_lambdas, saved):
            if fn_state is not None:
                fn.__dict__.update(fn_state)


class LambdaLR(_LambdaState, LRScheduler):
    """``lr(t) = base_lr * lr_lambda(t)`` -- any function of the step, e.g. a torchstep ``Schedule``.

    Not chainable: it sets the lr outright, as in torch.
    """

    def __init__(self, optimizer: Any, lr_lambda: Any, last_epoch: int = -1) -> None:
        check_optimizer(optimizer)
        self.optimizer = optimizer
        self._set_lambdas(optimizer, lr_lambda)
        super().__init__(optimizer, last_epoch)

    def schedule(self, group: int = 0) -> Schedule:
        """Group ``group``'s lr as a schedule: ``Lambda(lr_lambda, base_lr)``."""
        return Lambda(self.lr_lambdas[group], self.base_lrs[group])

    def get_lr(self) -> list[Any]:
        self._warn_if_not_stepping()
        return [self.schedule(i)(self.last_epoch) for i in range(len(self.base_lrs))]


class MultiplicativeLR(_LambdaState, LRScheduler):
    """``lr(t) = lr(t-1) * lr_lambda(t)`` on the group's current lr (chainable); see ``CumulativeProduct``."""

    def __init__(self, optimizer: Any, lr_lambda: Any, last_epoch: int = -1) -> None:
        check_optimizer(optimizer)
        self.optimizer = optimizer
        self._set_lambdas(optimizer, lr_lambda)
        for fn in self.lr_lambdas:
            if not callable(fn):
                raise TypeError(f"lr_lambda should be a function, but got {type(fn).__name__} (lr_lambda={fn!r})")
        super().__init__(optimizer, last_epoch)

    def schedule(self, group: int = 0) -> Schedule:
        """Group ``group``'s lr as a schedule: ``CumulativeProduct(lr_lambda, base_lr)``."""
        return CumulativeProduct(self.lr_lambdas[group], self.base_lrs[group])

    def get_lr(self) -> list[Any]:
        self._warn_if_not_stepping()
        if self._is_initial:
            return read_group_values(self.optimizer, "lr")
        return [g["lr"] * fn(self.last_epoch) for g, fn in zip(self.optimizer.param_groups, self.lr_lambdas)]
