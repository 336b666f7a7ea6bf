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
the parameter step. ``lamb_update`` is the tensor-by-tensor definition (the reference path); the
fused path (:mod:`torchstep.backends.staged`) runs the same element-wise pieces
(``lamb_moments_``, ``lamb_direction``) as two passes over memory: moments plus the sums of
squares of :math:`\theta` and :math:`u_t` (recomputed, never stored), then -- with
:math:`\rho_t` computed per tensor from those sums -- :math:`u_t` again and the parameter step.
State: ``step``, ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`). Dense, real tensors only.
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

from ..backends import staged
from ..backends.plan import held_by
from ..backends.reference import new_step_tensor
from ..core import check
from .adamax import adam_like_checks
from .per_tensor import PerTensorOptimizer


def trust(weight_norm: torch.Tensor, denominator: torch.Tensor, numerator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, or 1 where ``weight_norm`` or ``denominator`` is 0 (a fresh
    zero tensor, a zero gradient). Element-wise, so it serves one tensor's norms or a vector of
    every tensor's. No sync."""
    ok = (weight_norm > 0) & (denominator > 0)
    return torch.where(ok, numerator / torch.where(ok, denominator, 1.0), 1.0)


def lamb_moments_(g, exp_avg, exp_avg_sq, *, beta1, beta2) -> None:
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)


def lamb_direction(p, exp_avg, exp_avg_sq, *, eps, bias1, bias2_sqrt, l2):
    r""":math:`u_t` before the trust ratio; ``bias1`` None without bias correction, ``l2`` None
    without coupled weight decay."""
    if bias1 is None:
        u = exp_avg / (exp_avg_sq.sqrt() + eps)
    else:
        u = (exp_avg / bias1) / (exp_avg_sq.sqrt() / bias2_sqrt + eps)
    return u if l2 is None else u.add_(p, alpha=l2)


def _options(group: dict) -> dict:
    """The structure and numbers both paths take from a group: ``l2`` and ``decay`` (the
    decoupled factor) are None when unused."""
    wd, lr = group["weight_decay"], float(group["lr"])
    coupled = wd != 0 and not group["decoupled_weight_decay"]
    decoupled = wd != 0 and group["decoupled_weight_decay"]
    return dict(l2=wd if coupled else None, decay=1 - lr * wd if decoupled else None)


def lamb_update(p, g, exp_avg, exp_avg_sq, step, *, lr, beta1, beta2, eps, l2, decay, bias_correction, trust_ratio,
                max_weight_norm) -> None:
    """One LAMB step of one tensor (see module docstring)."""
    step += 1
    lamb_moments_(g, exp_avg, exp_avg_sq, beta1=beta1, beta2=beta2)
    t = step.item()
    bias1, bias2_sqrt = (1 - beta1**t, math.sqrt(1 - beta2**t)) if bias_correction else (None, None)
    if decay is not None:
        p.mul_(decay)
    u = lamb_direction(p, exp_avg, exp_avg_sq, eps=eps, bias1=bias1, bias2_sqrt=bias2_sqrt, l2=l2)
    if trust_ratio:
        weight_norm = torch.linalg.vector_norm(p)
        if max_weight_norm is not None:
            weight_norm = weight_norm.clamp(max=max_weight_norm)
        u.mul_(trust(weight_norm, torch.linalg.vector_norm(u) + eps, weight_norm))
    p.add_(u, alpha=-lr)


def lamb_first_pass(p, g, exp_avg, exp_avg_sq, *, beta1, beta2, maximize, decay, **direction) -> dict:
    r"""Fused pass 1: the moments, and what the ratio's norms sum (:math:`\theta` after decay, :math:`u_t`)."""
    lamb_moments_(-g if maximize else g, exp_avg, exp_avg_sq, beta1=beta1, beta2=beta2)
    p = p if decay is None else p * decay
    return {"weight": p, "update": lamb_direction(p, exp_avg, exp_avg_sq, **direction)}


def lamb_second_pass(p, exp_avg, exp_avg_sq, *, lr, decay, ratio=None, **direction) -> None:
    r"""Fused pass 2: :math:`u_t` recomputed from the new moments, scaled by the per-tensor ratio."""
    if decay is not None:
        p.mul_(decay)
    u = lamb_direction(p, exp_avg, exp_avg_sq, **direction)
    p.add_(u if ratio is None else u * ratio, alpha=-lr)


class Lamb(PerTensorOptimizer):
    """LAMB; see :mod:`torchstep.algorithms.lamb`. Group option ``trust_ratio=False`` turns
    the layer-wise scaling off for that group."""

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

    def init_state(self, p: torch.Tensor, group: dict) -> dict:
        zeros = {n: torch.zeros_like(p, memory_format=torch.preserve_format) for n in ("exp_avg", "exp_avg_sq")}
        return {"step": new_step_tensor(p, group), **zeros}

    def update_group(self, group: dict, params: list[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        hyper = {k: group[k] for k in ("eps", "bias_correction", "trust_ratio", "max_weight_norm")}
        for p in params:
            g = -p.grad if group["maximize"] else p.grad
            state = self.state[p]
            lamb_update(p, g, state["exp_avg"], state["exp_avg_sq"], state["step"], lr=float(group["lr"]), beta1=beta1,
                        beta2=beta2, **_options(group), **hyper)

    def fused_group(self, group: dict, params: list[torch.Tensor], force_triton: bool, cache: dict) -> None:
        """The step of ``update_group`` as two fused passes (see module docstring)."""
        (beta1, beta2), eps, states = group["betas"], group["eps"], [self.state[p] for p in params]
        counts = held_by(self, "_step_counts", group, staged.StepCounts)
        ts = counts.next(params, states)
        bias = {}
        if group["bias_correction"]:
            bias = {"bias1": torch.tensor([1 - beta1**t for t in ts], dtype=torch.float64),
                    "bias2_sqrt": torch.tensor([math.sqrt(1 - beta2**t) for t in ts], dtype=torch.float64)}
        scalars = dict(eps=eps, **_options(group), **({} if bias else dict(bias1=None, bias2_sqrt=None)))
        moments = {n: [s[n] for s in states] for n in ("exp_avg", "exp_avg_sq")}
        sums = staged.run_pass(lamb_first_pass, {"p": params, "g": [p.grad for p in params], **moments},
                               tuple(moments), dict(beta1=beta1, beta2=beta2, maximize=group["maximize"], **scalars),
                               bias, force_triton, cache)
        counts.bump()
        ratio = None
        if group["trust_ratio"]:
            weight_norm = staged.norms_in(sums["weight"], params)
            if group["max_weight_norm"] is not None:
                weight_norm = weight_norm.clamp(max=group["max_weight_norm"])
            ratio = trust(weight_norm, staged.norms_in(sums["update"], params) + eps, weight_norm)
        staged.run_pass(lamb_second_pass, {"p": params, **moments}, ("p",), dict(lr=float(group["lr"]), **scalars),
                        {**bias, **({} if ratio is None else {"ratio": ratio})}, force_triton, cache)
