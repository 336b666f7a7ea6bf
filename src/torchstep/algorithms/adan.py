r"""Adan: adaptive Nesterov momentum, estimated from gradient differences.

With gradient :math:`g_t` (after ``maximize``, times the global clip factor below), ``lr``
:math:`\gamma`, ``betas`` :math:`(\beta_1, \beta_2, \beta_3)`, ``eps`` :math:`\epsilon`,
``weight_decay`` :math:`\lambda` and the gradient difference :math:`\delta_t = g_t - g_{t-1}`
(:math:`\delta_1 = 0`):

.. math::
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t \qquad
    d_t = \beta_2 d_{t-1} + (1-\beta_2) \delta_t \qquad
    n_t = \beta_3 n_{t-1} + (1-\beta_3) (g_t + \beta_2 \delta_t)^2

    \eta_t = \sqrt{n_t}/\sqrt{1-\beta_3^t} + \epsilon \qquad
    u_t = \frac{\gamma}{1-\beta_1^t}\frac{m_t}{\eta_t}
        + \frac{\gamma\beta_2}{1-\beta_2^t}\frac{d_t}{\eta_t}

    \theta_t = \frac{\theta_{t-1} - u_t}{1 + \gamma\lambda} \ \text{(default, proximal)} \qquad
    \theta_t = (1-\gamma\lambda)\,\theta_{t-1} - u_t \ \text{(}\texttt{no\_prox=True}\text{)}

The proximal form is computed as :math:`\theta_{t-1}/(1+\gamma\lambda) - u_t/(1+\gamma\lambda)`:
a decoupled decay by :math:`1/(1+\gamma\lambda)` and the step scaled by the same factor (the
same math as the authors' division of the updated parameter, to rounding), so the update only
adds an increment to :math:`\theta`.

The betas are the decay rates of the three averages, as in the authors' code (the paper writes
:math:`1-\beta`). ``max_grad_norm`` :math:`> 0` first scales every gradient of the optimizer by
:math:`\min(1, \texttt{max\_grad\_norm} / (\lVert g \rVert + \epsilon))`, :math:`\lVert g\rVert`
the norm of all gradients together (computed in float64; the constructor's ``max_grad_norm``
and ``eps`` apply to all groups). The authors' defaults: ``lr=1e-3, betas=(0.98, 0.92, 0.99),
eps=1e-8, weight_decay=0, max_grad_norm=0, no_prox=False``.

Not purely element-wise: the global norm is a reduction over all gradients, done once per step
before the groups' fused passes; the backends see each group with that factor and its weight
decay in decoupled form.
State: ``step``, ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`n`), ``exp_avg_diff``
(:math:`d`), ``neg_pre_grad`` (:math:`-g_{t-1}`) -- the authors' names; the authors count steps
per group, torchstep per parameter (as torch does), which differs only for parameters that skip
steps; a checkpoint of theirs loads (its group ``step`` is given to each parameter). The gradient
tensors are left untouched (the authors' code clips ``p.grad`` in place). With ``maximize``
the first gradient difference is zero, as without it (pytorch-optimizer's Adan seeds the
previous gradient before negating, so its first difference is :math:`-2g_1`). ``cautious=True``: see
:mod:`torchstep.backends.cautious` (the decay, proximal or not, is not masked).
Reference: Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
Models" (TPAMI 2024), arXiv:2208.06677.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..core import check
from ..core.algorithm import Algorithm
from ..core.dtensors import whole
from ..core.optimizer import Optimizer
from ..core.state import new_step_tensor
from ..core.wrappers import as_real, squeeze_scalar
from ._common import lr_checks

STATE = ("exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad")


def scalars(group: dict, step: Any, first: bool) -> dict:
    beta1, beta2, beta3 = group["betas"]
    lr, shrink, clip = squeeze_scalar(group["lr"]), group.get("step_shrink", 1.0), group.get("clip")
    return {
        "beta1": beta1, "beta2": beta2, "beta3": beta3, "eps": group["eps"], "restart": first or step == 1,
        "step_size": lr / (1 - beta1**step) * shrink, "diff_step_size": lr * beta2 / (1 - beta2**step) * shrink,
        "bias_correction3_sqrt": math.sqrt(1 - beta3**step), "clipping": clip is not None,
        "clip": 1.0 if clip is None else clip,
    }


def update(p, g, exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad, *, beta1, beta2, beta3, eps, restart, step_size,
           diff_step_size, bias_correction3_sqrt, clipping, clip) -> None:
    """The three averages and the two-term step; ``neg_pre_grad`` ends as ``-g`` (module docstring)."""
    if clipping:
        g = g * clip
    if restart:
        neg_pre_grad.copy_(g.neg())  # the first difference is zero
    diff = neg_pre_grad.add_(g)
    exp_avg.mul_(beta1).add_(g, alpha=1 - beta1)
    exp_avg_diff.mul_(beta2).add_(diff, alpha=1 - beta2)
    lookahead = diff.mul_(beta2).add_(g)
    exp_avg_sq.mul_(beta3).addcmul_(lookahead, lookahead, value=1 - beta3)
    denom = exp_avg_sq.sqrt().div(bias_correction3_sqrt).add(eps)
    p.addcdiv_(exp_avg, denom, value=-step_size)
    p.addcdiv_(exp_avg_diff, denom, value=-diff_step_size)
    neg_pre_grad.copy_(g.neg())


ADAN_ALGORITHM = Algorithm(
    name="adan", nonnegative_state=("exp_avg_sq",), state_names=lambda group: STATE, scalars=scalars, update=update,
    sparse_error="Adan does not support sparse gradients",
)


class Adan(Optimizer):
    """Adan; see :mod:`torchstep.algorithms.adan`."""

    algorithm = ADAN_ALGORITHM

    def __init__(self, params, lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float, float, float] = (0.98, 0.92, 0.99), eps: float = 1e-8,
                 weight_decay: float = 0.0, max_grad_norm: float = 0.0, no_prox: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, cautious: bool = False) -> None:
        lr_checks(lr)
        check.betas_sequence(betas, 3)
        check.at_least(eps, "eps", "epsilon value")
        check.at_least(weight_decay, "weight_decay", "weight_decay value")
        check.at_least(max_grad_norm, "max_grad_norm", "max_grad_norm value")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                        no_prox=no_prox, maximize=maximize, foreach=foreach, cautious=cautious)
        super().__init__(params, defaults)

    def _prepare_step(self, grad_scale: Any) -> None:
        """This step's global clip factor (None when ``max_grad_norm`` is 0)."""
        self._clip = None
        max_norm = self.defaults["max_grad_norm"]
        if not max_norm > 0:
            return
        grads = [as_real(p.grad) for group in self.param_groups for p in group["params"] if p.grad is not None]
        if any(g.is_sparse for g in grads):
            raise RuntimeError(ADAN_ALGORITHM.sparse_error)
        # each gradient's whole norm (a DTensor's is all-reduced over its mesh: gradients on
        # different meshes then combine as plain numbers)
        norms = [whole(torch.linalg.vector_norm(g, dtype=torch.float64)).cpu() for g in grads]
        norm = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
        if grad_scale is not None:
            norm /= float(grad_scale)
        self._clip = min(1.0, max_norm / (norm + self.defaults["eps"]))

    def _backend_group(self, group: dict) -> dict:
        """``group`` as the backends see it: this step's clip factor, and its weight decay as a
        decoupled decay -- for the proximal form, by the factor 1/(1 + lr * weight_decay), with
        the step scaled by the same (``step_shrink``)."""
        lr, wd = squeeze_scalar(group["lr"]), group["weight_decay"]
        shrink = 1.0 if group["no_prox"] else 1 / (1 + lr * wd)
        return dict(group, clip=self._clip, decoupled_weight_decay=True, step_shrink=shrink,
                    weight_decay=wd if group["no_prox"] else wd * shrink)

    def _upgrade_loaded_state(self) -> None:
        """A checkpoint of the authors' code counts steps per group: give each parameter its group's."""
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and "step" not in state and "step" in group:
                    state["step"] = new_step_tensor(p, group, float(group["step"]))
        super()._upgrade_loaded_state()
