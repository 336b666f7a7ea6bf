r"""AdEMAMix: Adam with a second, slow momentum mixed into the numerator.

With gradient :math:`g_t` (after ``maximize``), ``lr`` :math:`\gamma`, ``betas``
:math:`(\beta_1, \beta_2, \beta_3)`, ``alpha`` :math:`\alpha`, ``eps`` :math:`\epsilon`,
``weight_decay`` :math:`\lambda`:

.. math::
    m^{(1)}_t = \beta_1 m^{(1)}_{t-1} + (1-\beta_1) g_t \qquad
    m^{(2)}_t = \beta_3(t)\, m^{(2)}_{t-1} + (1-\beta_3(t))\, g_t \qquad
    v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

    \theta_t = (1-\gamma\lambda)\,\theta_{t-1} - \gamma\,
      \frac{m^{(1)}_t / (1-\beta_1^t) + \alpha(t)\, m^{(2)}_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon}

The slow momentum :math:`m^{(2)}` (half-life of thousands of steps at :math:`\beta_3 = 0.9999`)
is not bias-corrected. Its weight and rate warm up: with ``alpha_warmup`` :math:`T_\alpha`,
:math:`\alpha(t) = \alpha\, t / T_\alpha` for :math:`t < T_\alpha`; with ``beta3_warmup``
:math:`T_3` and :math:`a = t/T_3`, for :math:`t < T_3`

.. math::
    \beta_3(t) = \exp\!\left(\frac{\ln\beta_1 \ln\beta_3}{(1-a)\ln\beta_3 + a\ln\beta_1}\right),

which moves the half-life :math:`\ln\tfrac12 / \ln\beta` linearly from :math:`\beta_1`'s to
:math:`\beta_3`'s (``None``: no warmup; afterwards :math:`\alpha`, :math:`\beta_3`). The authors'
code computes the same interpolation with :math:`\ln(\beta + 10^{-8})`; torchstep uses the
paper's exact form, which differs from it during the warmup by about :math:`10^{-6}` relative in
:math:`\beta_3(t)` for :math:`\beta_3 = 0.9999` (the :math:`10^{-8}` moves
:math:`\ln\beta_3 \approx -10^{-4}` by :math:`10^{-4}` relative). Weight decay is decoupled, as in the authors' code (which
folds it into the step: same math, other rounding). The authors' defaults: ``lr=1e-3,
betas=(0.9, 0.999, 0.9999), alpha=2.0, eps=1e-8``, no warmups (the paper's language-model runs use a
larger :math:`\alpha`, 5 to 8, with both warmups spanning the whole run).

State: ``step``, ``exp_avg`` (:math:`m^{(1)}`), ``exp_avg_sq`` (:math:`v`), ``exp_avg_slow``
(:math:`m^{(2)}`). ``cautious=True``: see :mod:`torchstep.backends.cautious`; it masks the whole
step, slow term included (``pytorch-optimizer`` masks only the fast term). Dense gradients.
Reference: Pagliardini, Ablin, Grangier, "The AdEMAMix Optimizer: Better, Faster, Older"
(ICLR 2025), arXiv:2409.03137.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..core import check
from ..core.algorithm import Algorithm
from ..core.optimizer import Optimizer
from ..core.wrappers import squeeze_scalar
from ._common import lr_checks


def _log(beta: float) -> float:
    return math.log(beta) if beta > 0 else -math.inf


def alpha_at(step: float, alpha: float, warmup: int | None) -> float:
    """:math:`\\alpha(t)`: linear from 0 over ``warmup`` steps."""
    return alpha if warmup is None or step >= warmup else step * alpha / warmup


def beta3_at(step: float, beta1: float, beta3: float, warmup: int | None) -> float:
    """:math:`\\beta_3(t)`: half-life linear from ``beta1``'s to ``beta3``'s over ``warmup`` steps."""
    if warmup is None or step >= warmup:
        return beta3
    a = step / warmup
    inverse_log = (1 - a) / _log(beta1) + a / _log(beta3)  # 1/ln(beta3(t)) is linear in a
    return math.exp(1 / inverse_log) if inverse_log != 0 else 0.0


def scalars(group: dict, step: Any, first: bool) -> dict:
    beta1, beta2, beta3 = group["betas"]
    return {
        "lr": squeeze_scalar(group["lr"]), "beta1": beta1, "beta2": beta2, "eps": group["eps"],
        "beta3": beta3_at(step, beta1, beta3, group["beta3_warmup"]),
        "alpha": alpha_at(step, group["alpha"], group["alpha_warmup"]),
        "bias_correction1": 1 - beta1**step, "bias_correction2_sqrt": math.sqrt(1 - beta2**step),
    }


def update(p, g, exp_avg, exp_avg_sq, exp_avg_slow, *, lr, beta1, beta2, eps, beta3, alpha, bias_correction1,
           bias_correction2_sqrt) -> None:
    """The three moment updates and the mixed step (see module docstring)."""
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    exp_avg_slow.lerp_(g, 1 - beta3)
    denom = exp_avg_sq.sqrt().div(bias_correction2_sqrt).add(eps)
    mixed = exp_avg.div(bias_correction1).add(exp_avg_slow, alpha=alpha)
    p.addcdiv_(mixed, denom, value=-lr)


ADEMAMIX_ALGORITHM = Algorithm(
    name="ademamix", nonnegative_state=("exp_avg_sq",), state_names=lambda group: ("exp_avg", "exp_avg_sq", "exp_avg_slow"), scalars=scalars,
    update=update, sparse_error="AdEMAMix does not support sparse gradients",
)


class AdEMAMix(Optimizer):
    """AdEMAMix; see :mod:`torchstep.algorithms.ademamix`."""

    algorithm = ADEMAMIX_ALGORITHM

    def __init__(self, params, lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float, float, float] = (0.9, 0.999, 0.9999), alpha: float = 2.0,
                 beta3_warmup: int | None = None, alpha_warmup: int | None = None, eps: float = 1e-8,
                 weight_decay: float = 0.0, *, maximize: bool = False, foreach: bool | None = None,
                 cautious: bool = False) -> None:
        lr_checks(lr)
        check.betas_sequence(betas, 3)
        check.at_least(alpha, "alpha", "alpha value")
        check.positive_int_or_none(beta3_warmup, "beta3_warmup")
        check.positive_int_or_none(alpha_warmup, "alpha_warmup")
        check.at_least(eps, "eps", "epsilon value")
        check.at_least(weight_decay, "weight_decay", "weight_decay value")
        defaults = dict(lr=lr, betas=tuple(betas), alpha=alpha, beta3_warmup=beta3_warmup, alpha_warmup=alpha_warmup,
                        eps=eps, weight_decay=weight_decay, maximize=maximize, foreach=foreach, cautious=cautious,
                        decoupled_weight_decay=True)
        super().__init__(params, defaults)
