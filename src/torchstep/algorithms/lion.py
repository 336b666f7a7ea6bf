r"""Lion: evolved sign momentum.

With gradient :math:`g_t` (after ``maximize``), ``lr`` :math:`\gamma`, ``betas``
:math:`(\beta_1, \beta_2)`, ``weight_decay`` :math:`\lambda`:

.. math::
    c_t = \beta_1 m_{t-1} + (1-\beta_1)\, g_t

    \theta_t = (1 - \gamma\lambda)\,\theta_{t-1} - \gamma\,\operatorname{sign}(c_t)

    m_t = \beta_2 m_{t-1} + (1-\beta_2)\, g_t

Every coordinate moves by exactly :math:`\gamma` (or not at all, where :math:`c_t = 0`), so Lion
wants a learning rate 3-10x smaller than AdamW's and a weight decay as many times larger.
Weight decay is decoupled, as in the paper (and AdamW). The authors' defaults: ``lr=1e-4``,
``betas=(0.9, 0.99)``, ``weight_decay=0``.

State: ``exp_avg`` (:math:`m`) only -- no step counter, as in the authors' code and
``lion-pytorch``, whose checkpoints load here and the other way round. ``cautious=True``: see
:mod:`torchstep.backends.cautious`. Dense gradients; complex parameters are treated as pairs of reals.
``lion-pytorch``'s ``use_triton`` and its ``decoupled_weight_decay`` (which divides the decay by
the initial lr) are not offered.
Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms" (NeurIPS 2023),
arXiv:2302.06675.
"""

from __future__ import annotations

import torch

from ..core import check
from ..core.algorithm import Algorithm
from ..core.optimizer import Optimizer
from ..core.wrappers import squeeze_scalar
from ._common import lr_checks


def scalars(group: dict, step, first: bool) -> dict:
    beta1, beta2 = group["betas"]
    return {"lr": squeeze_scalar(group["lr"]), "beta1": beta1, "beta2": beta2}


def update(p, g, exp_avg, *, lr, beta1, beta2) -> None:
    """The signed interpolation step, then the momentum update (see module docstring)."""
    direction = exp_avg.mul(beta1).add(g, alpha=1 - beta1).sign()
    p.add_(direction, alpha=-lr)
    exp_avg.mul_(beta2).add_(g, alpha=1 - beta2)


LION_ALGORITHM = Algorithm(
    name="lion", state_names=lambda group: ("exp_avg",), scalars=scalars, update=update, counts_steps=False,
    sparse_error="Lion does not support sparse gradients",
)


class Lion(Optimizer):
    """Lion; see :mod:`torchstep.algorithms.lion`."""

    algorithm = LION_ALGORITHM

    def __init__(self, params, lr: float | torch.Tensor = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, maximize: bool = False, foreach: bool | None = None,
                 cautious: bool = False) -> None:
        lr_checks(lr)
        check.betas_pair(betas)
        check.at_least(weight_decay, "weight_decay", "weight_decay value")
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, maximize=maximize, foreach=foreach,
                        cautious=cautious, decoupled_weight_decay=True)
        super().__init__(params, defaults)
