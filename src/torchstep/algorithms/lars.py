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

Not element-wise: the ratio needs the norms of each tensor and its gradient before the update,
so LARS is written as stages (:mod:`torchstep.core.stages`, ``LARS_STAGES``): :func:`lars_norms`
(what the norms take), :func:`lars_ratio` (:math:`\rho_t`), :func:`lars_step` (momentum and
parameter step). The reference backend runs them tensor by tensor, the fused one as two passes
over memory. ``maximize`` and the decay term :math:`\lambda\theta_{t-1}` of :math:`u_t` come from the
shared wrappers (the gradient ``lars_step`` sees is :math:`g_t + \lambda\theta_{t-1}`).
With DTensor parameters (FSDP2, tensor parallel) the norms are those of the whole tensors
(all-reduced over the mesh).
State: ``momentum_buffer`` (:math:`b`, torch's SGD key; it starts at zero as in the paper,
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

from ..core import check
from ..core.stages import Pass, PerTensor, Staged
from ._common import lr_checks
from .lamb import trust
from .stage_optimizer import StagedOptimizer


def lars_norms(p, grad) -> dict:
    """Stage 1: the tensors whose norms the ratio takes (the gradient's sign does not matter)."""
    return {"weight": p, "grad": grad}


def lars_ratio(weight, grad, *, weight_decay, trust_coefficient) -> dict:
    r""":math:`\rho_t` from :math:`\lVert\theta\rVert` and :math:`\lVert g_t\rVert`."""
    return {"ratio": trust(weight, grad + weight_decay * weight, trust_coefficient * weight)}


def lars_step(p, g, momentum_buffer=None, *, lr, momentum, dampening, nesterov, ratio=None) -> None:
    r"""Stage 2: :math:`u_t = \rho_t g` (``g`` already holds the decay term), the momentum buffer
    (None without momentum) and the parameter step."""
    u = g if ratio is None else g * ratio
    if momentum_buffer is not None:
        momentum_buffer.mul_(momentum).add_(u, alpha=1 - dampening)
        u = u.add(momentum_buffer, alpha=momentum) if nesterov else momentum_buffer
    p.add_(u, alpha=-lr)


def _buffer(group: dict) -> tuple[str, ...]:
    return ("momentum_buffer",) if group["momentum"] else ()


def _scalars(group: dict, context: dict) -> dict:
    return dict(lr=float(group["lr"]), momentum=group["momentum"], dampening=group["dampening"],
                nesterov=group["nesterov"], weight_decay=group["weight_decay"],
                trust_coefficient=group["trust_coefficient"])


def _trusting(group: dict) -> bool:
    return group["trust_ratio"]


LARS_STAGES = Staged(
    name="lars",
    state_names=_buffer,
    init=lambda p, group: {n: torch.zeros_like(p, memory_format=torch.preserve_format) for n in _buffer(group)},
    program=(Pass(lars_norms, ("p", "grad"), when=_trusting),
             PerTensor(lars_ratio, ("ratio",), when=_trusting),
             Pass(lars_step, lambda group: ("p", "g", *_buffer(group)), lambda group: ("p", *_buffer(group)))),
    scalars=_scalars,
    counter=None,
)


class LARS(StagedOptimizer):
    """LARS; see :mod:`torchstep.algorithms.lars`. Group option ``trust_ratio=False`` turns the
    layer-wise scaling off for that group."""

    stages = LARS_STAGES

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
