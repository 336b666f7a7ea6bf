r"""Adamax: Adam with the second moment replaced by an exponentially weighted infinity norm.

With gradient :math:`g_t` (after ``maximize`` and L2 ``weight_decay`` :math:`\lambda`:
:math:`g_t \leftarrow g_t + \lambda\theta_{t-1}`), ``lr`` :math:`\gamma`, ``betas``
:math:`(\beta_1, \beta_2)`, ``eps`` :math:`\epsilon`:

.. math::
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t \qquad
    u_t = \max(\beta_2 u_{t-1},\ |g_t| + \epsilon)

    \theta_t = \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\,\frac{m_t}{u_t}

State: ``step``, ``exp_avg`` (:math:`m`), ``exp_inf`` (:math:`u`). Dense gradients only.
Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization" (ICLR 2015), section 7.1.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import check
from ..core.algorithm import Algorithm
from ..core.optimizer import Optimizer
from ..core.wrappers import addcdiv_, running_max_, squeeze_scalar
from ._common import LOAD_FLAGS, lr_checks, weight_decay_checks


def state_names(group: dict) -> tuple[str, ...]:
    return ("exp_avg", "exp_inf")


def scalars(group: dict, step: Any, first: bool) -> dict:
    beta1, beta2 = group["betas"]
    return {"beta1": beta1, "beta2": beta2, "eps": group["eps"], "clr": squeeze_scalar(group["lr"]) / (1 - beta1**step)}


def update(p, g, exp_avg, exp_inf, *, beta1, beta2, eps, clr) -> None:
    """``m <- lerp(m, g, 1-beta1)``; ``u <- max(beta2*u, |g|+eps)``; ``p <- p - clr*m/u``."""
    exp_avg.lerp_(g, 1 - beta1)
    running_max_(exp_inf.mul_(beta2), g.abs().add_(eps))
    addcdiv_(p, exp_avg, exp_inf, value=-clr)


ADAMAX_ALGORITHM = Algorithm(
    name="adamax", nonnegative_state=("exp_inf",), state_names=state_names, scalars=scalars, update=update,
    sparse_error="Adamax does not support sparse gradients",
)


def adam_like_checks(lr: Any, betas: Any, eps: Any, weight_decay: Any, decoupled: Any = False) -> None:
    """The checks Adamax, NAdam and RAdam share with torch: lr, eps, betas, weight_decay."""
    lr_checks(lr)
    check.at_least(eps, "eps", "epsilon value")
    check.betas_pair(betas)
    weight_decay_checks(weight_decay, decoupled=decoupled)


class Adamax(Optimizer):
    """Adamax; see :mod:`torchstep.algorithms.adamax`."""

    _load_defaults = dict(LOAD_FLAGS)  # what torch's __setstate__ fills in
    _step_paths = check.StepPaths(foreach="always", foreach_lr_number=True)  # torch checks these flags at the step

    algorithm = ADAMAX_ALGORITHM

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
    ) -> None:
        adam_like_checks(lr, betas, eps, weight_decay)
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach, maximize=maximize,
            differentiable=differentiable, capturable=capturable,
        )
        super().__init__(params, defaults)
