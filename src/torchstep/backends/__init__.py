"""Backends run an algorithm's single definition: ``reference`` tensor by tensor, ``fused`` as
one compiled pass over memory per bucket. ``use("reference")`` forces one for a block.

Importing this package installs :func:`.dispatch.run_group_on_backend` as the group runner of
the base class (:mod:`torchstep.core.runner`, which says why ``core`` does not import this
package); ``torchstep/__init__.py`` imports it, so it is installed before any optimizer exists.
"""

from ..core import runner as _runner
from .dispatch import run_group_on_backend, use

_runner.install(run_group_on_backend)

__all__ = ["use"]
