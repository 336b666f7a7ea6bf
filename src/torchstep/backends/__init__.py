"""Backends run an algorithm's single definition: ``reference`` tensor by tensor, ``fused`` as
one compiled pass over memory per bucket. ``use("reference")`` forces one for a block.

Importing this package installs :func:`.dispatch.run_group_on_backend` as the group runner of
the base class (:mod:`torchstep.core.runner`, which says why ``core`` does not import this
package); ``torchstep/__init__.py`` imports it, so it is installed before any optimizer exists; likewise the traced step torch.compile uses
(:mod:`.compiled`).
"""

from ..core import runner as _runner
from .compiled import prepare as _prepare_traced, run_traced as _run_traced
from .dispatch import run_group_on_backend, use

_runner.install(run_group_on_backend)
_runner.install_traced(_run_traced, _prepare_traced)

__all__ = ["use"]
