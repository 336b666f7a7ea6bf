r"""Rprop: resilient backpropagation -- per-coordinate step sizes driven by gradient sign changes.

With gradient :math:`g_t` (after ``maximize``; Rprop takes no weight decay), ``etas``
:math:`(\eta^-, \eta^+)`, ``step_sizes`` :math:`(\Delta_{min}, \Delta_{max})`, initial step size
``lr``, and the previous (masked) gradient :math:`p_{t-1}` (:math:`p_0 = 0`):

.. math::
    s_t = \operatorname{sign}(g_t\, p_{t-1}) \qquad
    f_t = \eta^+ \text{ if } s_t > 0,\ \eta^- \text{ if } s_t < 0,\ 1 \text{ if } s_t = 0
    \quad\text{(replaced in that order, so an } \eta^\pm \text{ of 0 acts as 1)}

    \Delta_t = \operatorname{clamp}(\Delta_{t-1} f_t,\ \Delta_{min}, \Delta_{max}) \qquad
    \tilde g_t = 0 \text{ where } f_t = \eta^-, \text{ else } g_t

    \theta_t = \theta_{t-1} - \operatorname{sign}(\tilde g_t)\,\Delta_t \qquad p_t = \tilde g_t

State: ``step``, ``prev`` (:math:`p`), ``step_size`` (:math:`\Delta`, starting at ``lr``).
Dense gradients only; full-batch gradients are what the method is designed for.
Reference: Riedmiller & Braun, "A Direct Adaptive Method for Faster Backpropagation Learning: The
RPROP Algorithm" (ICNN 1993).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import check
from ..core.algorithm import Algorithm
from ..core.optimizer import Optimizer
from ..core.wrappers import squeeze_scalar
from ._common import LOAD_FLAGS, lr_checks


def state_names(group: dict) -> tuple[str, ...]:
    return ("prev", "step_size")


def init(p: torch.Tensor, group: dict) -> dict[str, torch.Tensor]:
    like = p.grad if p.grad is not None else p  # torch shapes the step sizes after the gradient
    lr = float(squeeze_scalar(group["lr"])) if torch.is_complex(p) else squeeze_scalar(group["lr"])
    fill = complex(lr, lr) if torch.is_complex(p) else lr
    return {"prev": torch.zeros_like(p, memory_format=torch.preserve_format), "step_size": torch.full_like(like, fill)}


def scalars(group: dict, step: Any, first: bool) -> dict:
    (etaminus, etaplus), (step_size_min, step_size_max) = group["etas"], group["step_sizes"]
    return {"etaminus": etaminus, "etaplus": etaplus, "step_size_min": step_size_min, "step_size_max": step_size_max}


def update(p, g, prev, step_size, *, etaminus, etaplus, step_size_min, step_size_max) -> None:
    """Sign-driven step-size adaptation and the sign step (see module docstring)."""
    sign = g.mul(prev).sign().detach()  # sign's derivative is zero: nothing for autograd to keep
    # the sign is replaced in three passes, each seeing the previous one's result, as torch does:
    # so an eta- of 0 (possible in a group, where options are not validated) ends up as 1
    factor = torch.where(sign.gt(0), etaplus, sign)
    factor = torch.where(factor.lt(0), etaminus, factor)
    factor = torch.where(factor.eq(0), 1, factor)
    step_size.mul_(factor).clamp_(step_size_min, step_size_max)
    g = torch.where(factor.eq(etaminus), 0, g)
    p.addcmul_(g.sign(), step_size, value=-1)
    prev.copy_(g)


RPROP_ALGORITHM = Algorithm(
    name="rprop", nonnegative_state=("step_size",), state_names=state_names, scalars=scalars, update=update, init=init,
    sparse_error="Rprop does not support sparse gradients",
)


def _check_etas(etas: Any) -> None:
    """``0 < etaminus < 1 < etaplus``, as torch requires."""
    shape, allowed = "a pair (etaminus, etaplus)", "0.0 < etas[0] < 1.0 < etas[1]"
    etaminus = check.item(etas, 0, "etas", shape)  # indexed, and compared, in torch's order
    ok = check.holds(lambda e: 0.0 < e < 1.0, etaminus, "etas[0]", allowed)
    etaplus = check.item(etas, 1, "etas", shape)
    if not (ok and check.holds(lambda e: 1.0 < e, etaplus, "etas[1]", allowed)):
        raise ValueError(f"Invalid eta values: {etaminus}, {etaplus} (etas must satisfy {allowed})")


class Rprop(Optimizer):
    """Rprop; see :mod:`torchstep.algorithms.rprop`."""

    _load_defaults = dict(LOAD_FLAGS)  # what torch's __setstate__ fills in
    _step_paths = check.StepPaths(foreach="with_grads")  # torch checks these flags at the step

    algorithm = RPROP_ALGORITHM

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50),
        *,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        lr_checks(lr)
        _check_etas(etas)
        defaults = dict(
            lr=lr, etas=etas, step_sizes=step_sizes, foreach=foreach, maximize=maximize,
            differentiable=differentiable, capturable=capturable,
        )
        super().__init__(params, defaults)
