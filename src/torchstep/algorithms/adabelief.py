r"""AdaBelief: Adam whose step size follows the belief in the gradient, with RAdam's rectification.

With gradient :math:`g_t` (after ``maximize`` and weight decay), ``lr`` :math:`\gamma`,
``betas`` :math:`(\beta_1, \beta_2)`, ``eps`` :math:`\epsilon`:

.. math::
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t \qquad
    s_t = \beta_2 s_{t-1} + (1-\beta_2)(g_t - m_t)^2 + \epsilon \qquad
    \hat s_t = \max(\hat s_{t-1}, s_t) \text{ if amsgrad, else } s_t

:math:`s` tracks how far the gradient strays from its prediction :math:`m` (the "belief");
:math:`\epsilon` is added into :math:`s_t` itself, as in the paper and the authors' code. Then,
with ``rectify=False``:

.. math::
    \theta_t = \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\,
               \frac{m_t}{\sqrt{\hat s_t}/\sqrt{1-\beta_2^t} + \epsilon}

and with ``rectify=True`` (default), as in RAdam, with :math:`\rho_\infty = 2/(1-\beta_2) - 1`,
:math:`\rho_t = \rho_\infty - 2t\beta_2^t/(1-\beta_2^t)`:

.. math::
    \theta_t = \theta_{t-1} - \frac{\gamma\, r_t}{1-\beta_1^t}\frac{m_t}{\sqrt{\hat s_t} + \epsilon},
    \quad r_t = \sqrt{\frac{(1-\beta_2^t)(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}
    \quad \text{if } \rho_t \ge 5;

otherwise :math:`\theta_t = \theta_{t-1} - \gamma m_t / (1-\beta_1^t)` if ``degenerated_to_sgd``
(default), else no step.

Weight decay :math:`\lambda`: decoupled (:math:`\theta \leftarrow (1-\gamma\lambda)\theta` before
the step) when ``decoupled_weight_decay=True`` (default; the authors' ``weight_decouple``), L2
(:math:`g_t \leftarrow g_t + \lambda\theta_{t-1}`) otherwise. The authors' defaults:
``lr=1e-3, betas=(0.9, 0.999), eps=1e-16``, decoupled decay, rectification, SGD fallback.

State: ``step``, ``exp_avg`` (:math:`m`), ``exp_avg_var`` (:math:`s`), ``max_exp_avg_var``
(:math:`\hat s`, amsgrad only) -- the authors' names; their checkpoints (integer ``step``) load.
Deliberate differences from ``adabelief-pytorch`` 0.2.1: with ``amsgrad=True`` the rectified
step divides by :math:`\sqrt{\hat s_t}` (the package maintains :math:`\hat s` but divides by
:math:`\sqrt{s_t}` there, so its amsgrad does nothing while rectification is on); the gradient
tensor is never modified (the package adds L2 decay into ``p.grad`` in place); options are per
group; ``fixed_decay`` and ``print_change_log`` are not offered, and nothing is printed.
``cautious=True``: see :mod:`torchstep.backends.cautious`.
Reference: Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
Gradients" (NeurIPS 2020), arXiv:2010.07468.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..core import check
from ..core.algorithm import Algorithm
from ..core.optimizer import Optimizer
from ..core.wrappers import running_max_, squeeze_scalar
from ._common import lr_checks


def state_names(group: dict) -> tuple[str, ...]:
    return ("exp_avg", "exp_avg_var", "max_exp_avg_var") if group["amsgrad"] else ("exp_avg", "exp_avg_var")


def step_rule(group: dict, step: float) -> tuple[str, float]:
    """This step's kind of update -- "adaptive", "rectified", "sgd" or "none" -- and its step size
    (including lr and the first-moment bias correction)."""
    beta1, beta2 = group["betas"]
    lr, bias_correction1 = squeeze_scalar(group["lr"]), 1 - beta1**step
    if not group["rectify"]:
        return "adaptive", lr / bias_correction1
    beta2_t = beta2**step
    rho_inf = 2 / (1 - beta2) - 1
    rho = rho_inf - 2 * step * beta2_t / (1 - beta2_t)
    if rho >= 5:
        ratio = (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
        return "rectified", math.sqrt((1 - beta2_t) * ratio) / bias_correction1 * lr
    if group["degenerated_to_sgd"]:
        return "sgd", 1 / bias_correction1 * lr
    return "none", 0.0


def scalars(group: dict, step: Any, first: bool) -> dict:
    beta1, beta2 = group["betas"]
    rule, step_size = step_rule(group, step)
    return {"beta1": beta1, "beta2": beta2, "eps": group["eps"], "rule": rule, "step_size": step_size,
            "bias_correction2_sqrt": math.sqrt(1 - beta2**step)}


def update(p, g, exp_avg, exp_avg_var, max_exp_avg_var=None, *, beta1, beta2, eps, rule, step_size,
           bias_correction2_sqrt) -> None:
    """The moment and belief updates, then the step ``rule`` picked (see module docstring)."""
    exp_avg.mul_(beta1).add_(g, alpha=1 - beta1)
    residual = g - exp_avg
    exp_avg_var.mul_(beta2).addcmul_(residual, residual, value=1 - beta2).add_(eps)
    belief = exp_avg_var
    if max_exp_avg_var is not None:
        running_max_(max_exp_avg_var, exp_avg_var)
        belief = max_exp_avg_var
    if rule == "adaptive":
        p.addcdiv_(exp_avg, belief.sqrt() / bias_correction2_sqrt + eps, value=-step_size)
    elif rule == "rectified":
        p.addcdiv_(exp_avg, belief.sqrt() + eps, value=-step_size)
    elif rule == "sgd":
        p.add_(exp_avg, alpha=-step_size)


ADABELIEF_ALGORITHM = Algorithm(
    name="adabelief", nonnegative_state=("exp_avg_var", "max_exp_avg_var"), state_names=state_names, scalars=scalars, update=update,
    sparse_error="AdaBelief does not support sparse gradients, please consider SparseAdam instead",
)


class AdaBelief(Optimizer):
    """AdaBelief; see :mod:`torchstep.algorithms.adabelief`."""

    algorithm = ADABELIEF_ALGORITHM

    def __init__(self, params, lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-16, weight_decay: float = 0, amsgrad: bool = False, *,
                 decoupled_weight_decay: bool = True, rectify: bool = True, degenerated_to_sgd: bool = True,
                 maximize: bool = False, foreach: bool | None = None, cautious: bool = False) -> None:
        lr_checks(lr)
        check.at_least(eps, "eps", "epsilon value")
        check.betas_pair(betas)
        check.at_least(weight_decay, "weight_decay", "weight_decay value")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        decoupled_weight_decay=decoupled_weight_decay, rectify=rectify,
                        degenerated_to_sgd=degenerated_to_sgd, maximize=maximize, foreach=foreach, cautious=cautious)
        super().__init__(params, defaults)
