r"""Cautious updates: keep only the step components that agree in sign with the gradient.

For any element-wise algorithm whose step is :math:`\theta_t = \theta_{t-1} - \gamma u_t`, the
cautious variant (Liang et al., "Cautious Optimizers: Improving Training with One Line of Code",
arXiv:2411.16085, 2024) takes instead

.. math::
    \phi_t = \mathbb{1}[u_t \circ g_t > 0] \qquad
    \theta_t = \theta_{t-1} - \gamma\, \frac{d}{\lVert\phi_t\rVert_0 + 1}\; \phi_t \circ u_t

per tensor of :math:`d` elements: components whose update points against the gradient are
dropped, and the rest are scaled up by (about) the inverse of the mask's mean, so the step keeps
its size. :math:`g_t` is the gradient the algorithm sees (after ``maximize`` and L2 weight
decay); decoupled weight decay is applied in full; the state (momenta, ...) is updated exactly
as without the option. The :math:`d / (\lVert\phi\rVert_0 + 1)` rescaling is the authors'
reference code's.

Turn it on with ``cautious=True`` (the modern algorithms' constructors take it), with
``"cautious": True`` in a parameter group of any optimizer built on an
:class:`~torchstep.core.algorithm.Algorithm` (``torchstep.optim.Adam``, ``SGD``, ...), or with
:func:`make_cautious`. Optimizers with a step of their own (LBFGS, Adafactor, Muon, Lamb, ...)
never read the group key; :func:`make_cautious` refuses them.

How it runs: the mask mean is a reduction over each whole tensor, so this is an explicit stage
around the group's ordinary step, not part of its single fused pass. Per parameter, the stage
keeps :math:`\theta'` (:math:`\theta_{t-1}` after decoupled decay), computes the prepared
gradient and creates any missing state; it then zeroes the parameter, hands the backend that gradient, and runs the
algorithm unchanged (fused kernel or reference path): what lands in the parameter is the
increment :math:`-\gamma u_t` itself, exact in the parameter's precision (no component is lost
to rounding against :math:`\theta`, which matters in float32 and more in bfloat16). Finally
:math:`\theta_t = \theta' - \gamma\frac{d}{\lVert\phi\rVert_0+1}\,\phi \circ u_t` and the
original gradient is put back. So no algorithm's math is written twice, but the option needs
updates that move :math:`\theta` by an increment that does not depend on :math:`\theta` -- every
momentum method does; ASGD and the Schedule-Free methods do not, and are refused (checked once
per update structure, by tracing the update). Costs: two extra parameter-sized buffers during
the step and a few more passes over memory. Dense gradients only; ``differentiable=True`` is not
supported.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..core import wrappers
from ..core.state import ensure_state
from .memo import FunctionCache, scalar_structure
from .trace import NotTraceable, Program, trace

_increment_only = FunctionCache()  # update function -> {structure: moves by increments?}


def adds_an_increment(program: Program, name: str = "p") -> bool:
    """Whether ``program`` writes ``name`` as its old value plus terms that do not read it, and
    nothing else it writes reads ``name``."""
    chain, tainted = {program.input_node(name)}, set()  # chain: the input plus increments free of it
    for node in range(len(program.nodes)):
        touched = [a for a in program.operands(node) if a in chain or a in tainted]
        if len(touched) == 1 and touched[0] in chain and touched[0] in program.accumulators(node):
            chain.add(node)
        elif touched:
            tainted.add(node)
    return program.final(name) in chain and not any(
        j in chain or j in tainted for n, j in program.outputs.items() if n != name)


def moves_by_increments(algo: Any, group: dict) -> bool:
    """Whether ``algo``'s update only adds to ``p`` terms that do not depend on ``p`` (and nothing
    else reads ``p``): traced once per update function and structure, at a step past the first."""
    scalars = algo.scalars(group, 2.0 if algo.counts_steps else None, False)
    if algo.advance is not None:
        scalars = {**scalars, **algo.advance(scalars, **{n: torch.ones(()) for n in algo.scalar_state})}
    names = algo.elementwise_names(group)
    structure = (names, scalar_structure(scalars))
    found = _increment_only.get(algo.update, structure)
    if found is None:
        try:
            program = trace(lambda p, g, **rest: algo.update(p, g, **rest), ["p", "g", *names], ["p", *names],
                            scalars)
        except NotTraceable:  # cannot be checked, so not taken
            found = False
        else:
            found = adds_an_increment(program)
        _increment_only.put(algo.update, structure, found)
    return found


def _prepare(p: torch.Tensor, group: dict, grad_scale: Any, algo: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(a copy of ``p`` after decoupled weight decay, the gradient as the update sees it)."""
    if p.grad.is_sparse:
        raise RuntimeError(
            f"cautious updates need dense gradients (a parameter of shape {tuple(p.shape)} has a sparse "
            "gradient; set cautious=False for this parameter group)"
        )
    start = p.detach().clone()
    grad = p.grad if grad_scale is None else p.grad / grad_scale
    return start, wrappers.prepare_grad(start, grad, group, weight_decay=not algo.applies_weight_decay)


def _backend_grad(grad: torch.Tensor, group: dict, grad_scale: Any) -> torch.Tensor:
    """What to leave in ``p.grad`` so the backend, unscaling and negating for ``maximize`` (and
    adding L2 decay of the zeroed ``p``: nothing), arrives at ``grad``."""
    out = -grad if group.get("maximize", False) else grad
    return out if grad_scale is None else out * grad_scale  # the backend unscales a copy in place


def mask_step_(p: torch.Tensor, start: torch.Tensor, grad: torch.Tensor) -> None:
    """``p`` holds the increment; set it to ``start`` plus the increment's components agreeing
    with ``grad`` (the increment is -lr * u, so u * g > 0 means increment * g < 0), rescaled."""
    p, start, grad = wrappers.as_real(p), wrappers.as_real(start), wrappers.as_real(grad)
    agree = p.mul(grad).lt_(0)
    scale = agree.numel() / (agree.sum(dtype=torch.float64) + 1)
    p.copy_(start.add_(agree.mul_(p).mul_(scale)))


def run_cautiously(opt: Any, group: dict, grad_scale: Any, run: Callable[[Any, dict, Any], None]) -> None:
    """Run ``run(opt, group, grad_scale)`` -- the group's ordinary step on any backend -- as a
    cautious step (see the module docstring)."""
    if group.get("differentiable", False):
        raise RuntimeError("cautious updates do not support differentiable=True (set one of them to False)")
    if not moves_by_increments(opt.algorithm, group):
        raise ValueError(
            f"{type(opt).__name__} cannot take cautious updates (cautious=True): its update does more to "
            "the parameter than add an increment independent of it"
        )
    scale = None if grad_scale is None else float(grad_scale)
    params = [p for p in group["params"] if p.grad is not None]
    names = opt.algorithm.state_names(group)
    with torch.no_grad():
        kept = [(p, p.grad, *_prepare(p, group, scale, opt.algorithm)) for p in params]
        for p, _, _, grad in kept:
            ensure_state(opt.algorithm, p, group, opt.state[p], names)  # state starts from the real p
            p.grad = _backend_grad(grad, group, scale)
            p.zero_()
    try:
        run(opt, group, grad_scale)
    finally:
        with torch.no_grad():
            for p, original, start, grad in kept:
                mask_step_(p, start, grad)
                p.grad = original


def make_cautious(optimizer: Any) -> Any:
    """Turn on cautious updates for every group of ``optimizer`` (and groups added later);
    returns the optimizer. It must be a torchstep optimizer built on an element-wise
    :class:`~torchstep.core.algorithm.Algorithm` whose update moves by increments."""
    algo = getattr(optimizer, "algorithm", None)
    if algo is None or not all(moves_by_increments(algo, group) for group in optimizer.param_groups):
        raise TypeError(
            f"make_cautious needs a torchstep optimizer whose element-wise update adds an increment to each "
            f"parameter (Adam, SGD, Lion, ...); {type(optimizer).__name__} is not one"
        )
    optimizer.defaults["cautious"] = True
    for group in optimizer.param_groups:
        group["cautious"] = True
    return optimizer
