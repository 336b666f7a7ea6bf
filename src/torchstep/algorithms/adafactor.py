r"""Adafactor: Adam-like steps whose second moment is stored factored, in sublinear memory.

With gradient :math:`G_t` (negated for ``maximize``), step :math:`t`, ``lr`` :math:`\gamma`,
``beta2_decay`` :math:`\tau`, ``eps`` :math:`(\epsilon_1, \epsilon_2)`, ``d`` (clipping
threshold :math:`d`), ``weight_decay`` :math:`\lambda`:

.. math::
    \hat\beta_{2,t} = 1 - t^{\tau} \qquad \rho_t = \min(\gamma, 1/\sqrt t) \qquad
    \alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\,\rho_t

    \theta \leftarrow (1 - \gamma\lambda)\,\theta \quad \text{(decoupled weight decay)}

For a tensor with two or more dimensions (the last two are the matrix; leading ones batch), the
second moment is the outer product of a row factor :math:`R` (mean over the last dimension) and
a column factor :math:`C` (mean over the second-to-last):

.. math::
    R_t = \hat\beta_{2,t} R_{t-1} + (1-\hat\beta_{2,t})\,\mathrm{mean}_{-1}(G_t^2) \qquad
    C_t = \hat\beta_{2,t} C_{t-1} + (1-\hat\beta_{2,t})\,\mathrm{mean}_{-2}(G_t^2)

    \hat V_t = \frac{R_t C_t}{\max(\mathrm{mean}_{-2}(R_t), \epsilon_1)}

and for a vector or scalar :math:`\hat V_t = \hat\beta_{2,t}\hat V_{t-1} + (1-\hat\beta_{2,t})G_t^2`.
Then

.. math::
    U_t = \frac{G_t}{\max(\sqrt{\hat V_t}, \epsilon_1)} \qquad
    \theta_t = \theta - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U_t)/d)}\, U_t

:math:`\epsilon_1` = ``None`` means the machine epsilon of the dtype of the first parameter
updated in the group (as in torch, that value then serves the whole group).

Not element-wise (the factors are row/column means, the step uses whole-tensor RMS values), so
the algorithm is a per-tensor stage, :func:`adafactor_update`, run by
:class:`~torchstep.algorithms.per_tensor.PerTensorOptimizer`.
State: ``step``, and ``row_var`` (:math:`R`, shape with the last dimension 1) and ``col_var``
(:math:`C`, second-to-last dimension 1) for tensors with two or more dimensions, ``variance``
(:math:`\hat V`) otherwise. Dense, real tensors only.
Reference: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost"
(ICML 2018); as in torch, ``lr`` caps :math:`\rho_t` and scales the decoupled weight decay, and
:math:`\epsilon_1` is applied to the estimate rather than to the factors.
"""

from __future__ import annotations

import torch

from ..core import check
from ..core.state import new_step_tensor
from ..core.wrappers import prepare_grad, squeeze_scalar
from .per_tensor import PerTensorOptimizer


def initial_state(p: torch.Tensor, g: torch.Tensor, group: dict) -> dict:
    """``step`` and the (factored, for two or more dimensions) second moment."""
    state = {"step": new_step_tensor(p, group)}
    if g.dim() > 1:
        state["row_var"] = g.new_zeros((*g.shape[:-1], 1))
        state["col_var"] = g.new_zeros((*g.shape[:-2], 1, g.shape[-1]))
    else:
        state["variance"] = torch.zeros_like(g, memory_format=torch.preserve_format)
    return state


def rms(x: torch.Tensor, scale: float = 1.0) -> float:
    """``||x|| / (sqrt(numel) * scale)``: the root mean square of ``x``, divided by ``scale``."""
    return x.norm(2).item() / ((x.numel() ** 0.5) * scale)


def mean_square(g: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.norm(g, dim=dim, keepdim=True).square_().div_(g.size(dim))


def adafactor_update(p, g, state, *, lr, beta2_decay, eps1, eps2, d, weight_decay) -> None:
    """One Adafactor step of one tensor (see module docstring); ``state`` is updated in place."""
    state["step"] += 1
    t = state["step"].item()
    new_weight = t**beta2_decay  # 1 - beta2_t
    alpha = max(eps2, rms(p)) * min(lr, 1 / (t**0.5))
    if weight_decay != 0:
        p.mul_(1 - lr * weight_decay)
    if g.dim() > 1:
        row_var, col_var = state["row_var"], state["col_var"]
        row_var.lerp_(mean_square(g, -1), new_weight)
        col_var.lerp_(mean_square(g, -2), new_weight)
        estimate = row_var @ col_var
        estimate.div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1))
    else:
        estimate = state["variance"].lerp_(g * g, new_weight).clone()
    u = estimate.clamp_(min=eps1 * eps1).rsqrt_().mul_(g)
    p.add_(u, alpha=-alpha / max(1.0, rms(u, d)))


class Adafactor(PerTensorOptimizer):
    """Adafactor; see :mod:`torchstep.algorithms.adafactor`."""

    _load_defaults: dict = {}  # torch's __setstate__ fills in nothing

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        check.tensor_scalar(lr, "lr")
        check.should_be(lr, "lr", "Learning rate", ">=", 0)
        check.should_be(beta2_decay, "beta2_decay", "beta2_decay", "<=", 0)
        eps1 = check.item(eps, 0, "eps", "a pair (eps1 or None, eps2)")
        if eps1 is not None:
            check.should_be(eps1, "eps[0]", "epsilon1", ">=", 0)
        check.should_be(check.item(eps, 1, "eps", "a pair (eps1 or None, eps2)"), "eps[1]", "epsilon2", ">=", 0)
        check.pair(eps, "eps", "(eps1, eps2)")  # torch: ValueError when the step unpacks it
        check.should_be(d, "d", "Clipping threshold d", ">=", 1)
        check.should_be(weight_decay, "weight_decay", "weight_decay", ">=", 0)
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay, foreach=foreach, maximize=maximize)
        super().__init__(params, defaults)

    def _upgrade_loaded_state(self) -> None:
        """Older checkpoints store ``step`` as a number; make it a tensor, as torch does."""
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if st and not torch.is_tensor(st["step"]):
                    st["step"] = new_step_tensor(p, group, float(st["step"]))

    def init_state(self, p: torch.Tensor, group: dict) -> dict:
        return initial_state(p, p.grad, group)

    def update_group(self, group: dict, params: list[torch.Tensor]) -> None:
        eps1, eps2 = group["eps"]
        hyper = dict(lr=squeeze_scalar(group["lr"]), beta2_decay=group["beta2_decay"], eps2=eps2, d=group["d"], weight_decay=group["weight_decay"])
        for p in params:
            # maximize from the shared wrapper; the decoupled decay is taken inside the update, after
            # alpha has read RMS(theta) (torch's order)
            g = prepare_grad(p, p.grad, group, weight_decay=False)
            if eps1 is None:
                eps1 = torch.finfo(p.dtype).eps
            adafactor_update(p, g, self.state[p], eps1=eps1, **hyper)
