"""Choosing the backend for one group's step.

The fused backend is the default. ``fused=False`` or ``foreach=False`` ask for the tensor-by-tensor
path, as in torch. Where the fused path cannot run -- ``differentiable=True``, no C compiler, a
device or dtype without a kernel, an update the tracer cannot model -- the step uses the
reference path and warns once per optimizer, naming the reason. Sparse or non-contiguous
gradients take the reference path silently (they are a different algorithm path, as in torch).
:func:`run_group_on_backend` is what :mod:`torchstep.backends` installs as the base class's group
runner (:mod:`torchstep.core.runner`). The backend :func:`use` forces is a context variable: each
thread and each asyncio task sees its own, starting from ``TORCHSTEP_BACKEND``.
Staged algorithms (LAMB, LARS, Prodigy, Adafactor, Muon) go through :func:`fused_stages`, with the same choices
and fallbacks (one routine, :func:`_fused_or_fallback`). A group with ``cautious=True`` runs its
ordinary step inside the cautious stage of :mod:`.cautious`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import warnings
from typing import Any, Iterator

import torch

from . import cautious, cpu_kernel, fused, reference, staged
from . import plan as plan_mod

_BACKENDS = ("auto", "fused", "reference", "triton")
_REPEATABLE = ("auto", "fused")  # where a group's fused step may be repeated (see .repeat)
_forced: contextvars.ContextVar[str] = contextvars.ContextVar(
    "torchstep_backend", default=os.environ.get("TORCHSTEP_BACKEND", "auto"))


@contextlib.contextmanager
def use(backend: str) -> Iterator[None]:
    """Run steps inside the block on ``backend``: "auto" (fused where it can run), "fused"
    (same, but a fallback raises instead of warning), "reference", or "triton" (the fused path
    with Triton kernels even for CPU tensors, which needs ``TRITON_INTERPRET=1``: how the CUDA
    kernels are tested without a GPU). The environment variable ``TORCHSTEP_BACKEND`` sets the
    default. The choice holds for the current thread or asyncio task only."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    token = _forced.set(backend)
    try:
        yield
    finally:
        _forced.reset(token)


def _warn_once(opt: Any, reason: str) -> None:
    if _forced.get() in ("fused", "triton"):
        raise RuntimeError(f"{type(opt).__name__}: fused step unavailable ({reason})")
    seen = opt.__dict__.setdefault("_fused_warnings", set())
    if reason not in seen:
        seen.add(reason)
        warnings.warn(f"{type(opt).__name__}: fused step unavailable ({reason}); using the reference path", stacklevel=4)


def _has_non_scalar_tensor(group: dict, options: dict) -> bool:
    """Whether an option of ``group`` (a key of ``options``, the optimizer's defaults; a user's
    own keys are left alone) is a tensor, or holds one as ``betas`` may, of other than one element."""
    for key in options:
        value = group.get(key)
        kind = type(value)
        if kind is tuple:
            if any(isinstance(v, torch.Tensor) and v.numel() != 1 for v in value):
                return True
        elif kind is not list and isinstance(value, torch.Tensor) and value.numel() != 1:
            return True
    return False


def _choose_path(opt: Any, group: dict, grad_mode_matters: bool = True) -> tuple[bool, str | None]:
    """(take the fused path?, the reason to warn about when not). ``grad_mode_matters=False``:
    the choice apart from autograd's current mode (the compiled step decides while tracing)."""
    if _forced.get() == "reference":
        return False, None
    if group.get("fused") is False or group.get("foreach") is False:
        return False, None
    if group.get("differentiable", False):
        return False, "differentiable=True needs autograd to record the update"
    if grad_mode_matters and torch.is_grad_enabled():
        # a group with differentiable=False in an optimizer whose defaults say True: the step
        # runs with autograd on, as torch's does, so the in-place update of a leaf that requires
        # grad fails there as in torch
        return False, None
    if _has_non_scalar_tensor(group, opt.defaults):
        # a hyperparameter tensor of several elements is no kernel scalar: the tensor-by-tensor
        # path meets it as torch's does (and raises what torch raises)
        return False, None
    if _forced.get() != "triton" and cpu_kernel.compiler() is None:
        return False, "no C compiler found (set $CC or install gcc/clang)"
    return True, None


def _unscale(params: list[torch.Tensor], grad_scale: Any) -> None:
    if grad_scale is not None:
        inv = 1.0 / float(grad_scale)
        for g in {id(p.grad): p.grad for p in params if p.grad is not None}.values():  # once per tensor
            g.mul_(inv)


def _warn_leftover(opt: Any, leftover: list[torch.Tensor], force_triton: bool) -> None:
    """Say why parameters the user expected to be fused were not (once per reason)."""
    for p in leftover:
        if p.grad is None or p.grad.is_sparse:
            continue
        if type(p) is plan_mod.DTensor and plan_mod.is_plain(plan_mod.shard_of(p)):
            _warn_once(opt, "DTensor parameters take the reference path here: the gradient or state is laid out "
                            "unlike the parameter (e.g. a Partial gradient), or the algorithm needs whole-tensor reductions")
        elif not plan_mod.is_plain(p):
            _warn_once(opt, f"{type(p).__name__} parameters have no fused kernel")
        elif not fused.can_fuse_device_dtype(p, force_triton):
            _warn_once(opt, f"no fused kernel for {p.device.type} {p.dtype} tensors")


def run_group_on_backend(opt: Any, group: dict, grad_scale: Any = None, plans_of: dict | None = None) -> None:
    """Run one step of ``opt.algorithm`` over ``group`` on the best available backend.

    ``plans_of``: the parameter group whose fused plans to use, when ``group`` is a per-step
    view of it (a dict made afresh each step would otherwise start a new plan every step)."""
    owner = group if plans_of is None else plans_of
    if grad_scale is None and group is owner and _forced.get() in _REPEATABLE:
        entry = opt.__dict__.get("_fused_plans", {}).get(id(group))
        if entry is not None and entry[0] is group:
            repeat = entry[1].get("repeat")
            if repeat is not None and repeat.run(group):
                return
    run = functools.partial(_run_fused_then_reference, owner=owner)
    if group.get("cautious", False):
        cautious.run_cautiously(opt, group, grad_scale, run)
    else:
        run(opt, group, grad_scale)


def _fused_or_fallback(opt: Any, group: dict, owner: dict, run_fused: Any) -> list[torch.Tensor] | None:
    """The one fallback routine of every fused path. Chooses the path for ``group``; on the fused
    path calls ``run_fused(cache, force_triton)`` (``cache``: the plans kept for ``owner``), which
    returns (parameters left for the reference backend, reasons to warn about) or raises
    :class:`~.cpu_kernel.KernelUnavailable` before changing anything. Warns (once per reason)
    and returns the leftover parameters; None when the whole group takes the reference path."""
    use_fused, reason = _choose_path(opt, group)
    if not use_fused:
        if reason is not None:
            _warn_once(opt, reason)
        return None
    force_triton = _forced.get() == "triton"
    cache = plan_mod.held_by(opt, "_fused_plans", owner, dict)
    try:
        leftover, reasons = run_fused(cache, force_triton)
    except cpu_kernel.KernelUnavailable as exc:
        cache.pop("plan", None)
        _warn_once(opt, str(exc))
        return None
    for why in reasons:
        _warn_once(opt, why)
    _warn_leftover(opt, leftover, force_triton)
    return leftover


def _run_fused_then_reference(opt: Any, group: dict, grad_scale: Any = None, *, owner: dict) -> None:
    """The fused kernels over what they can take, the reference path over the rest."""
    repeatable = group is owner and grad_scale is None and _forced.get() in _REPEATABLE
    leftover = _fused_or_fallback(opt, group, owner, lambda cache, force_triton: fused.run_fused_kernels(
        opt, group, cache, grad_scale, force_triton=force_triton, repeatable=repeatable))
    if leftover is None:
        leftover = [p for p in group["params"] if p.grad is not None]
    _unscale(leftover, grad_scale)
    reference.run_tensor_by_tensor(opt, group, leftover)


def fused_stages(opt: Any, group: dict, params: list[torch.Tensor], context: dict, owner: dict | None = None,
                 part: tuple = ()) -> tuple[Any, list[torch.Tensor]]:
    """The fused lane of a staged algorithm's ``group`` for this step, its kernels obtained
    (:func:`~.staged.prepare_lane`), or None; and the parameters left for the reference lane.
    ``owner``: the parameter group whose plans to keep, when ``group`` is a per-step view of one
    part of it (``part`` names the part: each keeps its own plan)."""
    lanes: list = []

    def run_fused(cache: dict, force_triton: bool) -> tuple[list, list]:
        mine = cache.setdefault(("part", part), {}) if part else cache
        try:
            lane, leftover, reasons = staged.prepare_lane(opt, opt.stages, group, params, context, mine, force_triton)
        except cpu_kernel.KernelUnavailable:
            mine.pop("plan", None)
            raise
        lanes.append(lane)
        return leftover, reasons

    leftover = _fused_or_fallback(opt, group, group if owner is None else owner, run_fused)
    if leftover is None:
        return None, params
    return lanes[0], leftover
