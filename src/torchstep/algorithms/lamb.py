r"""LAMB: Adam's direction scaled, tensor by tensor, by a trust ratio (layer-wise adaptation).

With gradient :math:`g_t` (negated for ``maximize``), ``lr`` :math:`\gamma`, ``betas``
:math:`(\beta_1, \beta_2)`, ``eps`` :math:`\epsilon`, ``weight_decay`` :math:`\lambda` and
``max_weight_norm`` :math:`c`, for each parameter tensor :math:`\theta`:

.. math::
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

    r_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}
    \quad (\text{with } \texttt{bias\_correction=False}: \ r_t = m_t / (\sqrt{v_t} + \epsilon))

    u_t = r_t + \lambda\theta_{t-1} \qquad
    \rho_t = \frac{\min(\lVert\theta_{t-1}\rVert, c)}{\lVert u_t\rVert + \epsilon}
    \ (\rho_t = 1 \text{ if either norm is } 0) \qquad
    \theta_t = \theta_{t-1} - \gamma\,\rho_t\,u_t

With ``decoupled_weight_decay=True`` the decay is taken out of :math:`u_t` and applied first,
:math:`\theta_{t-1} \leftarrow (1-\gamma\lambda)\theta_{t-1}` (norms then see the decayed tensor).
``max_weight_norm=None`` leaves :math:`\lVert\theta\rVert` unclipped (:math:`\phi` of the paper is
then the identity).

Excluding tensors (biases, norm layers) from the trust ratio or the decay is a matter of
parameter groups: ``{"params": ..., "trust_ratio": False, "weight_decay": 0.0}`` makes that group
take plain Adam steps (:math:`\rho_t = 1`) without decay.

Not element-wise: the trust ratio needs two norms of each tensor between the moment update and
the parameter step, so LAMB is written as stages (:mod:`torchstep.core.stages`, ``LAMB_STAGES``):
:func:`lamb_moments` (the moments; returns :math:`\theta` and :math:`u_t` for their norms),
:func:`lamb_ratio` (:math:`\rho_t` from the norms), :func:`lamb_step` (:math:`u_t` again, from the
new moments, and the parameter step). The reference backend runs them tensor by tensor, the fused
one as two passes over memory (:math:`u_t` is recomputed, never stored). ``maximize`` and the
decoupled decay come from the shared wrappers; the coupled decay is part of :math:`u_t`.
State: ``step``, ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`). Dense, real tensors only.
With DTensor parameters (FSDP2, tensor parallel) the two norms are those of the whole tensors
(all-reduced over the mesh), as an unsharded run computes them.
Defaults are the paper's (:math:`\beta = (0.9, 0.999)`, :math:`\epsilon = 10^{-6}`; its BERT runs
use :math:`\lambda = 0.01`). The norm clip :math:`c = 10` and the :math:`\epsilon` in the
ratio's denominator follow pytorch-optimizer; ``bias_correction=False`` with
``decoupled_weight_decay`` equals its ``Lamb(adam_debias=True, weight_decouple=...)``, whose default
instead divides the step (not the ratio's input) by :math:`1-\beta_1^t`.
Reference: You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes"
(ICLR 2020), arXiv:1904.00962.
"""

from __future__ import annotations

import math

import torch

from ..core import check
from ..core.stages import Pass, PerTensor, Staged
from ..core.state import new_step_tensor
from .adamax import adam_like_checks
from .stage_optimizer import StagedOptimizer


def trust(weight_norm: torch.Tensor, denominator: torch.Tensor, numerator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, or 1 where ``weight_norm`` or ``denominator`` is 0 (a fresh
    zero tensor, a zero gradient). Element-wise, so it serves one tensor's norms or a vector of
    every tensor's. No sync."""
    ok = (weight_norm > 0) & (denominator > 0)
    return torch.where(ok, numerator / torch.where(ok, denominator, 1.0), 1.0)


def lamb_direction(p, exp_avg, exp_avg_sq, *, eps, bias1, bias2_sqrt, l2):
    r""":math:`u_t` before the trust ratio; ``bias1`` None without bias correction, ``l2`` None
    without coupled weight decay."""
    if bias1 is None:
        u = exp_avg / (exp_avg_sq.sqrt() + eps)
    else:
        u = (exp_avg / bias1) / (exp_avg_sq.sqrt() / bias2_sqrt + eps)
    return u if l2 is None else u.add_(p, alpha=l2)


def lamb_moments(p, g, exp_avg, exp_avg_sq, *, beta1, beta2, eps, l2, trust_ratio, bias1=None, bias2_sqrt=None):
    r"""Stage 1: :math:`m_t, v_t`; with the trust ratio on, :math:`\theta` (decayed) and :math:`u_t`
    for their norms."""
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    if trust_ratio:
        return {"weight": p, "update": lamb_direction(p, exp_avg, exp_avg_sq, eps=eps, bias1=bias1,
                                                      bias2_sqrt=bias2_sqrt, l2=l2)}
    return None


def lamb_ratio(weight, update, *, eps, max_weight_norm):
    r""":math:`\rho_t` from :math:`\lVert\theta\rVert` and :math:`\lVert u_t\rVert`."""
    if max_weight_norm is not None:
        weight = weight.clamp(max=max_weight_norm)
    return {"ratio": trust(weight, update + eps, weight)}


def lamb_step(p, exp_avg, exp_avg_sq, *, lr, eps, l2, bias1=None, bias2_sqrt=None, ratio=None) -> None:
    r"""Stage 2: :math:`\theta_t = \theta - \gamma\rho_t u_t`."""
    u = lamb_direction(p, exp_avg, exp_avg_sq, eps=eps, bias1=bias1, bias2_sqrt=bias2_sqrt, l2=l2)
    p.add_(u if ratio is None else u * ratio, alpha=-lr)


def _scalars(group: dict, context: dict) -> dict:
    wd = group["weight_decay"]
    beta1, beta2 = group["betas"]
    return dict(lr=float(group["lr"]), beta1=beta1, beta2=beta2, eps=group["eps"], trust_ratio=group["trust_ratio"],
                max_weight_norm=group["max_weight_norm"], l2=wd if wd != 0 and not group["decoupled_weight_decay"] else None)


def _bias(group: dict, step: float) -> dict:
    beta1, beta2 = group["betas"]
    return {"bias1": 1 - beta1**step, "bias2_sqrt": math.sqrt(1 - beta2**step)} if group["bias_correction"] else {}


def _wrappers(group: dict, context: dict) -> dict:
    """``maximize`` and the decoupled decay (at ``lr`` as a number); the coupled one is in :math:`u_t`."""
    decoupled = group["decoupled_weight_decay"]
    return dict(maximize=group["maximize"], weight_decay=group["weight_decay"] if decoupled else 0,
                decoupled_weight_decay=decoupled, lr=float(group["lr"]))


def _init(p: torch.Tensor, group: dict) -> dict:
    zeros = {n: torch.zeros_like(p, memory_format=torch.preserve_format) for n in ("exp_avg", "exp_avg_sq")}
    return {"step": new_step_tensor(p, group), **zeros}


def _trusting(group: dict) -> bool:
    return group["trust_ratio"]


LAMB_STAGES = Staged(
    name="lamb",
    state_names=lambda group: ("exp_avg", "exp_avg_sq"),
    init=_init,
    program=(Pass(lamb_moments, ("p", "g", "exp_avg", "exp_avg_sq"), ("exp_avg", "exp_avg_sq")),
             PerTensor(lamb_ratio, ("ratio",), when=_trusting),
             Pass(lamb_step, ("p", "exp_avg", "exp_avg_sq"), ("p",))),
    scalars=_scalars,
    step_scalars=_bias,
    wrappers=_wrappers,
)


class Lamb(StagedOptimizer):
    """LAMB; see :mod:`torchstep.algorithms.lamb`. Group option ``trust_ratio=False`` turns
    the layer-wise scaling off for that group."""

    stages = LAMB_STAGES

    def __init__(self, params, lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, *, bias_correction: bool = True,
                 decoupled_weight_decay: bool = False, trust_ratio: bool = True, max_weight_norm: float | None = 10.0,
                 maximize: bool = False) -> None:
        adam_like_checks(lr, betas, eps, weight_decay)
        if max_weight_norm is not None:
            check.positive(max_weight_norm, "max_weight_norm", "max_weight_norm value")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, bias_correction=bias_correction,
                        decoupled_weight_decay=decoupled_weight_decay, trust_ratio=trust_ratio,
                        max_weight_norm=max_weight_norm, maximize=maximize)
        super().__init__(params, defaults)
