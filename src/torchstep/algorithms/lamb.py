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
the parameter step, so LAMB is a per-tensor stage
(:class:`~torchstep.algorithms.per_tensor.PerTensorOptimizer`), not fused.
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

from ..backends.reference import new_step_tensor
from ..core import check
from .adamax import adam_like_checks
from .per_tensor import PerTensorOptimizer


def trust_scaled_(u: torch.Tensor, weight_norm: torch.Tensor, denominator: torch.Tensor, numerator: torch.Tensor) -> None:
    """``u <- u * numerator / denominator`` in place, or unchanged where ``weight_norm`` or
    ``denominator`` is 0 (a fresh zero tensor, a zero gradient): the ratio is then 1. No sync."""
    ok = (weight_norm > 0) & (denominator > 0)
    u.mul_(torch.where(ok, numerator / torch.where(ok, denominator, 1.0), 1.0))


def lamb_update(p, g, exp_avg, exp_avg_sq, step, *, lr, beta1, beta2, eps, weight_decay, bias_correction,
                decoupled_weight_decay, trust_ratio, max_weight_norm) -> None:
    """One LAMB step of one tensor (see module docstring)."""
    step += 1
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    if bias_correction:
        t = step.item()
        u = (exp_avg / (1 - beta1**t)) / (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**t) + eps)
    else:
        u = exp_avg / (exp_avg_sq.sqrt() + eps)
    if weight_decay != 0:
        if decoupled_weight_decay:
            p.mul_(1 - lr * weight_decay)
        else:
            u.add_(p, alpha=weight_decay)
    if trust_ratio:
        weight_norm = torch.linalg.vector_norm(p)
        if max_weight_norm is not None:
            weight_norm = weight_norm.clamp(max=max_weight_norm)
        trust_scaled_(u, weight_norm, torch.linalg.vector_norm(u) + eps, weight_norm)
    p.add_(u, alpha=-lr)


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
        hyper = {k: group[k] for k in ("eps", "weight_decay", "bias_correction", "decoupled_weight_decay",
                                       "trust_ratio", "max_weight_norm")}
        for p in params:
            g = -p.grad if group["maximize"] else p.grad
            state = self.state[p]
            lamb_update(p, g, state["exp_avg"], state["exp_avg_sq"], state["step"], lr=float(group["lr"]), beta1=beta1,
                        beta2=beta2, **hyper)
