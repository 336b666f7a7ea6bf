"""Cross-cutting pieces applied around every algorithm's ``update``.

* ``maximize``: the gradient is negated, so the step ascends.
* weight decay, L2 flavour (default): ``g <- g + weight_decay * p``.
* weight decay, decoupled flavour (``decoupled_weight_decay=True``, AdamW):
  ``p <- p * (1 - lr * weight_decay)`` before the update; the gradient is untouched.
* complex parameters: ``p``, ``g`` and the state are viewed as real tensors with a trailing
  dimension of 2, so element-wise math treats real and imaginary parts independently.
"""

from __future__ import annotations

from typing import Any

import torch


def squeeze_scalar(x: Any) -> Any:
    """A hyperparameter as the kernels take it: a Python number as it is, a tensor squeezed to
    0-d (scalar arithmetic then happens in that tensor's dtype, as in torch)."""
    if isinstance(x, torch.Tensor) and x.dim() != 0:
        return x.squeeze()
    return x


def _requires_grad(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.requires_grad


# ``t.add_(x, alpha=a)`` and its kin read a tensor ``a`` as a plain number (and refuse one that
# requires grad). With ``differentiable=True`` a hyperparameter given as a tensor that requires
# grad (``lr``, ``betas``, ``weight_decay``, for meta-learning) must stay in the graph: these
# helpers then multiply it in as a tensor operand. Otherwise they are the single fused op.

def add_(t: torch.Tensor, x: torch.Tensor, *, alpha: Any = 1) -> torch.Tensor:
    """``t += alpha * x`` in place."""
    return t.add_(x * alpha) if _requires_grad(alpha) else t.add_(x, alpha=alpha)


def add(t: torch.Tensor, x: torch.Tensor, *, alpha: Any = 1) -> torch.Tensor:
    """``t + alpha * x``."""
    return t + x * alpha if _requires_grad(alpha) else t.add(x, alpha=alpha)


def addcmul_(t: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, value: Any = 1) -> torch.Tensor:
    """``t += value * a * b`` in place."""
    return t.add_(a * b * value) if _requires_grad(value) else t.addcmul_(a, b, value=value)


def addcdiv_(t: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, value: Any = 1) -> torch.Tensor:
    """``t += value * a / b`` in place."""
    return t.add_(a / b * value) if _requires_grad(value) else t.addcdiv_(a, b, value=value)


def prepare_grad(p: torch.Tensor, g: torch.Tensor, group: dict, *, sparse_weight_decay: bool = True,
                 weight_decay: bool = True) -> torch.Tensor:
    """Apply ``maximize`` and weight decay; returns the gradient ``update`` should see.

    ``sparse_weight_decay=False`` makes a sparse gradient with weight decay an error (Adagrad);
    ``weight_decay=False`` leaves the decay out (for an algorithm that applies it itself).
    """
    if group.get("maximize", False):
        g = -g
    wd = squeeze_scalar(group.get("weight_decay", 0)) if weight_decay else 0
    if isinstance(wd, torch.Tensor) or wd != 0:
        if group.get("decoupled_weight_decay", False):
            p.mul_(1 - squeeze_scalar(group["lr"]) * wd)
        elif g.is_sparse and not sparse_weight_decay:
            raise RuntimeError("weight_decay option is not compatible with sparse gradients")
        elif _requires_grad(wd):
            g = g + p.clone() * wd  # p is about to change in place; its old value is saved
        elif isinstance(wd, torch.Tensor):
            g = g + p * wd
        else:
            g = g.add(p, alpha=wd)
    return g


def as_real(t: torch.Tensor | None) -> torch.Tensor | None:
    """View a complex tensor as real (trailing dim of 2); other tensors pass through."""
    if t is not None and torch.is_complex(t):
        return torch.view_as_real(t)
    return t


def running_max_(buf: torch.Tensor, x: torch.Tensor) -> None:
    """``buf <- max(buf, x)`` in place; keeps the old value alive when autograd needs it."""
    if torch.is_grad_enabled() and (buf.requires_grad or x.requires_grad):
        buf.copy_(torch.maximum(buf.clone(), x))
    else:
        torch.maximum(buf, x, out=buf)
