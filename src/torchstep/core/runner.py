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


def group_runner() -> GroupRunner:
    """The installed runner (called directly by the step, so a warning's ``stacklevel`` counts
    no frame of this module)."""
    if not _installed:
        raise RuntimeError("no torchstep backend is installed (import torchstep.backends before stepping)")
    return _installed[0]


# The traced step (torch.compile): ``prepare(opt, group, params, grads, states, steps, fresh)``
# runs eagerly while dynamo traces (as ``Optimizer._init_group``): it creates state, fills the
# lists and returns a constant; ``run(opt, group)`` is traced and puts the group's step in the graph.
TracedPrepare = Callable[..., Any]
TracedRunner = Callable[[Any, dict], None]

_traced: list[tuple[TracedRunner, TracedPrepare]] = []


def install_traced(run: TracedRunner, prepare: TracedPrepare) -> None:
    """Make ``run`` / ``prepare`` the traced group step and its eager preparation."""
    _traced[:] = [(run, prepare)]


def traced_runner() -> TracedRunner:
    """The installed traced group step (see :func:`install_traced`)."""
    if not _traced:
        raise RuntimeError("no torchstep traced step is installed (import torchstep.backends before stepping)")
    return _traced[0][0]


def traced_prepare() -> TracedPrepare:
    """The installed eager preparation of a traced group step."""
    if not _traced:
        raise RuntimeError("no torchstep traced step is installed (import torchstep.backends before stepping)")
    return _traced[0][1]
