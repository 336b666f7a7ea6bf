r"""RMSprop, optionally centered and with momentum.

With gradient :math:`g_t` (after ``maximize`` and L2 ``weight_decay``), ``lr`` :math:`\gamma`,
``alpha`` :math:`\alpha`, ``eps`` :math:`\epsilon`, ``momentum`` :math:`\mu`:

.. math::
    v_t = \alpha v_{t-1} + (1-\alpha) g_t^2

    \bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g_t, \quad
    \tilde v_t = v_t - \bar g_t^2 \text{ if centered, else } \tilde v_t = v_t

    b_t = \mu b_{t-1} + \frac{g_t}{\sqrt{\tilde v_t} + \epsilon}, \quad
    \theta_t = \theta_{t-1} - \gamma b_t \quad (\mu > 0)

    \theta_t = \theta_{t-1} - \gamma \frac{g_t}{\sqrt{\tilde v_t} + \epsilon} \quad (\mu = 0)

State: ``step``, ``square_avg`` (:math:`v`), ``momentum_buffer`` (:math:`b`, momentum > 0),
``grad_avg`` (:math:`\bar g`, centered). Dense gradients only.
Reference: Hinton, Neural Networks for Machine Learning, lecture 6e (2012); centered form from
Graves, "Generating Sequences With Recurrent Neural Networks" (2013).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import check
from ..core.algorithm import Algorithm
from ..core.optimizer import Optimizer
from ..core.wrappers import add_, addcdiv_, addcmul_, squeeze_scalar
from ._common import LOAD_FLAGS, lr_checks, weight_decay_checks


def state_names(group: dict) -> tuple[str, ...]:
    names = ("square_avg",)
    if group["momentum"] > 0:
        names += ("momentum_buffer",)
    if group["centered"]:
        names += ("grad_avg",)
    return names


def scalars(group: dict, step: Any, first: bool) -> dict:
    return {"lr": squeeze_scalar(group["lr"]), "alpha": group["alpha"], "eps": group["eps"], "momentum": group["momentum"]}


def update(p, g, square_avg, momentum_buffer=None, grad_avg=None, *, lr, alpha, eps, momentum) -> None:
    """The RMSprop update (see module docstring)."""
    addcmul_(square_avg.mul_(alpha), g, g, value=1 - alpha)
    if grad_avg is not None:
        grad_avg.lerp_(g, 1 - alpha)
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt()
    else:
        avg = square_avg.sqrt()
    avg = avg + eps
    if momentum_buffer is not None:
        momentum_buffer.mul_(momentum).addcdiv_(g, avg)
        add_(p, momentum_buffer, alpha=-lr)
    else:
        addcdiv_(p, g, avg, value=-lr)


RMSPROP_ALGORITHM = Algorithm(
    name="rmsprop", nonnegative_state=("square_avg",), state_names=state_names, scalars=scalars, update=update,
    sparse_error="RMSprop does not support sparse gradients",
)


class RMSprop(Optimizer):
    """RMSprop; see :mod:`torchstep.algorithms.rmsprop`."""

    _load_defaults = {**LOAD_FLAGS, "momentum": 0, "centered": False}  # what torch's __setstate__ fills in
    _step_paths = check.StepPaths(foreach="with_grads")  # torch checks these flags at the step

    algorithm = RMSPROP_ALGORITHM

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        lr_checks(lr)
        check.at_least(eps, "eps", "epsilon value")
        check.at_least(momentum, "momentum", "momentum value")
        weight_decay_checks(weight_decay)
        check.at_least(alpha, "alpha", "alpha value")
        check.alpha_number(alpha, "alpha", booleans_refused=False)  # torch: value=1 - alpha at the step
        defaults = dict(
            lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered, weight_decay=weight_decay,
            capturable=capturable, foreach=foreach, maximize=maximize, differentiable=differentiable,
        )
        super().__init__(params, defaults)
