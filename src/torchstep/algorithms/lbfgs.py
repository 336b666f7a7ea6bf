r"""L-BFGS: a quasi-Newton method that builds its inverse-Hessian estimate from recent steps.

All parameters are treated as one flat vector :math:`x` (complex ones as pairs of reals) with
gradient :math:`g`. One call of ``step(closure)`` runs up to ``max_iter`` iterations of

.. math::
    s_{k-1} = x_k - x_{k-1} = t_{k-1} d_{k-1}, \qquad y_{k-1} = g_k - g_{k-1}, \qquad
    \rho_{k-1} = 1 / (y_{k-1}^\top s_{k-1})

(a pair enters the memory only when :math:`y^\top s > 10^{-10}`; at most ``history_size``
pairs are kept, the oldest dropped first), then the two-loop recursion

.. math::
    q \leftarrow -g_k;\quad \text{for } i = k-1 \dots k-m:\ \alpha_i = \rho_i s_i^\top q,\
    q \leftarrow q - \alpha_i y_i

    r \leftarrow H_0 q,\ H_0 = \frac{y_{k-1}^\top s_{k-1}}{y_{k-1}^\top y_{k-1}};\quad
    \text{for } i = k-m \dots k-1:\ \beta_i = \rho_i y_i^\top r,\ r \leftarrow r + (\alpha_i - \beta_i) s_i

gives the direction :math:`d_k = r` (:math:`d_1 = -g_1`), and :math:`x_{k+1} = x_k + t_k d_k`.
The step :math:`t_k` is ``lr`` (the very first one is :math:`\min(1, 1/\|g_1\|_1)\cdot` ``lr``),
or, with ``line_search_fn="strong_wolfe"``, the result of the strong-Wolfe line search of
:mod:`torchstep.algorithms.line_search` started there, with at most ``max_eval`` evaluations in
all (its bracket tolerance stays 1e-9 whatever ``tolerance_change`` is, as in torch).

Iterations stop when ``max_iter`` is reached, the closure has been evaluated ``max_eval`` times,
:math:`\|g\|_\infty \le` ``tolerance_grad``, :math:`g^\top d > -` ``tolerance_change``,
:math:`\|t d\|_\infty \le` ``tolerance_change``, or the loss changes by less than
``tolerance_change``.

Not element-wise: the algorithm stands alone with its own ``step``. Its state is global but,
as in torch, kept under the first parameter: ``func_evals``, ``n_iter``, ``d``, ``t``,
``old_dirs`` (the :math:`y_i`), ``old_stps`` (the :math:`s_i`), ``ro``, ``H_diag``
(:math:`H_0`), ``prev_flat_grad``, ``prev_loss`` and ``al`` (the :math:`\alpha_i`).
DTensor parameters (FSDP2, tensor parallel): the flat vectors are those of the whole tensors --
each gradient is gathered (``full_tensor()``), every rank runs the same iteration on the same
vectors, and each parameter takes its own shard of every step, so the result is that of an
unsharded run. The losses that steer the iteration are made the same on every rank (their mean
over the mesh); the value ``step`` returns is the closure's own. The cost is an unsharded run's
memory on every rank (the gathered gradient, ``d`` and the ``history_size`` pairs) and one
all-gather per parameter and evaluation: meant for the small problems L-BFGS is used on. Plain
parameters beside DTensor ones must have the same gradient on every rank.
References: Liu & Nocedal, "On the limited memory BFGS method for large scale optimization"
(Math. Programming 45, 1989); Nocedal & Wright, *Numerical Optimization*, Algorithm 7.4.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..core import check, dtensors
from ..core.optimizer import Optimizer
from ..core.wrappers import squeeze_scalar
from ._common import lr_checks
from .line_search import strong_wolfe

LINE_SEARCHES = (None, "strong_wolfe")
CURVATURE_FLOOR = 1e-10  # a (y, s) pair with y.s at or below this is not remembered


def flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
    """All gradients as one vector (zeros for a missing gradient, complex as real pairs); a
    DTensor's whole gradient, gathered."""
    pieces = []
    for p in params:
        g = p.grad
        if dtensors.is_dtensor(p):
            piece = torch.zeros(p.numel(), dtype=p.dtype, device=p.device) if g is None else dtensors.gather(g).reshape(-1)
        else:
            piece = p.new_zeros(p.numel()) if g is None else (g.to_dense() if g.is_sparse else g).view(-1)
        pieces.append(torch.view_as_real(piece).view(-1) if torch.is_complex(piece) else piece)
    return torch.cat(pieces, 0)


def move_along(params: list[torch.Tensor], t: Any, d: torch.Tensor) -> None:
    """``x <- x + t * d`` for the flat vector ``x`` the parameters form (a DTensor takes its
    own shard of its piece of ``d``)."""
    offset = 0
    for p in params:
        if dtensors.is_dtensor(p):
            n = p.numel()
            p.add_(dtensors.local_part(d[offset : offset + n].view(p.shape), p), alpha=t)
            offset += n
            continue
        p = torch.view_as_real(p) if torch.is_complex(p) else p
        n = p.numel()
        p.add_(d[offset : offset + n].view_as(p), alpha=t)
        offset += n


def mesh_mean(params: list[torch.Tensor]) -> Callable[[float], float]:
    """The function that makes a loss the same on every rank: with DTensor parameters, its mean
    over the ranks of the first one's mesh (data-parallel ranks see different batches, and the
    gradients FSDP hands back are the mean of theirs); otherwise the loss as it is."""
    mesh = next((p.device_mesh for p in params if dtensors.is_dtensor(p)), None)
    if mesh is None:
        return float

    def mean(loss: Any) -> float:
        value = torch.tensor([float(loss)], dtype=torch.float64)
        for dim in range(mesh.ndim):
            torch.distributed.all_reduce(value, group=mesh.get_group(dim))
            value /= mesh.size(dim)
        return value.item()

    return mean


def lbfgs_direction(g: torch.Tensor, memory: dict, state: dict, history_size: int) -> torch.Tensor:
    """Remember the newest (y, s) pair if it has positive curvature, then run the two-loop
    recursion; ``memory`` holds ``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro``, ``H_diag``."""
    ys_dirs, steps, rho = memory["old_dirs"], memory["old_stps"], memory["ro"]
    y = g.sub(memory["prev_flat_grad"])
    s = memory["d"].mul(memory["t"])
    ys = y.dot(s)
    if ys > CURVATURE_FLOOR:
        if len(ys_dirs) == history_size:
            del ys_dirs[0], steps[0], rho[0]
        ys_dirs.append(y)
        steps.append(s)
        rho.append(1.0 / ys)
        memory["H_diag"] = ys / y.dot(y)
    alpha = state.setdefault("al", [None] * history_size)
    q = g.neg()
    for i in reversed(range(len(ys_dirs))):
        alpha[i] = steps[i].dot(q) * rho[i]
        q.add_(ys_dirs[i], alpha=-alpha[i])
    r = torch.mul(q, memory["H_diag"])
    for i in range(len(ys_dirs)):
        beta = ys_dirs[i].dot(r) * rho[i]
        r.add_(steps[i], alpha=alpha[i] - beta)
    return r


MEMORY_KEYS = ("d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad", "prev_loss")


class LBFGS(Optimizer):
    """L-BFGS over one parameter group; ``step`` needs a closure. See :mod:`torchstep.algorithms.lbfgs`."""

    _load_defaults: dict = {}  # torch's __setstate__ fills in nothing

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search_fn: str | None = None,
    ) -> None:
        lr_checks(lr)
        # as in torch, the iteration limits and tolerances are only compared with at the step: a
        # limit <= 0 (or NaN) means no iteration, a negative tolerance never stops early
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        defaults = dict(
            lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change, history_size=history_size, line_search_fn=line_search_fn,
        )
        super().__init__(params, defaults)
        # in torch's order: the groups first; then what torch only trips over at the step
        if len(self.param_groups) != 1:
            raise ValueError(
                "LBFGS doesn't support per-parameter options (parameter groups) "
                f"(it optimizes exactly one group; got {len(self.param_groups)})"
            )
        # (line_search_fn first: torch's first iteration trips over it, the second over history_size)
        check.one_of(line_search_fn, "line_search_fn", LINE_SEARCHES, "only 'strong_wolfe' is supported", RuntimeError)
        check.history_length(history_size, "history_size")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Run up to ``max_iter`` L-BFGS iterations; returns the loss ``closure()`` gave first."""
        if closure is None:
            raise TypeError("LBFGS.step() requires a closure that re-evaluates the model and returns the loss")
        if len(self.param_groups) != 1:  # a group added by add_param_group, which torch accepts
            raise AssertionError(
                f"Expected exactly one param_group, but got {len(self.param_groups)} "
                "(LBFGS optimizes exactly one parameter group; put every parameter in it)"
            )
        group = self.param_groups[0]
        check.one_of(group["line_search_fn"], "line_search_fn", LINE_SEARCHES, "only 'strong_wolfe' is supported", RuntimeError)
        closure = torch.enable_grad()(closure)
        params = group["params"]
        lr, max_iter, max_eval = squeeze_scalar(group["lr"]), group["max_iter"], group["max_eval"]
        tol_grad, tol_change = group["tolerance_grad"], group["tolerance_change"]
        state = self.state[params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        same_loss = mesh_mean(params)

        def evaluate() -> tuple[float, torch.Tensor]:
            return same_loss(closure()), flat_grad(params)

        def evaluate_along(x0: list[torch.Tensor], t: Any, d: torch.Tensor) -> tuple[float, torch.Tensor]:
            move_along(params, t, d)
            out = evaluate()
            for p, x in zip(params, x0):
                p.copy_(x)
            return out

        first_loss = closure()
        loss, g = same_loss(first_loss), flat_grad(params)
        evals = 1
        state["func_evals"] += 1
        if g.abs().max() <= tol_grad:
            return first_loss
        memory = {k: state.get(k) for k in MEMORY_KEYS}
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            if state["n_iter"] == 1:
                memory.update(d=g.neg(), old_dirs=[], old_stps=[], ro=[], H_diag=1)
            else:
                memory["d"] = lbfgs_direction(g, memory, state, group["history_size"])
            d = memory["d"]
            if memory["prev_flat_grad"] is None:
                memory["prev_flat_grad"] = g.clone(memory_format=torch.contiguous_format)
            else:
                memory["prev_flat_grad"].copy_(g)
            memory["prev_loss"] = prev_loss = loss
            t = memory["t"] = min(1.0, 1.0 / g.abs().sum()) * lr if state["n_iter"] == 1 else lr
            gtd = g.dot(d)
            if gtd > -tol_change:
                break
            used = 0
            if group["line_search_fn"] == "strong_wolfe":
                x0 = [p.clone(memory_format=torch.contiguous_format) for p in params]
                loss, g, t, used = strong_wolfe(
                    lambda step: evaluate_along(x0, step, d), t, d, loss, g, gtd, max_ls=max_eval - evals
                )
                memory["t"] = t
                move_along(params, t, d)
            else:
                move_along(params, t, d)
                if n_iter != max_iter:  # the last iteration's loss is left to the next step
                    (loss, g), used = evaluate(), 1
            evals += used
            state["func_evals"] += used
            if n_iter == max_iter or evals >= max_eval or (used and g.abs().max() <= tol_grad):
                break
            if d.mul(t).abs().max() <= tol_change or abs(loss - prev_loss) < tol_change:
                break
        state.update(memory)
        return first_loss

