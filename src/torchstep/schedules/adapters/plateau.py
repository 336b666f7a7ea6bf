"""ReduceLROnPlateau: the one scheduler with real state -- it reacts to a metric, not to the step.

Each ``step(metric)``:

1. ``metric`` improves on ``best`` when (mode "min") ``metric < best * (1 - threshold)``
   (``threshold_mode`` "rel") or ``metric < best - threshold`` ("abs"); mirrored for mode "max".
   An improvement sets ``best`` and zeroes ``num_bad_epochs``, otherwise it grows by one.
2. During cool-down (``cooldown_counter > 0``) the counter ticks down and bad epochs are ignored.
3. When ``num_bad_epochs > patience`` every group's lr becomes ``max(lr * factor, min_lr[i])`` --
   unless that changes it by ``eps`` or less -- and cool-down starts.

It subclasses torch's ReduceLROnPlateau (and so torch's LRScheduler) for ``isinstance`` checks such
as Lightning's "does this scheduler need a monitored metric", overriding every method.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, SupportsFloat

from torch.optim import lr_scheduler as _torch_lr

from .base import EPOCH_DEPRECATION_WARNING, LRScheduler, check_optimizer, read_group_values, write_group_value

__all__ = ["ReduceLROnPlateau"]


class ReduceLROnPlateau(LRScheduler, _torch_lr.ReduceLROnPlateau):
    """Reduce the lr by ``factor`` once ``metric`` has not improved for more than ``patience`` steps."""

    def __init__(self, optimizer: Any, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr: Any = 0, eps: float = 1e-8) -> None:
        if factor >= 1.0:
            raise ValueError(f"Factor should be < 1.0. (factor={factor}; allowed: factor < 1.0)")
        self.factor = factor
        check_optimizer(optimizer)
        self.optimizer = optimizer
        n = len(optimizer.param_groups)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != n:
                raise ValueError(f"expected {n} min_lrs, got {len(min_lr)} (min_lr needs one value per param group)")
            self.default_min_lr = None
            self.min_lrs = list(min_lr)
        else:
            self.default_min_lr = min_lr
            self.min_lrs = [min_lr] * n
        self.patience = patience
        self.cooldown = cooldown
        self.eps = eps
        self.last_epoch = 0
        self._last_lr = read_group_values(optimizer, "lr")
        self._init_is_better(mode=mode, threshold=threshold, threshold_mode=threshold_mode)
        self._reset()

    def _reset(self) -> None:
        """Forget the best value and the bad-epoch and cool-down counters."""
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def step(self, metrics: SupportsFloat, epoch: int | None = None) -> None:  # type: ignore[override]
        """Record one value of the monitored metric (a float or a 0-d tensor)."""
        current = float(metrics)
        if epoch is None:
            epoch = self.last_epoch + 1
        else:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self.last_epoch = epoch
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self._reduce_lr(epoch)
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = read_group_values(self.optimizer, "lr")

    def _reduce_lr(self, epoch: int) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(
                    f"The number of param groups in the `optimizer` ({len(groups)}) differs from when "
                    f"`ReduceLROnPlateau` was initialized ({len(self.min_lrs)}), usually due to a new "
                    "param group being added to the optimizer. Please modify the `min_lrs` field to "
                    "match the length of the `optimizer` param groups."
                )
            self.min_lrs = [self.default_min_lr] * len(groups)
        for group, min_lr in zip(groups, self.min_lrs):
            old = float(group["lr"])
            new = max(old * self.factor, min_lr)
            if old - new > self.eps:
                write_group_value(group, "lr", new)

    @property
    def in_cooldown(self) -> bool:
        """True while the cool-down after a reduction lasts."""
        return self.cooldown_counter > 0

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min":
            return a < (best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold)
        return a > (best * (self.threshold + 1.0) if self.threshold_mode == "rel" else best + self.threshold)

    def _init_is_better(self, mode: str, threshold: float, threshold_mode: str) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode {mode} is unknown! (mode={mode!r}; allowed: 'min', 'max')")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(
                f"threshold mode {threshold_mode} is unknown! (threshold_mode={threshold_mode!r}; allowed: 'rel', 'abs')"
            )
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state (torch's or ours) and re-check the modes."""
        self.__dict__.update(state_dict)
        self._init_is_better(mode=self.mode, threshold=self.threshold, threshold_mode=self.threshold_mode)

    def get_lr(self) -> list[Any]:
        """The current lrs (this scheduler changes them only from ``step(metric)``)."""
        return read_group_values(self.optimizer, "lr")

    def _initial_step(self) -> None:
        """Nothing to do: construction performs no step."""

    def _update_lr(self, epoch: int | None = None) -> None:
        raise TypeError("ReduceLROnPlateau is stepped with a metric: call step(metric)")
