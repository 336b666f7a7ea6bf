"""The one seam between ``core`` and the backends: who runs a parameter group's step.

``core`` (the base class, the Algorithm spec, the state layout, checks, wrappers) imports nothing
from :mod:`torchstep.backends`; the backends import ``core``. Yet :meth:`Optimizer.step
<torchstep.core.optimizer.Optimizer.step>` must hand each group to a backend. The dependency is
inverted here: ``core`` declares what it needs -- a :data:`GroupRunner`,
``run(opt, group, grad_scale, plans_of)`` -- and :mod:`torchstep.backends`, when it is imported,
installs its implementation with :func:`install` (the backend choice, fused or reference, the
cautious stage).

``torchstep/__init__.py`` imports :mod:`torchstep.backends`, and Python runs a package's
``__init__`` before any of its submodules, so importing any part of torchstep (even
``torchstep.core.optimizer`` alone) installs the runner before an optimizer can exist. There is
one runner per process; which backend it picks for a step is per thread / task
(:func:`torchstep.backends.use`).
"""

from __future__ import annotations

from typing import Any, Callable

# run(opt, group, grad_scale, plans_of): one step of opt.algorithm over ``group`` (``plans_of``:
# the parameter group whose cached plans to use when ``group`` is a per-step view of it)
GroupRunner = Callable[[Any, dict, Any, dict], None]

_installed: list[GroupRunner] = []


def install(run: GroupRunner) -> None:
    """Make ``run`` the runner of every group step (replacing the one installed before)."""
    _installed[:] = [run]


def run_group(opt: Any, group: dict, grad_scale: Any, plans_of: dict) -> None:
    """Run one step of ``opt.algorithm`` over ``group`` with the installed runner."""
    if not _installed:
        raise RuntimeError("no torchstep backend is installed (import torchstep.backends before stepping)")
    _installed[0](opt, group, grad_scale, plans_of)
