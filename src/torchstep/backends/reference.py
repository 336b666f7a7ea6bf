"""The reference backend: runs an :class:`~torchstep.core.algorithm.Algorithm` tensor by tensor.

It is the oracle every faster path is tested against, and the path that supports
``differentiable=True`` (autograd records the in-place updates when the step runs with grad
enabled). Per parameter it: creates state on first use, increments ``step``, applies the
cross-cutting wrappers (maximize, weight decay, complex-as-real), runs ``advance`` on the 0-d
per-parameter state if the algorithm has any, and calls ``update``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import lowbit, wrappers
from ..core.state import ensure_state


def run_tensor_by_tensor(opt: Any, group: dict, params: list[torch.Tensor] | None = None) -> None:
    """One step of ``opt.algorithm`` over the parameters of ``group`` (or the listed subset)
    that have a gradient."""
    algo = opt.algorithm
    names = algo.state_names(group)
    cache: dict[Any, dict] = {}
    todo = [p for p in (group["params"] if params is None else params) if p.grad is not None]
    for p in todo:
        if p.grad.is_sparse and algo.sparse_update is None:
            raise RuntimeError(algo.sparse_error)
    # state is created for every parameter before any is updated, as torch does: a tensor listed
    # twice sees its first step as a first step both times (SGD's momentum buffer)
    created: dict[int, bool] = {}
    for p in todo:
        if id(p) not in created:
            created[id(p)] = ensure_state(algo, p, group, opt.state[p], names)
    firsts = [created[id(p)] for p in todo]
    low = lowbit.active(group)
    numbers = opt._param_numbers() if low else {}
    for p, first in zip(todo, firsts):
        g = p.grad
        state = opt.state[p]
        step: Any = None
        if algo.counts_steps:
            state["step"] += 1
            step = state["step"].item()
        key = (step, first)
        if key not in cache:
            cache[key] = algo.scalars(group, step, first)
        scalars = cache[key]
        if low:
            update_in_low_precision(algo, p, g, state, names, group, scalars, numbers.get(id(p), -1))
            continue
        g = wrappers.prepare_grad(p, g, group, sparse_weight_decay=algo.sparse_weight_decay,
                                  weight_decay=not algo.applies_weight_decay)
        tensors = {n: state[n] for n in names}
        if torch.is_grad_enabled():
            # differentiable: each step writes fresh state tensors, so the values earlier steps
            # recorded for backward are never overwritten in place
            tensors = {n: t.clone() for n, t in tensors.items()}
            state.update(tensors)
        if algo.advance is not None:
            scalars = {**scalars, **algo.advance(scalars, **{n: tensors.pop(n) for n in algo.scalar_state})}
        if g.is_sparse:
            algo.sparse_update(p, g, **tensors, **scalars)
        else:
            real = {n: wrappers.as_real(t) for n, t in tensors.items()}
            algo.update(wrappers.as_real(p), wrappers.as_real(g), **real, **scalars)


def update_in_low_precision(algo: Any, p: torch.Tensor, g: torch.Tensor, state: dict, names: tuple, group: dict,
                            scalars: dict, number: int) -> None:
    """One parameter's step under the options of :mod:`torchstep.core.lowbit`, written from their
    definitions (the oracle of the fused kernels): the state is read in full precision, the
    update runs as usual -- in float32 for a bfloat16 parameter rounded stochastically or with
    Kahan compensation -- and the state is written back in its form, the parameter rounded as
    asked."""
    how = lowbit.rounding(p, group)
    half = p.dtype in (torch.bfloat16, torch.float16)  # computed in float32, as the kernels do
    work = torch.float32 if half else p.dtype
    pw = p.detach().to(work) if half else p
    old = pw.clone() if how == "kahan" else None
    gw = g.to(work) if half else g
    gw = wrappers.prepare_grad(pw, gw, group, sparse_weight_decay=algo.sparse_weight_decay,
                               weight_decay=not algo.applies_weight_decay)
    element = [n for n in names if n not in algo.scalar_state]
    tensors = {n: lowbit.full_value(algo, state, n, p, work) for n in element}
    if algo.advance is not None:
        scalars = {**scalars, **algo.advance(scalars, **{n: state[n] for n in algo.scalar_state})}
    if gw.is_sparse:
        algo.sparse_update(pw, gw, **tensors, **scalars)
    else:
        algo.update(wrappers.as_real(pw), wrappers.as_real(gw), **{n: wrappers.as_real(t) for n, t in tensors.items()},
                    **scalars)
    local = lowbit.local_of
    stochastic = {n for n in tensors if lowbit.stochastic_state(lowbit.form_of(algo, p, group, n), p.dtype, how)}
    if stochastic or how == "sr":  # the rounding bits' key and this shard's first element, when bits are drawn
        key = lowbit.tensor_key(lowbit.seed(group), int(group.get("rounding_step", 0)), number)
        first = lowbit.element_offset(p)
    for n, t in tensors.items():
        bits = None
        if n in stochastic:
            operand = 2 + element.index(n)  # as the kernels number their operands: p, g, then the state
            bits = lowbit.random_bits(lowbit.state_key(key, operand), local(p).numel(), p.device, first)
        lowbit.write_value(algo, state, n, p, t, bits)
    if how == "sr":
        bits = lowbit.random_bits(key, local(p).numel(), p.device, first)
        local(p).copy_(lowbit.round_stochastic(local(pw).float(), bits).view(local(p).shape))
    elif how == "kahan":
        lowbit.kahan_write(local(p), local(old), local(pw), local(state[lowbit.KAHAN]))
    elif half:
        p.copy_(pw)
