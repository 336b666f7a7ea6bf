r"""``SWALR``: anneal each group's lr to a constant ``swa_lr`` for the SWA phase.

With :math:`E` = ``anneal_epochs``, :math:`s` the number of ``step()`` calls since construction
(:math:`s \ge 1` when :math:`E = 0`), :math:`t_s = \min(1, \max(0, s / \max(1, E)))` and
:math:`\alpha_s = a(t_s)` where :math:`a(t) = (1 - \cos \pi t) / 2` (``anneal_strategy="cos"``) or
:math:`a(t) = t` (``"linear"``), each step sets

.. math::
    \text{lr}_0 = \frac{\text{lr} - \alpha_{s-1}\,\text{swa\_lr}}{1 - \alpha_{s-1}}
    \quad(\text{swa\_lr if } \alpha_{s-1} = 1), \qquad
    \text{lr} \leftarrow \alpha_s\,\text{swa\_lr} + (1 - \alpha_s)\,\text{lr}_0

i.e. it recovers the lr the annealing started from out of the group's current lr and moves
:math:`\alpha_s` of the way to ``swa_lr``. Left alone, the lr goes from its value at the switch to
``swa_lr`` in :math:`E` steps and stays there. Because it reads the group's current lr, it can take
over from another scheduler at any step (Izmailov et al., "Averaging Weights Leads to Wider Optima
and Better Generalization", UAI 2018, https://arxiv.org/abs/1803.05407). The values are torch 2.13's
``SWALR``'s, operation for operation; ``swa_lr`` is stored in each param group, and the state_dict
(``_anneal_strategy``, ``anneal_epochs`` and the base class's entries) interchanges with torch's.
"""

from __future__ import annotations

import math
from typing import Any

from torchstep.optim.lr_scheduler import LRScheduler
from torchstep.schedules.adapters.base import check_optimizer, format_param

__all__ = ["SWALR"]


def _cosine(t: float) -> float:
    return (1 - math.cos(math.pi * t)) / 2


def _linear(t: float) -> float:
    return t


ANNEAL_FUNCTIONS = {"cos": _cosine, "linear": _linear}


def _start_lr(lr: Any, swa_lr: Any, alpha: float) -> Any:
    """The lr annealing started from, given the current ``lr`` and the fraction ``alpha`` done."""
    return swa_lr if alpha == 1 else (lr - alpha * swa_lr) / (1 - alpha)


class SWALR(LRScheduler):
    """Anneal every group's lr to ``swa_lr`` (a float, or one per group) over ``anneal_epochs``
    steps with ``anneal_strategy`` ``"cos"`` or ``"linear"``, then hold it."""

    def __init__(self, optimizer: Any, swa_lr: Any, anneal_epochs: int = 10, anneal_strategy: str = "cos",
                 last_epoch: int = -1) -> None:
        check_optimizer(optimizer)
        for group, value in zip(optimizer.param_groups, format_param("swa_lr", optimizer, swa_lr)):
            group["swa_lr"] = value
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}"
            )
        if not isinstance(anneal_epochs, int) or anneal_epochs < 0:
            raise ValueError(
                f"anneal_epochs must be equal or greater than 0, got {anneal_epochs} "
                f"(anneal_epochs must be an int >= 0)"
            )
        self._anneal_strategy = anneal_strategy
        self.anneal_epochs = anneal_epochs
        super().__init__(optimizer, last_epoch)

    @property
    def anneal_func(self):
        """:math:`a(t)` of the docstring for this scheduler's ``anneal_strategy``."""
        return ANNEAL_FUNCTIONS[self._anneal_strategy]

    def _alpha(self, step: int) -> float:
        return self.anneal_func(max(0, min(1, step / max(1, self.anneal_epochs))))

    def get_lr(self) -> list[Any]:
        """The lrs after this step (use ``get_last_lr()`` to read the current ones)."""
        self._warn_if_not_stepping()
        step = self._step_count - 1
        if self.anneal_epochs == 0:
            step = max(1, step)
        before, now = self._alpha(step - 1), self._alpha(step)
        return [
            group["swa_lr"] * now + _start_lr(group["lr"], group["swa_lr"], before) * (1 - now)
            for group in self.optimizer.param_groups
        ]
