r"""Stochastic gradient descent, with optional momentum, dampening and Nesterov momentum.

With gradient :math:`g_t` (after ``maximize`` and L2 ``weight_decay`` :math:`\lambda`:
:math:`g_t \leftarrow g_t + \lambda\theta_{t-1}`), ``lr`` :math:`\gamma`, ``momentum`` :math:`\mu`,
``dampening`` :math:`\tau`:

.. math::
    b_1 = g_1, \qquad b_t = \mu b_{t-1} + (1-\tau) g_t \quad (t > 1)

    d_t = g_t + \mu b_t \text{ if nesterov, else } b_t \quad (d_t = g_t \text{ when } \mu = 0)

    \theta_t = \theta_{t-1} - \gamma d_t

State: ``momentum_buffer`` (:math:`b`), only when ``momentum != 0``. Sparse gradients are accepted;
the buffer then is sparse too, as in torch (weight decay with a sparse gradient is an error there
and here: a sparse plus a dense tensor).
Reference: Sutskever et al., "On the importance of initialization and momentum in deep learning"
(ICML 2013) for the momentum form used here.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import check
from ..core.algorithm import Algorithm
from ..core.optimizer import Optimizer
from ..core.wrappers import add, add_, squeeze_scalar
from ._common import lr_checks, weight_decay_checks


def state_names(group: dict) -> tuple[str, ...]:
    return ("momentum_buffer",) if group["momentum"] != 0 else ()


def scalars(group: dict, step: Any, first: bool) -> dict:
    """The first step copies the gradient into the buffer: decay 0, gain 1."""
    momentum = group["momentum"]
    return {
        "lr": squeeze_scalar(group["lr"]),
        "momentum": momentum,
        "decay": 0.0 if first else momentum,
        # dampening is read only where there is a buffer to damp (torch accepts any value otherwise)
        "gain": 1.0 if first or momentum == 0 else 1.0 - group["dampening"],
        "nesterov": bool(group["nesterov"]),  # read for its truth, as torch's `if nesterov:`
    }


def update(p, g, momentum_buffer=None, *, lr, momentum, decay, gain, nesterov) -> None:
    """``b <- decay*b + gain*g``; ``d = g + momentum*b`` (nesterov) or ``b``; ``p <- p - lr*d``."""
    if momentum_buffer is not None:
        add_(momentum_buffer.mul_(decay), g, alpha=gain)
        g = add(g, momentum_buffer, alpha=momentum) if nesterov else momentum_buffer
    add_(p, g, alpha=-lr)


def init(p: torch.Tensor, group: dict) -> dict[str, torch.Tensor]:
    """The buffer starts as zeros shaped like ``p`` -- sparse (no entries) when the gradient that
    first fills it is sparse: the first step adds the gradient to it, so it holds a copy of that
    gradient in the gradient's layout, as torch's buffer does."""
    if group["momentum"] == 0:
        return {}
    g = p.grad
    if g is not None and g.is_sparse:
        empty = torch.sparse_coo_tensor(
            torch.empty(g.sparse_dim(), 0, dtype=torch.int64, device=g.device),
            torch.empty((0, *g.shape[g.sparse_dim():]), dtype=g.dtype, device=g.device),
            g.shape,
        )
        return {"momentum_buffer": empty}
    return {"momentum_buffer": torch.zeros_like(p, memory_format=torch.preserve_format)}


def sparse_update(p, g, momentum_buffer=None, **scalars) -> None:
    """A sparse gradient, applied as a sparse tensor; a sparse buffer (see ``init``) stays sparse
    and accumulates the gradients' entries, as in torch (a dense buffer stays dense)."""
    update(p, g, momentum_buffer, **scalars)


SGD_ALGORITHM = Algorithm(
    name="sgd", state_names=state_names, scalars=scalars, update=update, init=init, counts_steps=False,
    lazy_state=True,
    sparse_update=sparse_update,
)


class SGD(Optimizer):
    """Stochastic gradient descent (optionally with momentum); see :mod:`torchstep.algorithms.sgd`."""

    _load_defaults = {"nesterov": False, "maximize": False, "foreach": None, "differentiable": False, "fused": False}  # what torch's __setstate__ fills in
    _step_paths = check.StepPaths(fused="sgd")  # torch checks these flags at the step

    algorithm = SGD_ALGORITHM

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | torch.Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        lr_checks(lr, nan_ok=True)
        check.not_below(momentum, "momentum", "momentum value")
        weight_decay_checks(weight_decay, nan_ok=True)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                "Nesterov momentum requires a momentum and zero dampening "
                f"(got momentum={momentum}, dampening={dampening}; need momentum > 0 and dampening == 0)"
            )
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
            maximize=maximize, foreach=foreach, differentiable=differentiable, fused=fused,
        )
        super().__init__(params, defaults)
        check.exclusive_flags(fused=fused, foreach=foreach, differentiable=differentiable)
