"""Choosing the backend for one group's step.

The fused backend is the default. ``fused=False`` or ``foreach=False`` ask for the tensor-by-tensor
path, as in torch. Where the fused path cannot run -- ``differentiable=True``, no C compiler, a
device or dtype without a kernel, an update the tracer cannot model -- the step uses the
reference path and warns once per optimizer, naming the reason. Sparse or non-contiguous
gradients take the reference path silently (they are a different algorithm path, as in torch).
Per-tensor algorithms with fused stages (LAMB, LARS) go through :func:`fused_stages`, with the
same choices and fallbacks. A group with ``cautious=True`` runs its ordinary step inside the cautious stage of
:mod:`torchstep.core.cautious`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from typing import Any, Iterator

import torch

from ..core import cautious
from . import cpu_kernel, fused, reference, staged
from .trace import NotTraceable

_untraceable: dict[str, str] = {}
_BACKENDS = ("auto", "fused", "reference", "triton")
_forced: list[str] = [os.environ.get("TORCHSTEP_BACKEND", "auto")]


@contextlib.contextmanager
def use(backend: str) -> Iterator[None]:
    """Run steps inside the block on ``backend``: "auto" (fused where it can run), "fused"
    (same, but a fallback raises instead of warning), "reference", or "triton" (the fused path
    with Triton kernels even for CPU tensors, which needs ``TRITON_INTERPRET=1``: how the CUDA
    kernels are tested without a GPU). The environment variable ``TORCHSTEP_BACKEND`` sets the
    default."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    _forced.append(backend)
    try:
        yield
    finally:
        _forced.pop()


def _warn_once(opt: Any, reason: str) -> None:
    if _forced[-1] in ("fused", "triton"):
        raise RuntimeError(f"{type(opt).__name__}: fused step unavailable ({reason})")
    seen = opt.__dict__.setdefault("_fused_warnings", set())
    if reason not in seen:
        seen.add(reason)
        warnings.warn(f"{type(opt).__name__}: fused step unavailable ({reason}); using the reference path", stacklevel=4)


def _fused_off(opt: Any, group: dict) -> tuple[bool, str | None]:
    """(use the fused path?, reason to warn about when not)."""
    if _forced[-1] == "reference":
        return False, None
    if group.get("fused") is False or group.get("foreach") is False:
        return False, None
    if group.get("differentiable", False):
        return False, "differentiable=True needs autograd to record the update"
    name = getattr(getattr(opt, "algorithm", None), "name", None)
    if name in _untraceable:
        return False, _untraceable[name]
    if _forced[-1] != "triton" and cpu_kernel.compiler() is None:
        return False, "no C compiler found (set $CC or install gcc/clang)"
    return True, None


def _unscale(params: list[torch.Tensor], grad_scale: Any) -> None:
    if grad_scale is not None:
        inv = 1.0 / float(grad_scale)
        for p in params:
            if p.grad is not None:
                p.grad.mul_(inv)


def step_group(opt: Any, group: dict, grad_scale: Any = None, plans_of: dict | None = None) -> None:
    """Run one step of ``opt.algorithm`` over ``group`` on the best available backend.

    ``plans_of``: the parameter group whose fused plans to use, when ``group`` is a per-step
    view of it (a dict made afresh each step would otherwise start a new plan every step)."""
    owner = group if plans_of is None else plans_of
    run = functools.partial(_step_group, owner=owner)
    if group.get("cautious", False):
        cautious.step_group(opt, group, grad_scale, run)
    else:
        run(opt, group, grad_scale)


def _step_group(opt: Any, group: dict, grad_scale: Any = None, *, owner: dict) -> None:
    use_fused, reason = _fused_off(opt, group)
    if use_fused:
        steps = opt.__dict__.setdefault("_fused_plans", {}).setdefault(id(owner), {})
        try:
            leftover = fused.step_group(opt, group, steps, grad_scale, force_triton=_forced[-1] == "triton")
        except NotTraceable as exc:
            _untraceable[opt.algorithm.name] = f"the update uses an operation the tracer does not model: {exc}"
            _warn_once(opt, _untraceable[opt.algorithm.name])
            leftover = None
        except cpu_kernel.CompilerUnavailable as exc:
            _warn_once(opt, str(exc))
            leftover = None
        if leftover is None:  # nothing was updated: the whole group goes the reference way
            leftover = [p for p in group["params"] if p.grad is not None]
        for p in leftover:
            if p.grad is not None and not p.grad.is_sparse and not fused.can_fuse_device_dtype(p, _forced[-1] == "triton"):
                _warn_once(opt, f"no fused kernel for {p.device.type} {p.dtype} tensors")
        _unscale(leftover, grad_scale)
        reference.step_group(opt, group, leftover)
        return
    if reason is not None:
        _warn_once(opt, reason)
    params = [p for p in group["params"] if p.grad is not None]
    _unscale(params, grad_scale)
    reference.step_group(opt, group, params)


def fused_stages(opt: Any, group: dict, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Run ``opt.fused_group(group, params, force_triton, cache)`` (a per-tensor algorithm's fused
    passes) over the parameters it can take; returns those left for its per-tensor path."""
    use_fused, reason = _fused_off(opt, group)
    if not use_fused:
        if reason is not None:
            _warn_once(opt, reason)
        return params
    force_triton = _forced[-1] == "triton"
    plans = opt.__dict__.setdefault("_fused_plans", {})
    plan = plans.get((id(group), force_triton))
    if plan is None or plan.still_valid(params, plan.names) is None:
        plan = plans[(id(group), force_triton)] = staged.StagePlan.build(opt, params, force_triton)
        for p in plan.leftover:
            if not fused.can_fuse_device_dtype(p, force_triton):
                _warn_once(opt, f"no fused kernel for {p.device.type} {p.dtype} tensors")
    if plan.params:
        try:
            opt.fused_group(group, plan.params, force_triton, plan.cache)
        except cpu_kernel.CompilerUnavailable as exc:  # in practice at the first kernel, before any write
            _warn_once(opt, str(exc))
            return params
    return plan.leftover
