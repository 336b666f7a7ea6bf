r"""Adagrad: per-coordinate step sizes from the running sum of squared gradients.

With gradient :math:`g_t` (after ``maximize`` and L2 ``weight_decay``), ``lr`` :math:`\gamma`,
``lr_decay`` :math:`\eta`, ``eps`` :math:`\epsilon`, ``initial_accumulator_value`` :math:`s_0`:

.. math::
    \tilde\gamma_t = \frac{\gamma}{1 + (t-1)\eta} \qquad s_t = s_{t-1} + g_t^2 \qquad
    \theta_t = \theta_{t-1} - \tilde\gamma_t \frac{g_t}{\sqrt{s_t} + \epsilon}

State: ``step``, ``sum`` (:math:`s`), created when the optimizer is built (as torch does), and
for a group added later at its first step; as in torch, :math:`s_0` is always the constructor's
``initial_accumulator_value`` (a value given in a group is kept in the group but not used).
Sparse gradients are accepted (only the touched rows are updated) but not with weight decay.
Reference: Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and
Stochastic Optimization" (JMLR 2011).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import check
from ..core.algorithm import Algorithm
from ..core.optimizer import Optimizer
from ..core.state import new_step_tensor
from ..core.wrappers import addcdiv_, squeeze_scalar
from ._common import lr_checks, weight_decay_checks


def state_names(group: dict) -> tuple[str, ...]:
    return ("sum",)


def init(p: torch.Tensor, group: dict) -> dict[str, torch.Tensor]:
    v = group["initial_accumulator_value"]
    fill = complex(v, v) if torch.is_complex(p) else v
    return {"sum": torch.full_like(p, fill, memory_format=torch.preserve_format)}


def scalars(group: dict, step: Any, first: bool) -> dict:
    return {"clr": squeeze_scalar(group["lr"]) / (1 + (step - 1) * group["lr_decay"]), "eps": group["eps"]}


def update(p, g, sum, *, clr, eps) -> None:  # noqa: A002 - torch's state key is "sum"
    """``s <- s + g^2``; ``p <- p - clr * g / (sqrt(s) + eps)``."""
    sum.addcmul_(g, g, value=1)
    std = sum.sqrt() + eps
    addcdiv_(p, g, std, value=-clr)


def sparse_update(p, g, sum, *, clr, eps) -> None:  # noqa: A002
    """The same update restricted to the rows a sparse gradient touches."""
    g = g.coalesce()
    idx, vals = g._indices(), g._values()
    sum.add_(torch.sparse_coo_tensor(idx, vals.pow(2), g.size(), check_invariants=False))
    std_vals = sum.sparse_mask(g)._values().sqrt() + eps
    p.add_(torch.sparse_coo_tensor(idx, vals / std_vals, g.size(), check_invariants=False), alpha=-clr)


ADAGRAD_ALGORITHM = Algorithm(
    name="adagrad", nonnegative_state=("sum",), state_names=state_names, scalars=scalars, update=update, init=init,
    sparse_update=sparse_update, sparse_weight_decay=False,
    lazy_state=True,  # the accumulator is created at the first step (torch: at construction)
)


class Adagrad(Optimizer):
    """Adagrad; see :mod:`torchstep.algorithms.adagrad`."""

    _load_defaults = {"foreach": None, "maximize": False, "differentiable": False, "fused": None}  # what torch's __setstate__ fills in
    _step_paths = check.StepPaths(foreach="always", fused="adagrad", foreach_lr_number=True)  # torch checks these flags at the step

    algorithm = ADAGRAD_ALGORITHM

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        lr_checks(lr)
        check.at_least(lr_decay, "lr_decay", "lr_decay value")
        check.alpha_number(lr_decay, "lr_decay", booleans_refused=False)
        weight_decay_checks(weight_decay)
        check.at_least(initial_accumulator_value, "initial_accumulator_value", "initial_accumulator_value value")
        check.at_least(eps, "eps", "epsilon value")
        defaults = dict(
            lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, foreach=foreach, maximize=maximize,
            differentiable=differentiable, fused=fused,
        )
        super().__init__(params, defaults)
        check.exclusive_flags(fused=fused, foreach=foreach, differentiable=differentiable)
        # torch fills every accumulator with the constructor's initial_accumulator_value, here
        # and when it creates one at a step; a group's own value is kept but never used
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["step"] = new_step_tensor(p, group)
                state.update(init(p, self._backend_group(group)))

    def _backend_group(self, group: dict) -> dict:
        value = self.defaults["initial_accumulator_value"]
        own = group.get("initial_accumulator_value", value)
        if own is value or (isinstance(own, (int, float)) and own == value):
            return group
        return {**group, "initial_accumulator_value": value}
