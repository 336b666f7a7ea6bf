r"""RAdam: Adam with the variance of the adaptive learning rate rectified.

With gradient :math:`g_t` (after ``maximize`` and weight decay), ``lr`` :math:`\gamma`,
``betas`` :math:`(\beta_1, \beta_2)`, ``eps`` :math:`\epsilon`:

.. math::
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2
    \qquad \hat m_t = m_t / (1-\beta_1^t)

    \rho_\infty = \frac{2}{1-\beta_2} - 1 \qquad
    \rho_t = \rho_\infty - \frac{2t\beta_2^t}{1-\beta_2^t}

    r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}
    \qquad l_t = \frac{\sqrt{1-\beta_2^t}}{\sqrt{v_t} + \epsilon}

    \theta_t = \theta_{t-1} - \gamma\,\hat m_t\, l_t\, r_t \text{ if } \rho_t > 5,
    \text{ else } \theta_t = \theta_{t-1} - \gamma\,\hat m_t

Weight decay :math:`\lambda`: L2 (:math:`g_t \leftarrow g_t + \lambda\theta_{t-1}`) by default;
with ``decoupled_weight_decay=True`` :math:`\theta_{t-1} \leftarrow (1-\gamma\lambda)\theta_{t-1}`.
Whether the step is rectified (:math:`\rho_t > 5`) depends on the step only, so it is a scalar.

State: ``step``, ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`). Dense gradients only.
Reference: Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond" (ICLR 2020).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import check
from ..core.algorithm import Algorithm
from ..core.optimizer import Optimizer
from ._common import LOAD_FLAGS
from ..core.wrappers import addcmul_, squeeze_scalar
from .adamax import adam_like_checks


def state_names(group: dict) -> tuple[str, ...]:
    return ("exp_avg", "exp_avg_sq")


def scalars(group: dict, step: Any, first: bool) -> dict:
    beta1, beta2 = group["betas"]
    bias_correction2 = 1 - beta2**step
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2
    rectified = rho_t > 5.0
    rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5 if rectified else 1.0
    return {
        "lr": squeeze_scalar(group["lr"]),
        "beta1": beta1,
        "beta2": beta2,
        "eps": group["eps"],
        "bias_correction1": 1 - beta1**step,
        "bias_correction2_sqrt": bias_correction2**0.5,
        "rectified": rectified,
        "rect": rect,
    }


def update(p, g, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, bias_correction1, bias_correction2_sqrt, rectified,
           rect) -> None:
    """The moment updates and the (rectified) step (see module docstring)."""
    exp_avg.lerp_(g, 1 - beta1)
    addcmul_(exp_avg_sq.mul_(beta2), g, g, value=1 - beta2)
    step = exp_avg / bias_correction1 * lr
    if rectified:
        step = step * (bias_correction2_sqrt / (exp_avg_sq.sqrt() + eps)) * rect
    p.add_(step, alpha=-1.0)


RADAM_ALGORITHM = Algorithm(
    name="radam", nonnegative_state=("exp_avg_sq",), state_names=state_names, scalars=scalars, update=update,
    sparse_error="RAdam does not support sparse gradients",
)


class RAdam(Optimizer):
    """RAdam; see :mod:`torchstep.algorithms.radam`."""

    _load_defaults = {**LOAD_FLAGS, "decoupled_weight_decay": False}  # what torch's __setstate__ fills in
    _step_paths = check.StepPaths(foreach="with_grads")  # torch checks these flags at the step

    algorithm = RADAM_ALGORITHM

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        adam_like_checks(lr, betas, eps, weight_decay, decoupled_weight_decay)
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize, foreach=foreach,
            capturable=capturable, decoupled_weight_decay=decoupled_weight_decay, differentiable=differentiable,
        )
        super().__init__(params, defaults)
