r"""Adadelta: step sizes from the ratio of running RMS of updates to running RMS of gradients.

With gradient :math:`g_t` (after ``maximize`` and L2 ``weight_decay``), ``lr`` :math:`\gamma`,
``rho`` :math:`\rho`, ``eps`` :math:`\epsilon`:

.. math::
    v_t = \rho v_{t-1} + (1-\rho) g_t^2 \qquad
    \Delta_t = \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t

    u_t = \rho u_{t-1} + (1-\rho)\Delta_t^2 \qquad \theta_t = \theta_{t-1} - \gamma \Delta_t

State: ``step``, ``square_avg`` (:math:`v`), ``acc_delta`` (:math:`u`). Dense gradients only.
Reference: Zeiler, "ADADELTA: An Adaptive Learning Rate Method" (2012).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import check
from ..core.algorithm import Algorithm
from ..core.optimizer import Optimizer
from ..core.wrappers import add_, addcmul_, squeeze_scalar
from ._common import LOAD_FLAGS, lr_checks, weight_decay_checks


def state_names(group: dict) -> tuple[str, ...]:
    return ("square_avg", "acc_delta")


def scalars(group: dict, step: Any, first: bool) -> dict:
    return {"lr": squeeze_scalar(group["lr"]), "rho": group["rho"], "eps": group["eps"]}


def update(p, g, square_avg, acc_delta, *, lr, rho, eps) -> None:
    """The Adadelta accumulator updates and parameter step (see module docstring)."""
    addcmul_(square_avg.mul_(rho), g, g, value=1 - rho)
    std = (square_avg + eps).sqrt()
    delta = (acc_delta + eps).sqrt() / std * g
    addcmul_(acc_delta.mul_(rho), delta, delta, value=1 - rho)
    add_(p, delta, alpha=-lr)


ADADELTA_ALGORITHM = Algorithm(
    name="adadelta", nonnegative_state=("square_avg", "acc_delta"), state_names=state_names, scalars=scalars, update=update,
    sparse_error="Adadelta does not support sparse gradients",
)


class Adadelta(Optimizer):
    """Adadelta; see :mod:`torchstep.algorithms.adadelta`."""

    _load_defaults = dict(LOAD_FLAGS)  # what torch's __setstate__ fills in
    _step_paths = check.StepPaths(foreach="always")  # torch checks these flags at the step

    algorithm = ADADELTA_ALGORITHM

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        lr_checks(lr)
        check.in_range(rho, "rho", "rho value", 0.0, 1.0)
        check.alpha_number(rho, "rho", booleans_refused=False)  # torch: value=1 - rho at the step
        check.at_least(eps, "eps", "epsilon value")
        weight_decay_checks(weight_decay)
        defaults = dict(
            lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize, capturable=capturable,
            foreach=foreach, differentiable=differentiable,
        )
        super().__init__(params, defaults)
