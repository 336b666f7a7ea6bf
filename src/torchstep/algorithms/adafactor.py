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
Adafactor is written as stages (:mod:`torchstep.core.stages`, ``ADAFACTOR_STAGES``), matrices
and vectors of a group as two parts (``factored``): :func:`adafactor_statistics` (the norm of
:math:`\theta` before the decay; for a matrix the row and column norms of :math:`G_t` -- those of
the stored gradient, whose squares are those of :math:`G_t` -- for a vector :math:`\hat V_t`),
:func:`adafactor_estimate` (a matrix stage: :math:`R_t, C_t` and :math:`\hat V_t` from them, with
torch operations), :func:`adafactor_direction` (:math:`U_t`, for its norm), :func:`adafactor_scale`
(:math:`\alpha_t` and the clipping, per tensor) and :func:`adafactor_step`. The reference backend
runs them tensor by tensor; the fused one runs the three passes as kernels, the row and column
norms and the matrix stage with torch operations between them (a full-size :math:`\hat V_t` per
matrix, as torch's own step makes). ``maximize`` and the decay come from the shared wrappers.
DTensor parameters: the row and column norms of a sharded dimension are all-reduced over the mesh
(the factors along a sharded dimension stay sharded like the matrix: FSDP2's ``row_var`` is
sharded by rows, its ``col_var`` replicated -- but a factor of the parameter's own shape, as
the ``col_var`` of a one-row matrix, is laid out as the parameter), and so is the mean of :math:`R_t`; the RMS values
are whole-tensor norms; the direction is laid out as the parameter before the step (for a
parameter with uneven or empty shards it may come out replicated). The result is that of an
unsharded run.
State: ``step``, and ``row_var`` (:math:`R`, shape with the last dimension 1) and ``col_var``
(:math:`C`, second-to-last dimension 1) for tensors with two or more dimensions, ``variance``
(:math:`\hat V`) otherwise. Dense, real tensors only.
Reference: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost"
(ICML 2018); as in torch, ``lr`` caps :math:`\rho_t` and scales the decoupled weight decay, and
:math:`\epsilon_1` is applied to the estimate rather than to the factors.
"""

from __future__ import annotations

import torch

from ..core import check, dtensors
from ..core.stages import Along, MatrixStage, Pass, PerTensor, Staged
from ..core.state import new_step_tensor
from ..core.wrappers import squeeze_scalar
from .stage_optimizer import StagedOptimizer


def initial_state(p: torch.Tensor, g: torch.Tensor, group: dict) -> dict:
    """``step`` and the (factored, for two or more dimensions) second moment."""
    state = {"step": new_step_tensor(p, group)}
    if g.dim() > 1:
        state["row_var"] = dtensors.zeros_reduced(g, (*g.shape[:-1], 1), -1)
        state["col_var"] = dtensors.zeros_reduced(g, (*g.shape[:-2], 1, g.shape[-1]), -2)
    else:
        state["variance"] = torch.zeros_like(g, memory_format=torch.preserve_format)
    return state


def adafactor_statistics(p, grad, variance=None, *, new_weight, factored):
    r"""Pass 1: :math:`\lVert\theta\rVert` (before the decay); row and column norms of
    :math:`G_t` for a matrix, :math:`\hat V_t` for a vector (``new_weight`` is :math:`1-\hat\beta_{2,t}`)."""
    if factored:
        return {"weight": p, "rows": Along(grad, -1), "cols": Along(grad, -2)}
    variance.lerp_(grad * grad, new_weight)
    return {"weight": p}


def adafactor_estimate(row_var, col_var, rows, cols, *, new_weight, eps1):
    r"""Matrix stage: :math:`R_t, C_t` from the row and column norms, and :math:`\hat V_t`."""
    row_var.lerp_(dtensors.laid_out_as(rows.square_().div_(cols.size(-1)), row_var), new_weight)
    col_var.lerp_(dtensors.laid_out_as(cols.square_().div_(rows.size(-2)), col_var), new_weight)
    estimate = row_var @ col_var
    return {"estimate": estimate.div_(dtensors.whole(row_var.mean(dim=-2, keepdim=True)).clamp_(min=eps1))}


def direction(g, estimate, variance, eps1):
    r""":math:`U_t = G_t / \max(\sqrt{\hat V_t}, \epsilon_1)`, from ``estimate`` (a matrix's
    :math:`\hat V_t`) or else ``variance`` (a vector's)."""
    return (variance if estimate is None else estimate).clamp(min=eps1 * eps1).rsqrt_().mul_(g)


def adafactor_direction(p, g, estimate=None, variance=None, *, eps1):
    r"""Pass 2: :math:`U_t`, returned for its norm (the decay is applied before it)."""
    return {"update": direction(g, estimate, variance, eps1)}


def adafactor_scale(weight, update, numel, *, rho, lr_rounds, lr_dtype, eps2, d):
    r"""The step's factor :math:`-\alpha_t / \max(1, \mathrm{RMS}(U_t)/d)` from the two norms, as
    torch computes it: in float64, or -- where :math:`\rho_t` is a tensor ``lr`` (``lr_rounds``) --
    rounded to that tensor's dtype as its arithmetic is."""
    root = numel ** 0.5
    weight_rms, update_rms = weight.double() / root, update.double() / (root * d)
    larger = torch.where(weight_rms > eps2, weight_rms, eps2)  # max(eps2, .) as Python's max, NaN included
    clip = torch.where(update_rms > 1.0, update_rms, 1.0)
    step_size = -(larger * rho) / clip
    if lr_dtype is not None:
        rounded = (-(larger.to(lr_dtype) * torch.as_tensor(rho, dtype=torch.float64).to(lr_dtype)) / clip.to(lr_dtype)).double()
        step_size = torch.where(torch.as_tensor(lr_rounds) != 0, rounded, step_size)
    return {"step_size": step_size}


def adafactor_step(p, g, estimate=None, variance=None, *, eps1, step_size) -> None:
    r"""Pass 3: :math:`\theta_t = \theta + \texttt{step\_size}\,U_t`, :math:`U_t` recomputed."""
    p.add_(dtensors.laid_out_as(direction(g, estimate, variance, eps1), p), alpha=step_size)


def _factored(group: dict) -> bool:
    return group["factored"]


def _state_names(group: dict) -> tuple[str, ...]:
    return ("row_var", "col_var") if group["factored"] else ("variance",)


def _split(group: dict, params: list) -> list[tuple[dict, list]]:
    """Matrices and vectors apart; ``eps1=None`` is the first parameter's machine epsilon, for
    the whole group (as in torch)."""
    eps1 = group["eps"][0]
    if eps1 is None and params:
        eps1 = torch.finfo(params[0].dtype).eps
    matrices = [p for p in params if p.grad.dim() > 1]
    vectors = [p for p in params if p.grad.dim() <= 1]
    return [({"factored": True, "eps1": eps1}, matrices), ({"factored": False, "eps1": eps1}, vectors)]


def refuse_empty(p: torch.Tensor) -> None:
    """torch's step divides by the RMS's element count: a parameter with no elements raises, here
    before anything moves."""
    if p.numel() == 0:
        raise ZeroDivisionError(f"float division by zero (Adafactor's RMS of a parameter with no elements, shape {tuple(p.shape)})")


def _state_shape(p: torch.Tensor, name: str, group: dict) -> tuple:
    shape = tuple(p.shape)
    if name == "row_var":
        return (*shape[:-1], 1)
    return (*shape[:-2], 1, shape[-1]) if name == "col_var" else shape


def _step_scalars(group: dict, t: float) -> dict:
    r""":math:`1-\hat\beta_{2,t}` and :math:`\rho_t` (the tensor ``lr`` itself where it is the smaller)."""
    rho = min(squeeze_scalar(group["lr"]), 1 / (t**0.5))
    return {"new_weight": t ** group["beta2_decay"], "rho": float(rho), "lr_rounds": isinstance(rho, torch.Tensor)}


def _scalars(group: dict, context: dict) -> dict:
    lr = group["lr"]
    # a tensor lr's arithmetic with Python floats is in this dtype (the default one for an integer lr)
    return dict(eps1=group["eps1"], eps2=group["eps"][1], d=group["d"], factored=group["factored"],
                lr_dtype=torch.result_type(lr, 1.0) if isinstance(lr, torch.Tensor) else None)


def _wrappers(group: dict, context: dict) -> dict:
    """``maximize`` and the decay (at ``lr`` as given: a tensor's arithmetic is in its dtype, as in torch)."""
    return dict(maximize=group["maximize"], weight_decay=group["weight_decay"], decoupled_weight_decay=True,
                lr=squeeze_scalar(group["lr"]))


def _second_moment(group: dict) -> tuple[str, ...]:
    return ("estimate",) if group["factored"] else ("variance",)


ADAFACTOR_STAGES = Staged(
    name="adafactor",
    state_names=_state_names,
    init=lambda p, group: initial_state(p, p.grad, group),
    program=(Pass(adafactor_statistics, lambda group: ("p", "grad") + (() if group["factored"] else ("variance",)),
                  lambda group: () if group["factored"] else ("variance",)),
             MatrixStage(adafactor_estimate, ("row_var", "col_var"), ("estimate",), when=_factored),
             Pass(adafactor_direction, lambda group: ("p", "g") + _second_moment(group)),
             PerTensor(adafactor_scale, ("step_size",)),
             Pass(adafactor_step, lambda group: ("p", "g") + _second_moment(group), ("p",))),
    scalars=_scalars,
    step_scalars=_step_scalars,
    wrappers=_wrappers,
    state_shape=_state_shape,
    split=_split,
    check=refuse_empty,
)


class Adafactor(StagedOptimizer):
    """Adafactor; see :mod:`torchstep.algorithms.adafactor`."""

    stages = ADAFACTOR_STAGES
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
