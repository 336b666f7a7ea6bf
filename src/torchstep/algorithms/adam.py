r"""Adam, with optional AMSGrad and decoupled (AdamW-style) weight decay.

With gradient :math:`g_t` (after ``maximize`` and weight decay), ``lr`` :math:`\gamma`,
``betas`` :math:`(\beta_1, \beta_2)`, ``eps`` :math:`\epsilon`:

.. math::
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

    \hat v_t = \max(\hat v_{t-1}, v_t) \text{ if amsgrad, else } v_t

    \theta_t = \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\,
               \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}

Weight decay :math:`\lambda`: L2 (:math:`g_t \leftarrow g_t + \lambda\theta_{t-1}`) by default;
with ``decoupled_weight_decay=True`` (AdamW) :math:`\theta_{t-1} \leftarrow (1-\gamma\lambda)\theta_{t-1}`.

State: ``step``, ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`), ``max_exp_avg_sq``
(:math:`\hat v`, amsgrad only). Dense gradients only.
References: Kingma & Ba, "Adam: A Method for Stochastic Optimization" (ICLR 2015); Reddi et al.,
"On the Convergence of Adam and Beyond" (ICLR 2018); Loshchilov & Hutter, "Decoupled Weight Decay
Regularization" (ICLR 2019).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import check
from ..core.algorithm import Algorithm
from ..core.optimizer import Optimizer
from ..core.wrappers import addcdiv_, addcmul_, running_max_, squeeze_scalar
from ._common import LOAD_FLAGS, lr_checks, weight_decay_checks


def state_names(group: dict) -> tuple[str, ...]:
    return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else ("exp_avg", "exp_avg_sq")


def scalars(group: dict, step: Any, first: bool) -> dict:
    beta1, beta2 = (squeeze_scalar(b) for b in group["betas"])
    return {
        "beta1": beta1,
        "beta2": beta2,
        "step_size": squeeze_scalar(group["lr"]) / (1 - beta1**step),
        "bias_correction2_sqrt": (1 - beta2**step) ** 0.5,
        "eps": group["eps"],
    }


def update(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, beta1, beta2, step_size, bias_correction2_sqrt, eps) -> None:
    """The Adam moment updates and parameter step (see module docstring)."""
    exp_avg.lerp_(g, 1 - beta1)
    addcmul_(exp_avg_sq.mul_(beta2), g, g, value=1 - beta2)
    second = exp_avg_sq
    if max_exp_avg_sq is not None:
        running_max_(max_exp_avg_sq, exp_avg_sq)
        second = max_exp_avg_sq
    denom = second.sqrt() / bias_correction2_sqrt + eps
    addcdiv_(p, exp_avg, denom, value=-step_size)


ADAM_ALGORITHM = Algorithm(
    name="adam", nonnegative_state=("exp_avg_sq", "max_exp_avg_sq"), state_names=state_names, scalars=scalars, update=update,
    sparse_error="Adam does not support sparse gradients, please consider SparseAdam instead",
)


def adam_defaults(lr, betas, eps, weight_decay, amsgrad, *, foreach, maximize, capturable, differentiable, fused,
                  decoupled_weight_decay) -> dict:
    """Validate Adam-family arguments as torch does; returns the defaults dict."""
    lr_checks(lr, foreach=foreach, capturable=capturable)
    check.at_least(eps, "eps", "epsilon value")
    check.betas_pair(betas, floats_or_tensors=True)
    weight_decay_checks(weight_decay, decoupled=decoupled_weight_decay)
    for i, b in enumerate(betas):
        check.no_tensor_hyper_with_foreach(b, f"betas[{i}]", foreach=foreach, capturable=capturable)
    betas = tuple(b.squeeze() if isinstance(b, torch.Tensor) and b.dim() else b for b in betas)
    return dict(
        lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
        foreach=foreach, capturable=capturable, differentiable=differentiable, fused=fused,
        decoupled_weight_decay=decoupled_weight_decay,
    )


class Adam(Optimizer):
    """Adam / AMSGrad; ``decoupled_weight_decay=True`` makes it AdamW. See :mod:`torchstep.algorithms.adam`."""

    _load_defaults = {**LOAD_FLAGS, "amsgrad": False, "decoupled_weight_decay": False, "fused": None}  # what torch's __setstate__ fills in
    _step_paths = check.StepPaths(foreach="with_grads", fused="adam", foreach_tensor_hypers=True)  # torch checks these flags at the step

    algorithm = ADAM_ALGORITHM

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        defaults = adam_defaults(
            lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize, capturable=capturable,
            differentiable=differentiable, fused=fused, decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(params, defaults)
        check.exclusive_flags(fused=fused, foreach=foreach, differentiable=differentiable)
