r"""LARS: momentum SGD whose step is scaled, tensor by tensor, by a trust ratio.

With gradient :math:`g_t` (negated for ``maximize``), ``lr`` :math:`\gamma`, ``momentum``
:math:`\mu`, ``dampening`` :math:`\tau`, ``weight_decay`` :math:`\lambda` and
``trust_coefficient`` :math:`\eta`, for each parameter tensor :math:`\theta`:

.. math::
    \rho_t = \frac{\eta\,\lVert\theta_{t-1}\rVert}{\lVert g_t\rVert + \lambda\lVert\theta_{t-1}\rVert}
    \ (\rho_t = 1 \text{ if } \lVert\theta_{t-1}\rVert = 0 \text{ or the denominator is } 0)
    \qquad u_t = \rho_t\,(g_t + \lambda\theta_{t-1})

    b_t = \mu b_{t-1} + (1-\tau) u_t \ (b_0 = 0) \qquad
    \theta_t = \theta_{t-1} - \gamma\,(u_t + \mu b_t \text{ if nesterov, else } b_t)

With ``momentum=0`` the step is :math:`\theta_t = \theta_{t-1} - \gamma u_t` and no buffer is kept.
Excluding tensors (biases, norm layers) is a matter of parameter groups:
``{"params": ..., "trust_ratio": False, "weight_decay": 0.0}`` makes that group plain momentum SGD
(:math:`\rho_t = 1`) without decay -- what pytorch-optimizer's LARS does for every tensor of one
dimension or less, and the paper recommends for biases and batch-norm parameters.

Not element-wise: the ratio needs the norms of each tensor and its gradient before the update.
``lars_update`` is the tensor-by-tensor definition (the reference path); the fused path
(:mod:`torchstep.backends.staged`) runs one pass summing the squares of :math:`\theta` and
:math:`g_t` per tensor, computes :math:`\rho_t` per tensor, then one pass of the same
element-wise pieces (``lars_direction``, ``lars_momentum_step_``). State: ``momentum_buffer`` (:math:`b`, torch's SGD key; it starts at zero as in the paper,
where torch's SGD starts it at the first update). Dense, real tensors only.
Defaults: the paper's :math:`\eta = 0.001` and :math:`\mu = 0.9`; it gives no default ``lr`` (its
ImageNet runs use large base rates with polynomial decay), so ``lr`` defaults to torch's SGD 1e-3.
The learning rate multiplies the step, not the momentum input (torch's SGD convention; the paper
puts :math:`\gamma` inside :math:`b`, which differs only when the rate changes).
Reference: You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks" (2017),
arXiv:1708.03888.
"""

from __future__ import annotations

import torch

from ..backends import staged
from ..core import check
from ._common import lr_checks
from .lamb import trust
from .per_tensor import PerTensorOptimizer


def lars_direction(p, g, l2):
    r""":math:`g_t + \lambda\theta_{t-1}` (``l2`` None without weight decay), a new tensor."""
    return g.add(p, alpha=l2) if l2 is not None else g.clone()


def lars_momentum_step_(p, u, momentum_buffer, *, lr, momentum, dampening, nesterov) -> None:
    r"""The momentum buffer and parameter step from the scaled :math:`u_t` (``u`` may be reused)."""
    if momentum_buffer is not None:
        momentum_buffer.mul_(momentum).add_(u, alpha=1 - dampening)
        u = u.add_(momentum_buffer, alpha=momentum) if nesterov else momentum_buffer
    p.add_(u, alpha=-lr)


def lars_ratio(weight_norm, grad_norm, *, weight_decay, trust_coefficient):
    return trust(weight_norm, grad_norm + weight_decay * weight_norm, trust_coefficient * weight_norm)


def lars_update(p, g, momentum_buffer, *, lr, momentum, dampening, weight_decay, nesterov, trust_coefficient,
                trust_ratio) -> None:
    """One LARS step of one tensor (see module docstring); ``momentum_buffer`` is None without momentum."""
    u = lars_direction(p, g, weight_decay if weight_decay != 0 else None)
    if trust_ratio:
        u.mul_(lars_ratio(torch.linalg.vector_norm(p), torch.linalg.vector_norm(g), weight_decay=weight_decay,
                          trust_coefficient=trust_coefficient))
    lars_momentum_step_(p, u, momentum_buffer, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov)


def lars_norms(p, g) -> dict:
    """Fused pass 1: what the ratio's norms sum."""
    return {"weight": p, "grad": g}


def lars_step(p, g, momentum_buffer=None, *, maximize, l2, ratio=None, **momentum) -> None:
    """Fused pass 2: ``lars_update`` given the per-tensor ratio."""
    u = lars_direction(p, -g if maximize else g, l2)
    lars_momentum_step_(p, u if ratio is None else u * ratio, momentum_buffer, **momentum)


class LARS(PerTensorOptimizer):
    """LARS; see :mod:`torchstep.algorithms.lars`. Group option ``trust_ratio=False`` turns the
    layer-wise scaling off for that group."""

    def __init__(self, params, lr: float | torch.Tensor = 1e-3, momentum: float = 0.9, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, trust_coefficient: float = 1e-3,
                 trust_ratio: bool = True, maximize: bool = False) -> None:
        lr_checks(lr)
        check.in_range(momentum, "momentum", "momentum value", 0.0, 1.0)
        check.in_range(dampening, "dampening", "dampening value", 0.0, 1.0)
        check.at_least(weight_decay, "weight_decay", "weight_decay value")
        check.at_least(trust_coefficient, "trust_coefficient", "trust_coefficient value")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                f"Nesterov momentum requires a momentum and zero dampening (got momentum={momentum}, "
                f"dampening={dampening}; nesterov=True needs momentum > 0 and dampening == 0)"
            )
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        trust_coefficient=trust_coefficient, trust_ratio=trust_ratio, maximize=maximize)
        super().__init__(params, defaults)

    def init_state(self, p: torch.Tensor, group: dict) -> dict:
        return {"momentum_buffer": torch.zeros_like(p, memory_format=torch.preserve_format)} if group["momentum"] else {}

    def update_group(self, group: dict, params: list[torch.Tensor]) -> None:
        hyper = {k: group[k] for k in ("momentum", "dampening", "weight_decay", "nesterov", "trust_coefficient",
                                       "trust_ratio")}
        for p in params:
            state = self.state[p]
            if group["momentum"] and "momentum_buffer" not in state:
                state.update(self.init_state(p, group))
            g = -p.grad if group["maximize"] else p.grad
            lars_update(p, g, state.get("momentum_buffer") if group["momentum"] else None, lr=float(group["lr"]), **hyper)

    def fused_group(self, group: dict, params: list[torch.Tensor], force_triton: bool, cache: dict) -> None:
        """The step of ``update_group`` as two fused passes (see module docstring)."""
        operands = {"p": params, "g": [p.grad for p in params]}
        ratio = {}
        if group["trust_ratio"]:
            sums = staged.run_pass(lars_norms, operands, (), {}, None, force_triton, cache)
            ratio = {"ratio": lars_ratio(staged.norms_in(sums["weight"], params), staged.norms_in(sums["grad"], params),
                                         weight_decay=group["weight_decay"], trust_coefficient=group["trust_coefficient"])}
        if group["momentum"]:
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p].update(self.init_state(p, group))
            operands["momentum_buffer"] = [self.state[p]["momentum_buffer"] for p in params]
        wd = group["weight_decay"]
        scalars = dict(maximize=group["maximize"], l2=wd if wd != 0 else None, lr=float(group["lr"]),
                       momentum=group["momentum"], dampening=group["dampening"], nesterov=group["nesterov"])
        staged.run_pass(lars_step, operands, tuple(n for n in operands if n != "g"), scalars, ratio, force_triton, cache)
