r"""NAdam: Adam with Nesterov momentum and a momentum schedule.

With gradient :math:`g_t` (after ``maximize`` and weight decay), ``lr`` :math:`\gamma`,
``betas`` :math:`(\beta_1, \beta_2)`, ``eps`` :math:`\epsilon`, ``momentum_decay`` :math:`\psi`:

.. math::
    \mu_t = \beta_1\left(1 - \tfrac12\, 0.96^{t\psi}\right) \qquad
    \Pi_t = \prod_{i\le t} \mu_i \qquad \Pi_{t+1} = \Pi_t\, \mu_{t+1}

    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2
    \qquad d_t = \sqrt{v_t / (1-\beta_2^t)} + \epsilon

    \theta_t = \theta_{t-1} - \frac{\gamma(1-\mu_t)}{1-\Pi_t}\frac{g_t}{d_t}
                            - \frac{\gamma\mu_{t+1}}{1-\Pi_{t+1}}\frac{m_t}{d_t}

Weight decay :math:`\lambda`: L2 (:math:`g_t \leftarrow g_t + \lambda\theta_{t-1}`) by default;
with ``decoupled_weight_decay=True`` :math:`\theta_{t-1} \leftarrow (1-\gamma\lambda)\theta_{t-1}`.

State: ``step``, ``mu_product`` (:math:`\Pi_t`, a 0-d tensor laid out like ``step``, advanced per
parameter by ``advance``: it is history, not a function of the step, once ``betas`` or
``momentum_decay`` change in training; it is multiplied in its own dtype, as torch does),
``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`). Dense gradients only.
Reference: Dozat, "Incorporating Nesterov Momentum into Adam" (ICLR 2016 workshop).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import check
from ..core.algorithm import Algorithm
from ..core.optimizer import Optimizer
from ..core.state import new_step_tensor, upgrade_scalar_state
from ..core.wrappers import addcdiv_, addcmul_, squeeze_scalar
from ._common import LOAD_FLAGS
from .adamax import adam_like_checks


def state_names(group: dict) -> tuple[str, ...]:
    return ("mu_product", "exp_avg", "exp_avg_sq")


def init(p: torch.Tensor, group: dict) -> dict[str, torch.Tensor]:
    zeros = {n: torch.zeros_like(p, memory_format=torch.preserve_format) for n in ("exp_avg", "exp_avg_sq")}
    return {"mu_product": new_step_tensor(p, group, 1.0), **zeros}


def _momentum(beta1: float, t: float, momentum_decay: float) -> float:
    return beta1 * (1.0 - 0.5 * (0.96 ** (t * momentum_decay)))


def scalars(group: dict, step: Any, first: bool) -> dict:
    beta1, beta2 = group["betas"]
    return {
        "lr": squeeze_scalar(group["lr"]),
        "beta1": beta1,
        "beta2": beta2,
        "eps": group["eps"],
        "bias_correction2": 1 - beta2**step,
        "mu": _momentum(beta1, step, group["momentum_decay"]),
        "mu_next": _momentum(beta1, step + 1, group["momentum_decay"]),
    }


def advance(scalars: dict, mu_product: torch.Tensor) -> dict:
    """``mu_product <- mu_product * mu``; the coefficients of ``g`` and ``m`` in the step."""
    lr, mu, mu_next = scalars["lr"], scalars["mu"], scalars["mu_next"]
    mu_product.mul_(mu)
    # a number (double precision, as torch's default path), unless a differentiable step must
    # carry mu_product's gradient on (torch's differentiable path keeps it a tensor too)
    product = mu_product if mu_product.requires_grad and torch.is_grad_enabled() else mu_product.item()
    return {
        "grad_coef": -lr * (1.0 - mu) / (1.0 - product),
        "avg_coef": (-lr * mu_next) / (1.0 - product * mu_next),
    }


def update(p, g, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, bias_correction2, mu, mu_next, grad_coef,
           avg_coef) -> None:
    """The moment updates and the two-term Nesterov step (see module docstring)."""
    exp_avg.lerp_(g, 1 - beta1)
    addcmul_(exp_avg_sq.mul_(beta2), g, g, value=1 - beta2)
    denom = exp_avg_sq.div(bias_correction2).sqrt() + eps
    addcdiv_(p, g, denom, value=grad_coef)
    addcdiv_(p, exp_avg, denom, value=avg_coef)


NADAM_ALGORITHM = Algorithm(
    name="nadam", nonnegative_state=("exp_avg_sq",), state_names=state_names, scalars=scalars, update=update, init=init,
    scalar_state=("mu_product",), advance=advance, sparse_error="NAdam does not support sparse gradients",
)


class NAdam(Optimizer):
    """NAdam; see :mod:`torchstep.algorithms.nadam`."""

    _load_defaults = {**LOAD_FLAGS, "decoupled_weight_decay": False}  # what torch's __setstate__ fills in
    _step_paths = check.StepPaths(foreach="with_grads", foreach_lr_number=True)  # torch checks these flags at the step

    algorithm = NADAM_ALGORITHM

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        adam_like_checks(lr, betas, eps, weight_decay, decoupled_weight_decay)
        check.at_least(momentum_decay, "momentum_decay", "momentum_decay value")
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
            decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, foreach=foreach,
            capturable=capturable, differentiable=differentiable,
        )
        super().__init__(params, defaults)

    def _upgrade_loaded_state(self) -> None:
        super()._upgrade_loaded_state()
        upgrade_scalar_state(self)
