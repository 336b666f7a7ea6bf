"""One step of a staged algorithm (:mod:`torchstep.core.stages`) over every group of an optimizer.

Per group the parameters with a gradient are checked (dense, real, ``algo.check``), divided
into parts (``algo.split``: each part runs as a group of its own) and get their missing state
before anything moves -- as torch does, so an unsupported tensor leaves the whole step undone.
Each group then runs in up to two lanes: its fused tensors (:class:`~.staged.FusedLane`, chosen
and prepared through :func:`~.dispatch.fused_stages`, which falls back as every fused path does)
and the rest, tensor by tensor (:class:`~.reference_stages.ReferenceLane`). Every lane's kernels
are obtained before any counter is bumped. The program runs segment by segment: at an ``Across``
item every lane's reductions are combined before any lane goes on. A program without one runs
each group's reference lane through the optimizer's ``update_group`` (its literal definition).
"""

from __future__ import annotations

from typing import Any

from ..core import check, stages
from . import dispatch, reference_stages


def _ensure_state(algo: Any, p: Any, group: dict, state: dict) -> None:
    missing = [n for n in algo.state_names(group) if n not in state]
    if algo.counter is not None and "step" not in state:
        missing.append("step")
    if missing:
        initial = algo.init(p, group)
        state.update({n: v for n, v in initial.items() if n in missing})  # in the algorithm's key order


def step(opt: Any) -> None:
    """One step of ``opt.stages`` over every group it takes (see the module docstring)."""
    algo = opt.stages
    context = algo.context(opt)
    with_grad = [(g, [p for p in g["params"] if p.grad is not None]) for g in opt.param_groups]
    for _, params in with_grad:
        for p in params:
            check.dense_real(p, type(opt).__name__)
            if algo.check is not None:
                algo.check(p)
    # a group the algorithm does not take this step (Prodigy's lr=0) still gets its state, as
    # torch's optimizers create state for every parameter with a gradient (DCP's get_state_dict
    # builds the state to load into with an lr=0 step)
    every = [(algo.takes(group), group, view, key, ps) for group, params in with_grad
             for view, key, ps in stages.parts(algo, group, params)]
    for _, _, view, _, params in every:
        for p in params:
            _ensure_state(algo, p, view, opt.state[p])
    taken = [(group, view, key, ps) for takes, group, view, key, ps in every if takes]
    fused_lanes, rest = [], []
    for group, view, key, params in taken:
        lane, leftover = (None, params) if not (params and algo.fusable(view)) else \
            dispatch.fused_stages(opt, view, params, context, owner=group, part=key)
        if lane is not None:
            fused_lanes.append(lane)
        rest.append((view, leftover))
    for lane in fused_lanes:
        lane.begin()
    segments = algo.segments()
    if len(segments) == 1:
        for lane in fused_lanes:
            lane.run(segments[0][0], context)
        for view, params in rest:
            opt.update_group(view, params)
        return
    lanes = fused_lanes + [reference_stages.ReferenceLane(opt, algo, g, ps) for g, ps in rest if ps]
    for lane in lanes[len(fused_lanes):]:
        lane.begin()
    for items, across in segments:
        reductions = [(lane.group, lane.run(items, context)) for lane in lanes]
        if across is not None:
            changed = across.fn(opt, context, reductions)
            if changed is None:
                return
            context.update(changed)
    for lane in lanes:
        lane.end()
