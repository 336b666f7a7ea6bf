r"""SparseAdam: Adam for sparse gradients (e.g. ``nn.Embedding(..., sparse=True)``).

Only the rows :math:`R` that the gradient touches are read and written. With ``lr`` :math:`\gamma`,
``betas`` :math:`(\beta_1, \beta_2)`, ``eps`` :math:`\epsilon`, for :math:`i \in R`:

.. math::
    m_{t,i} = \beta_1 m_{t-1,i} + (1-\beta_1) g_{t,i} \qquad
    v_{t,i} = \beta_2 v_{t-1,i} + (1-\beta_2) g_{t,i}^2

    \theta_{t,i} = \theta_{t-1,i} - \gamma\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}
                   \frac{m_{t,i}}{\sqrt{v_{t,i}} + \epsilon}

Rows not in :math:`R` keep their moments (they are not decayed). ``step`` counts the steps that
gave this parameter a gradient and is a Python int, as in torch. Not element-wise over the dense
tensor, so this algorithm has its own ``step`` rather than an Algorithm spec.
Reference: torch.optim.SparseAdam; Kingma & Ba, "Adam" (ICLR 2015) for the moments.
"""

from __future__ import annotations

import math

import torch

from ..core import check
from ..core.optimizer import Optimizer
from ..core.wrappers import prepare_grad, squeeze_scalar


def sparse_adam_update(p, g, exp_avg, exp_avg_sq, *, step: int, lr: float, beta1: float, beta2: float, eps: float) -> None:
    """One SparseAdam step for one parameter; ``g`` is a sparse COO gradient."""
    g = g.coalesce()
    idx, vals = g._indices(), g._values()
    if vals.numel() == 0:
        return

    def rows(values: torch.Tensor) -> torch.Tensor:
        return torch.sparse_coo_tensor(idx, values, g.size(), check_invariants=False)

    m_old = exp_avg.sparse_mask(g)._values()
    v_old = exp_avg_sq.sparse_mask(g)._values()
    m_delta = (vals - m_old) * (1 - beta1)
    v_delta = (vals.pow(2) - v_old) * (1 - beta2)
    exp_avg.add_(rows(m_delta))
    exp_avg_sq.add_(rows(v_delta))
    m_new = m_delta + m_old
    denom = (v_delta + v_old).sqrt() + eps
    step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
    p.add_(rows(-step_size * (m_new / denom)))


class SparseAdam(Optimizer):
    """Adam for sparse gradients; see :mod:`torchstep.algorithms.sparse_adam`."""

    _load_defaults: dict = {}  # torch's __setstate__ fills in nothing

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        maximize: bool = False,
    ) -> None:
        check.tensor_scalar(lr, "lr")
        check.positive(lr, "lr", "learning rate")
        check.positive(eps, "eps", "epsilon value")
        check.betas_pair(betas)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, maximize=maximize))
        sparse, complex_ = [], []
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.is_sparse:
                    sparse.append([gi, pi])
                if p.is_complex():
                    complex_.append([gi, pi])
        if sparse:
            raise ValueError(f"Sparse params at indices {sparse}: SparseAdam requires dense parameter tensors")
        if complex_:
            raise ValueError(f"Complex params at indices {complex_}: SparseAdam does not support complex parameters")

    @torch.no_grad()
    def step(self, closure=None):
        """One SparseAdam step over every parameter with a (sparse) gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError(
                        "SparseAdam does not support dense gradients, please consider Adam instead "
                        "(or create the embedding with sparse=True)"
                    )
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                g = prepare_grad(p, p.grad, group, weight_decay=False)  # maximize; SparseAdam has no weight decay
                sparse_adam_update(
                    p, g, state["exp_avg"], state["exp_avg_sq"], step=state["step"], lr=squeeze_scalar(group["lr"]),
                    beta1=beta1, beta2=beta2, eps=group["eps"],
                )
        return loss
