"""Schedules from strings, for the command line: ``schedule_from_spec("warmup_cosine(peak=1e-3, warmup=100,
total=1000, floor=1e-5)")`` or, for torch's classes, ``schedule_from_spec("StepLR(step_size=30, gamma=0.1)",
lr=0.1)``.

Parsing is safe: the string is parsed with :mod:`ast` as one call; the callee must be a known name
and each argument a literal (``ast.literal_eval``) or, recursively, another known call -- so
``Floor(Cosine(1.0, 0.0, 100), 0.1)`` works. Nothing is ever evaluated.
"""

from __future__ import annotations

import ast
from typing import Any, Callable

from . import cycles, recipes, schedule, shapes
from .adapters import cyclic, decay
from .preview import _StandInOptimizer
from .schedule import Schedule

__all__ = ["schedule_from_spec", "SPEC_NAMES"]

_BUILDERS: dict[str, Callable[..., Schedule]] = {
    **{name: getattr(recipes, name) for name in recipes.__all__ if name != "COOLDOWNS"},
    **{name: getattr(shapes, name) for name in shapes.__all__ if name not in ("Lambda", "CumulativeProduct")},
    "Join": schedule.Join, "Scaled": schedule.Scaled, "Floor": schedule.Floor,
    "Cyclic": cycles.Cyclic.from_steps, "OneCycle": cycles.OneCycle, "WarmRestarts": cycles.WarmRestarts,
}
_TORCH_SHAPED = {
    name: getattr(module, name)
    for module, names in ((decay, ("StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR",
                                   "PolynomialLR", "CosineAnnealingLR")),
                          (cyclic, ("CyclicLR", "OneCycleLR", "CosineAnnealingWarmRestarts")))
    for name in names
}
_SETS_OWN_LR = ("CyclicLR", "OneCycleLR")
SPEC_NAMES = tuple(sorted(_BUILDERS)) + tuple(sorted(_TORCH_SHAPED))


def _fail(spec: str, why: str) -> ValueError:
    return ValueError(f"Invalid schedule spec {spec!r}: {why}")


def _value(node: ast.AST, spec: str, lr: float | None) -> Any:
    if isinstance(node, ast.Call):
        return _build(node, spec, lr)
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_value(e, spec, lr) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise _fail(spec, f"argument {ast.unparse(node)!r} is not a literal (numbers, strings, tuples, lists)") from None


def _build(call: ast.Call, spec: str, lr: float | None) -> Schedule:
    if not isinstance(call.func, ast.Name):
        raise _fail(spec, f"{ast.unparse(call.func)!r} is not a schedule name")
    name = call.func.id
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        raise _fail(spec, "*args and **kwargs are not allowed")
    args = [_value(a, spec, lr) for a in call.args]
    kwargs = {k.arg: _value(k.value, spec, lr) for k in call.keywords}
    if name in _BUILDERS:
        return _BUILDERS[name](*args, **kwargs)
    if name in _TORCH_SHAPED:
        base_lr = kwargs.pop("lr", lr)
        if base_lr is None:
            if name not in _SETS_OWN_LR:
                raise _fail(spec, f"{name} scales a base lr: pass lr=... (in the spec or to schedule_from_spec)")
            base_lr = 1.0
        scheduler = _TORCH_SHAPED[name](_StandInOptimizer(base_lr, 0.9), *args, **kwargs)
        return scheduler.schedule(0)
    raise _fail(spec, f"unknown schedule {name!r}; known: {', '.join(SPEC_NAMES)}")


def schedule_from_spec(spec: str, *, lr: float | None = None) -> Schedule:
    """Build a :class:`Schedule` from ``spec`` (see the module docstring).

    ``lr`` is the base lr for torch-shaped names (StepLR, CosineAnnealingLR, ...), which scale it;
    it can also be given in the spec as ``lr=...``.
    """
    try:
        tree = ast.parse(spec.strip(), mode="eval")
    except SyntaxError as err:
        raise _fail(spec, f"not a call expression ({err.msg})") from None
    if not isinstance(tree.body, ast.Call):
        raise _fail(spec, "expected one call such as warmup_cosine(peak=1e-3, warmup=100, total=1000)")
    return _build(tree.body, spec, lr)
