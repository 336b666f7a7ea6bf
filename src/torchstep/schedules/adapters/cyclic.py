"""torch's cyclical schedulers as adapters: CyclicLR, OneCycleLR, CosineAnnealingWarmRestarts.

They set the lr outright from a closed form of the step (they are not chainable in torch either).
CyclicLR and OneCycleLR also cycle momentum -- ``group["momentum"]``, or ``betas[0]`` for
optimizers with ``betas`` (Adam and friends) -- inversely to the lr.
"""

from __future__ import annotations

import math
import types
from typing import Any, Callable

from ..cycles import CYCLIC_MODES, Cyclic, OneCycle, WarmRestarts, mode_scale_fn, restart_position
from ..schedule import Schedule
from ..shapes import Cosine, Linear
from .base import LRScheduler, check_optimizer, format_param, write_group_value

__all__ = ["CyclicLR", "OneCycleLR", "CosineAnnealingWarmRestarts"]


def _momentum_key(optimizer: Any) -> bool:
    """True when momentum lives in ``betas[0]``; raises if the optimizer has neither."""
    defaults = getattr(optimizer, "defaults", None)
    if not isinstance(defaults, dict):
        defaults = optimizer.param_groups[0] if optimizer.param_groups else {}
    if "momentum" not in defaults and "betas" not in defaults:
        raise ValueError(
            "optimizer must support momentum or beta1 with `cycle_momentum` option enabled "
            f"({type(optimizer).__name__} has neither 'momentum' nor 'betas'; pass cycle_momentum=False)"
        )
    return "betas" in defaults


def _set_momentum(group: dict, use_beta1: bool, value: Any) -> None:
    if use_beta1:
        group["betas"] = (value, *group["betas"][1:])
    else:
        group["momentum"] = value


def _init_momentum(optimizer: Any, use_beta1: bool, base: list[Any], peak: list[Any]) -> None:
    """Start each group at its ``max_momentum`` and record both bounds in the group, as torch does."""
    for group, low, high in zip(optimizer.param_groups, base, peak):
        _set_momentum(group, use_beta1, high)
        group["max_momentum"] = high
        group["base_momentum"] = low


class CyclicLR(LRScheduler):
    """The lr cycles between ``base_lr`` and ``max_lr`` per :class:`~torchstep.schedules.Cyclic`.

    Step it after every batch. Momentum cycles from ``max_momentum`` down to ``base_momentum`` and
    back (``Cyclic`` with ``low=max_momentum, high=base_momentum``).
    """

    def __init__(self, optimizer: Any, base_lr: Any, max_lr: Any, step_size_up: int = 2000,
                 step_size_down: int | None = None, mode: str = "triangular", gamma: float = 1.0,
                 scale_fn: Callable[[float], float] | None = None, scale_mode: str = "cycle",
                 cycle_momentum: bool = True, base_momentum: Any = 0.8, max_momentum: Any = 0.9,
                 last_epoch: int = -1) -> None:
        check_optimizer(optimizer)
        self.optimizer = optimizer
        base_lrs = format_param("base_lr", optimizer, base_lr)
        if last_epoch == -1:
            for lr, group in zip(base_lrs, optimizer.param_groups):
                write_group_value(group, "lr", lr)
        self.max_lrs = format_param("max_lr", optimizer, max_lr)
        shape = Cyclic.from_steps(0.0, 1.0, step_size_up, step_size_down)
        self.total_size, self.step_ratio = shape.period, shape.rise
        if mode not in CYCLIC_MODES and scale_fn is None:
            raise ValueError(f"mode is invalid and scale_fn is None (mode={mode!r}; allowed: {CYCLIC_MODES})")
        self.mode = mode
        self.gamma = gamma
        self._scale_fn_custom = scale_fn
        self.scale_mode = scale_mode
        self._init_scale_fn()
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1 = _momentum_key(optimizer)
            self.base_momentums = format_param("base_momentum", optimizer, base_momentum)
            self.max_momentums = format_param("max_momentum", optimizer, max_momentum)
            if last_epoch == -1:
                _init_momentum(optimizer, self.use_beta1, self.base_momentums, self.max_momentums)
        super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def _init_scale_fn(self) -> None:
        """A built-in mode sets ``_scale_fn_ref`` (its scale function, as torch names it; never
        saved) and what the scale is a function of (``scale_mode``)."""
        if self._scale_fn_custom is None:
            self._scale_fn_ref = mode_scale_fn(self.mode, self.gamma)
            self.scale_mode = self._shape(0.0, 1.0).scale_argument()

    def _shape(self, low: Any, high: Any) -> Cyclic:
        return Cyclic(low, high, self.total_size, self.step_ratio, self.mode, self.gamma,
                      self._scale_fn_custom, self.scale_mode)

    def scale_fn(self, x: float) -> float:
        """The amplitude scaling at ``x`` (cycle number or iteration, per ``scale_mode``)."""
        return self._shape(0.0, 1.0).scale(x)

    def schedule(self, group: int = 0) -> Schedule:
        """Group ``group``'s lr as a schedule."""
        return self._shape(self.base_lrs[group], self.max_lrs[group])

    def get_lr(self) -> list[Any]:
        """The lrs at ``last_epoch`` (and, with ``cycle_momentum``, sets the groups' momentum)."""
        self._warn_if_not_stepping()
        t = self.last_epoch
        lrs = [self._shape(low, high)(t) for low, high in zip(self.base_lrs, self.max_lrs)]
        if self.cycle_momentum:
            for group, low, high in zip(self.optimizer.param_groups, self.base_momentums, self.max_momentums):
                _set_momentum(group, self.use_beta1, self._shape(high, low)(t))
        return lrs

    def state_dict(self) -> dict[str, Any]:
        """torch's layout: no ``_scale_fn_ref``; a custom ``scale_fn`` is kept only if it is a
        callable object (its ``__dict__``), so the state pickles."""
        state = super().state_dict()
        state.pop("_scale_fn_ref", None)
        fn = state.pop("_scale_fn_custom")
        state["_scale_fn_custom"] = None if fn is None or isinstance(fn, types.FunctionType) else fn.__dict__.copy()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        fn_state = state.pop("_scale_fn_custom", None)
        state.pop("_scale_fn_ref", None)
        super().load_state_dict(state)
        if fn_state is not None and self._scale_fn_custom is not None:
            self._scale_fn_custom.__dict__.update(fn_state)
        self._init_scale_fn()


class OneCycleLR(LRScheduler):
    """The 1cycle policy: ``max_lr / div_factor`` up to ``max_lr``, then down to
    ``initial_lr / final_div_factor`` (with ``three_phase``: up, back down to ``initial_lr``, then to
    the minimum), per :class:`~torchstep.schedules.OneCycle`. Step it after every batch.
    """

    def __init__(self, optimizer: Any, max_lr: Any, total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = True, base_momentum: Any = 0.85, max_momentum: Any = 0.95,
                 div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1) -> None:
        check_optimizer(optimizer)
        self.optimizer = optimizer
        if total_steps is not None:
            if not isinstance(total_steps, int) or total_steps <= 0:
                raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
            self.total_steps = total_steps
        elif epochs is not None and steps_per_epoch is not None:
            if not isinstance(epochs, int) or epochs <= 0:
                raise ValueError(f"Expected positive integer epochs, but got {epochs}")
            if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
                raise ValueError(f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}")
            self.total_steps = epochs * steps_per_epoch
        else:
            raise ValueError(
                "You must define either total_steps OR (epochs AND steps_per_epoch) "
                f"(total_steps={total_steps}, epochs={epochs}, steps_per_epoch={steps_per_epoch})"
            )
        self._schedule_phases = self._phases(pct_start, three_phase)
        if not isinstance(pct_start, float) or pct_start < 0 or pct_start > 1:
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}")
        self._anneal_func_type = anneal_strategy
        max_lrs = format_param("max_lr", optimizer, max_lr)
        if last_epoch == -1:
            for group, peak in zip(optimizer.param_groups, max_lrs):
                group["initial_lr"] = peak / div_factor
                group["max_lr"] = peak
                group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1 = _momentum_key(optimizer)
            highs = format_param("max_momentum", optimizer, max_momentum)
            lows = format_param("base_momentum", optimizer, base_momentum)
            if last_epoch == -1:
                _init_momentum(optimizer, self.use_beta1, lows, highs)
        super().__init__(optimizer, last_epoch)

    def _phases(self, pct_start: float, three_phase: bool) -> list[dict[str, Any]]:
        """torch's phase table: where each phase ends and which group keys it anneals between."""
        def phase(end: float, lr: tuple[str, str], momentum: tuple[str, str]) -> dict[str, Any]:
            return {"end_step": end, "start_lr": lr[0], "end_lr": lr[1],
                    "start_momentum": momentum[0], "end_momentum": momentum[1]}

        up = float(pct_start * self.total_steps) - 1
        last = self.total_steps - 1
        if three_phase:
            return [phase(up, ("initial_lr", "max_lr"), ("max_momentum", "base_momentum")),
                    phase(float(2 * pct_start * self.total_steps) - 2, ("max_lr", "initial_lr"),
                          ("base_momentum", "max_momentum")),
                    phase(last, ("initial_lr", "min_lr"), ("max_momentum", "max_momentum"))]
        return [phase(up, ("initial_lr", "max_lr"), ("max_momentum", "base_momentum")),
                phase(last, ("max_lr", "min_lr"), ("base_momentum", "max_momentum"))]

    @staticmethod
    def _annealing_cos(start: Any, end: Any, pct: float) -> Any:
        """Cosine from ``start`` to ``end`` as ``pct`` goes from 0 to 1 (the ``Cosine`` shape)."""
        return Cosine(start, end, 1.0)(pct)

    @staticmethod
    def _annealing_linear(start: Any, end: Any, pct: float) -> Any:
        """Straight line from ``start`` to ``end`` as ``pct`` goes from 0 to 1 (the ``Linear`` shape)."""
        return Linear(start, end, 1.0)(pct)

    def _anneal(self) -> Any:
        """``anneal_strategy``, or the ``anneal_func`` a checkpoint of an older torch restored."""
        if hasattr(self, "_anneal_func_type"):
            return self._anneal_func_type
        return self.anneal_func

    def _anneal_func(self, start: Any, end: Any, pct: float) -> Any:
        """The annealing of one phase at fraction ``pct`` (torch's private helper, kept)."""
        return OneCycle(((1.0, start, end),), self._anneal())(pct)

    def _shape(self, group: dict, start_key: str, end_key: str) -> OneCycle:
        phases = [(p["end_step"], group[p[start_key]], group[p[end_key]]) for p in self._schedule_phases]
        return OneCycle(phases, self._anneal())

    def schedule(self, group: int = 0) -> Schedule:
        """Group ``group``'s lr as a schedule (read from the group's initial/max/min_lr)."""
        return self._shape(self.optimizer.param_groups[group], "start_lr", "end_lr")

    def get_lr(self) -> list[Any]:
        """The lrs at ``last_epoch`` (and, with ``cycle_momentum``, sets the groups' momentum)."""
        self._warn_if_not_stepping()
        t = self.last_epoch
        if t > self.total_steps:
            raise ValueError(
                f"Tried to step {t} times. The specified number of total steps is {self.total_steps} "
                f"(a OneCycleLR allows at most total_steps steps)"
            )
        lrs = []
        for group in self.optimizer.param_groups:
            lrs.append(self._shape(group, "start_lr", "end_lr")(t))
            if self.cycle_momentum:
                _set_momentum(group, self.use_beta1, self._shape(group, "start_momentum", "end_momentum")(t))
        return lrs


class CosineAnnealingWarmRestarts(LRScheduler):
    """SGDR: ``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2``, restarting
    after ``T_0``, ``T_0 * T_mult``, ... steps (:class:`~torchstep.schedules.WarmRestarts`).

    ``step()`` advances ``T_cur`` by one; ``step(epoch)`` (fractional allowed, e.g. ``epoch + i / iters``
    per batch) jumps there via :func:`~torchstep.schedules.restart_position`. At an exact restart
    reached by ``step(epoch)``, torch 2.13's logarithm can round into the previous cycle (e.g.
    ``T_0=1, T_mult=3, epoch=121``); here the restart is exact.
    """

    def __init__(self, optimizer: Any, T_0: int, T_mult: int = 1, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        if not isinstance(T_0, int) or T_0 <= 0:
            raise ValueError(f"Expected positive integer T_0, but got {T_0}")
        if not isinstance(T_mult, int) or T_mult < 1:
            raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult}")
        if not isinstance(eta_min, (float, int)):
            raise ValueError(f"Expected float or int eta_min, but got {eta_min} of type {type(eta_min)}")
        self.T_0 = T_0
        self.T_i = T_0
        self.T_mult = T_mult
        self.eta_min = eta_min
        self.T_cur = last_epoch
        super().__init__(optimizer, last_epoch)

    def schedule(self, group: int = 0) -> Schedule:
        """Group ``group``'s lr as a schedule of the (possibly fractional) epoch."""
        return WarmRestarts(self.base_lrs[group], self.eta_min, self.T_0, self.T_mult)

    def get_lr(self) -> list[Any]:
        self._warn_if_not_stepping()
        return [Cosine(base, self.eta_min, self.T_i)(self.T_cur) for base in self.base_lrs]

    def step(self, epoch: float | None = None) -> None:
        """Advance one step, or jump to ``epoch``; may be called per batch with fractional epochs."""
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        else:
            if epoch < 0:
                raise ValueError(f"Expected non-negative epoch, but got {epoch}")
            self.T_cur, self.T_i = restart_position(epoch, self.T_0, self.T_mult)
        self.last_epoch = math.floor(epoch)
        self._get_lr_called_within_step = True
        try:
            values = self.get_lr()
        finally:
            self._get_lr_called_within_step = False
        self._write_lrs(values)
