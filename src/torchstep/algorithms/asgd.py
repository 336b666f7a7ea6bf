r"""ASGD: averaged stochastic gradient descent.

With gradient :math:`g_t` (after ``maximize`` and L2 ``weight_decay``), ``lr`` :math:`\gamma`,
``lambd`` :math:`\lambda`, ``alpha`` :math:`\alpha`, ``t0`` :math:`t_0`, and the per-parameter
step size :math:`\eta` and averaging rate :math:`\mu` (:math:`\eta_1 = \gamma`, :math:`\mu_1 = 1`):

.. math::
    \theta_t = (1 - \lambda\eta_t)\,\theta_{t-1} - \eta_t g_t

    \bar\theta_t = \theta_t \text{ if } \mu_t = 1, \text{ else }
    \bar\theta_t = \bar\theta_{t-1} + \mu_t(\theta_t - \bar\theta_{t-1})

    \eta_{t+1} = \frac{\gamma}{(1 + \lambda\gamma t)^\alpha} \qquad
    \mu_{t+1} = \frac{1}{\max(1,\ t - t_0)}

State: ``step``, ``eta`` (:math:`\eta`), ``mu`` (:math:`\mu`), ``ax`` (:math:`\bar\theta`, the
running average of the parameter). ``step``, ``eta`` and ``mu`` are 0-d tensors on the
parameter's device; ``eta`` and ``mu`` are advanced per parameter by ``advance`` (``eta`` lags the
lr by one step, so it is history, not a function of the step). Dense gradients only.
Reference: Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging" (SIAM J.
Control Optim. 1992); Xu, "Towards Optimal One Pass Large Scale Learning with Averaged
Stochastic Gradient Descent" (2011) for the step-size schedule.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import check
from ..core.algorithm import Algorithm
from ..core.optimizer import Optimizer
from ..core.state import upgrade_scalar_state
from ..core.wrappers import add_, squeeze_scalar
from ._common import LOAD_FLAGS, lr_checks, weight_decay_checks


def state_names(group: dict) -> tuple[str, ...]:
    return ("eta", "mu", "ax")


def init(p: torch.Tensor, group: dict) -> dict[str, torch.Tensor]:
    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    return {
        "step": torch.zeros((), device=p.device, dtype=dtype),
        "eta": torch.as_tensor(squeeze_scalar(group["lr"]), device=p.device, dtype=dtype).clone().detach(),
        "mu": torch.ones((), device=p.device, dtype=dtype),
        "ax": torch.zeros_like(p, memory_format=torch.preserve_format),
    }


def scalars(group: dict, step: Any, first: bool) -> dict:
    lr, lambd = squeeze_scalar(group["lr"]), group["lambd"]
    return {
        "lambd": lambd,
        "next_eta": lr / ((1 + lambd * lr * step) ** group["alpha"]),
        "next_mu": 1 / max(1, step - group["t0"]),
    }


def advance(scalars: dict, eta: torch.Tensor, mu: torch.Tensor) -> dict:
    """This step's ``eta`` and ``mu``; the state moves on to the next step's."""
    now = {"eta": eta.item(), "mu": mu.item()}
    eta.copy_(torch.as_tensor(scalars["next_eta"]))
    mu.copy_(torch.as_tensor(scalars["next_mu"]))
    return {**now, "reset_average": now["mu"] == 1}


def update(p, g, ax, *, lambd, next_eta, next_mu, eta, mu, reset_average) -> None:
    """Decay and step ``p``; move the average ``ax`` toward it (or restart it at ``p``)."""
    p.mul_(1 - lambd * eta)
    add_(p, g, alpha=-eta)
    if reset_average:
        ax.copy_(p)
    else:
        ax.add_(p.sub(ax).mul_(mu))


ASGD_ALGORITHM = Algorithm(
    name="asgd", exact_state=("ax",), state_names=state_names, scalars=scalars, update=update, init=init,
    scalar_state=("eta", "mu"), advance=advance, sparse_error="ASGD does not support sparse gradients",
)


class ASGD(Optimizer):
    """Averaged SGD; the average is ``optimizer.state[p]["ax"]``. See :mod:`torchstep.algorithms.asgd`."""

    _load_defaults = dict(LOAD_FLAGS)  # what torch's __setstate__ fills in
    _step_paths = check.StepPaths(foreach="with_grads")  # torch checks these flags at the step

    algorithm = ASGD_ALGORITHM

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-2,
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
    ) -> None:
        lr_checks(lr)
        weight_decay_checks(weight_decay)
        defaults = dict(
            lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay, foreach=foreach, maximize=maximize,
            differentiable=differentiable, capturable=capturable,
        )
        super().__init__(params, defaults)

    def _upgrade_loaded_state(self) -> None:
        super()._upgrade_loaded_state()
        upgrade_scalar_state(self)
