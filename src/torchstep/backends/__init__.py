"""Backends run an algorithm's single definition: ``reference`` tensor by tensor, ``fused`` as
one compiled pass over memory per bucket. ``use("reference")`` forces one for a block."""

from .dispatch import use

__all__ = ["use"]
