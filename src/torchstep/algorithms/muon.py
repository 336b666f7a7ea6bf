r"""Muon: momentum SGD whose update is orthogonalized by Newton–Schulz iterations (2-D only).

With gradient :math:`G_t`, ``lr`` :math:`\gamma`, ``weight_decay`` :math:`\lambda`, ``momentum``
:math:`\mu`, for a parameter of shape :math:`A \times B`:

.. math::
    B_t = \mu B_{t-1} + (1-\mu) G_t \qquad
    \tilde B_t = (1-\mu) G_t + \mu B_t \text{ if nesterov, else } B_t

    O_t = \mathrm{NS}^{(a,b,c)}_{k}(\tilde B_t;\ \epsilon) \qquad
    \theta_t = (1 - \gamma\lambda)\,\theta_{t-1} - \gamma' O_t

where :math:`\mathrm{NS}` is :func:`torchstep.algorithms.newton_schulz.orthogonalize` with
``ns_coefficients`` :math:`(a, b, c)`, ``ns_steps`` :math:`k` and ``eps`` :math:`\epsilon`, and
the adjusted rate :math:`\gamma'` (``adjust_lr_fn``) is :math:`\gamma\sqrt{\max(1, A/B)}` for
``None`` / ``"original"`` (Jordan) or :math:`0.2\,\gamma\sqrt{\max(A, B)}` for
``"match_rms_adamw"`` (Liu et al.), which gives updates the RMS of AdamW's.

Not element-wise: the momentum is, but the orthogonalization acts on the whole matrix, so Muon
is written as stages (:mod:`torchstep.core.stages`, ``MUON_STAGES``): :func:`muon_momentum` (a
pass: :math:`B_t`, and :math:`\tilde B_t` as a temporary with nesterov), :func:`muon_orthogonalize`
(a matrix stage, torch operations: :math:`O_t` and :math:`-\gamma'`) and :func:`muon_step` (a
pass). The fused backend runs the two passes as kernels. The decay comes from the shared wrapper
(decoupled, at ``lr`` as given).
State: ``momentum_buffer`` (:math:`B`). Dense, real 2-D parameters only; use e.g. AdamW for
biases, embeddings and other parameters.

DTensor parameters (FSDP2 shards dimension 0, tensor parallel dimension 0 or 1): Newton--Schulz
needs the whole matrix, so :func:`muon_orthogonalize` gathers it (``full_tensor()``: one
all-gather of :math:`\tilde B_t` per matrix and step), every rank orthogonalizes the same whole
matrix, and each keeps its own shard of :math:`O_t` (``distribute_tensor`` with
``src_data_rank=None``: a local slice, no communication). The result is bit-for-bit that of an
unsharded run; the cost is the all-gather (the matrix's bytes on every rank, transiently) and the
iteration computed redundantly on every rank of the mesh (world-size times the unsharded FLOPs in
all). Spreading the matrices over the ranks instead (each orthogonalized by one rank, then
scattered: the Muon/Dion authors' layout) divides that compute by the world size at the price of
a scatter per matrix and a step-wide schedule; it is not done here.
References: Jordan et al., "Muon: An optimizer for hidden layers in neural networks" (2024),
https://kellerjordan.github.io/posts/muon/ ; Liu et al., "Muon is Scalable for LLM Training"
(arXiv:2502.16982, 2025).
"""

from __future__ import annotations

import math
import operator

import torch

from ..core import check, dtensors
from ..core.stages import MatrixStage, Pass, Staged
from ..core.wrappers import squeeze_scalar
from .newton_schulz import (
    DEFAULT_COEFFICIENTS,
    DEFAULT_EPS,
    DEFAULT_STEPS,
    orthogonalize,
)
from .stage_optimizer import StagedOptimizer

LR_ADJUSTMENTS = (None, "original", "match_rms_adamw")
MAX_NS_STEPS = 100


def adjusted_lr(lr, adjust_lr_fn: str | None, shape: torch.Size):
    """``lr`` scaled for a matrix of ``shape`` so updates of any aspect ratio have a like RMS."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * (0.2 * math.sqrt(max(rows, cols)))
    # another value can only come from a parameter group (the constructor refuses it); torch's
    # step then leaves lr unadjusted, and so does this
    return lr * 1.0


def muon_momentum(p, g, momentum_buffer, direction=None, *, momentum, nesterov) -> None:
    r"""Pass 1: :math:`B_t`; with nesterov, :math:`\tilde B_t` into the temporary ``direction``."""
    momentum_buffer.lerp_(g, 1 - momentum)
    if nesterov:
        direction.copy_(g.lerp(momentum_buffer, momentum))


def muon_orthogonalize(p, momentum_buffer, direction=None, *, ns_coefficients, ns_steps, eps, lr, adjust_lr_fn) -> dict:
    r"""Matrix stage: :math:`O_t`, computed in bfloat16, in the parameter's dtype (the kernels read
    one dtype; exact for bfloat16, float32 and float64 parameters, a float16 one sees it rounded)
    and the step's factor :math:`-\gamma'`. A DTensor's matrix is gathered whole first and
    every rank keeps its own shard of :math:`O_t` (see the module docstring)."""
    source = dtensors.gather(momentum_buffer if direction is None else direction)
    update = orthogonalize(source, ns_coefficients, ns_steps, eps).to(p.dtype)
    return {"update": dtensors.local_part(update, p), "step_size": -adjusted_lr(lr, adjust_lr_fn, p.shape)}


def muon_step(p, update, *, step_size) -> None:
    r"""Pass 2: :math:`\theta_t = \theta - \gamma' O_t` (the decay came with pass 1)."""
    p.add_(update, alpha=step_size)


def require_matrix(p: torch.Tensor) -> None:
    if p.ndim != 2:
        raise ValueError(
            f"Muon only supports 2D parameters whereas we found a parameter with size: {p.size()} "
            "(every parameter must be a 2-D matrix; optimize biases, embeddings and other "
            "parameters with another optimizer such as AdamW)"
        )


def require_matrix_gradient(p: torch.Tensor) -> None:
    if p.grad.ndim != 2:
        raise ValueError(
            f"Param gradient must be a 2D matrix (a parameter of shape {tuple(p.shape)} reached Muon's "
            "step; Muon optimizes 2-D matrices only)"
        )


def _scalars(group: dict, context: dict) -> dict:
    return {**{k: group[k] for k in ("momentum", "nesterov", "ns_coefficients", "ns_steps", "eps", "adjust_lr_fn")},
            "lr": squeeze_scalar(group["lr"])}


def _nesterov(group: dict) -> tuple[str, ...]:
    return ("direction",) if group["nesterov"] else ()


MUON_STAGES = Staged(
    name="muon",
    state_names=lambda group: ("momentum_buffer",),
    init=lambda p, group: {"momentum_buffer": torch.zeros_like(p.grad, memory_format=torch.preserve_format)},
    program=(Pass(muon_momentum, ("p", "g", "momentum_buffer"), ("momentum_buffer",), makes=_nesterov),
             MatrixStage(muon_orthogonalize, ("p", "momentum_buffer"), ("update",), ("step_size",)),
             Pass(muon_step, ("p", "update"), ("p",))),
    scalars=_scalars,
    counter=None,
    wrappers=lambda group, context: dict(weight_decay=group["weight_decay"], decoupled_weight_decay=True,
                                         lr=squeeze_scalar(group["lr"])),
    check=require_matrix_gradient,
)


class Muon(StagedOptimizer):
    """Muon for 2-D parameters; see :mod:`torchstep.algorithms.muon`."""

    stages = MUON_STAGES

    _load_defaults: dict = {}  # torch's __setstate__ fills in nothing

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = DEFAULT_COEFFICIENTS,
        eps: float = DEFAULT_EPS,
        ns_steps: int = DEFAULT_STEPS,
        adjust_lr_fn: str | None = None,
    ) -> None:
        check.tensor_scalar(lr, "lr")
        check.should_be(lr, "lr", "Learning rate", ">=", 0)
        check.should_be(momentum, "momentum", "momentum", ">=", 0)
        check.should_be(weight_decay, "weight_decay", "weight decay", ">=", 0)
        check.one_of(adjust_lr_fn, "adjust_lr_fn", LR_ADJUSTMENTS, f"Adjust learning rate function {adjust_lr_fn} is not supported")
        # torch checks these at the step, in this order; the same exception types here. A
        # negative ns_steps means no iteration and any eps clamps, as in torch.
        if check.holds(lambda n: n >= MAX_NS_STEPS, ns_steps, "ns_steps", f"an integer < {MAX_NS_STEPS}"):
            raise ValueError(f"Number of steps must be less than 100 for computational efficiency (ns_steps={ns_steps!r})")
        check.pair(ns_coefficients, "ns_coefficients", "(a, b, c)", 3, "Coefficients must be a tuple of exactly 3 values")
        check.holds(operator.index, ns_steps, "ns_steps", f"an integer < {MAX_NS_STEPS}")
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_coefficients=ns_coefficients,
            eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
        )
        super().__init__(params, defaults)
        # as torch: the parameters given here are checked now; a group added later is checked
        # when its gradients reach the step (``require_matrix_gradient``)
        for group in self.param_groups:
            for p in group["params"]:
                require_matrix(p)
