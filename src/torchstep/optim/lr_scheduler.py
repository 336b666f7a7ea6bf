"""``torch.optim.lr_scheduler``, re-implemented: the same 15 schedulers, names, arguments and
state_dict format, as thin adapters over the closed-form schedules of :mod:`torchstep.schedules`.

``ScheduledLR`` (extra) runs any torchstep ``Schedule`` -- e.g. ``warmup_cosine(...)`` -- as an
``LRScheduler``.
"""

from torchstep.schedules.adapters import (ChainedScheduler, ConstantLR, CosineAnnealingLR,
                                          CosineAnnealingWarmRestarts, CyclicLR, ExponentialLR, LambdaLR,
                                          LinearLR, LRScheduler, MultiplicativeLR, MultiStepLR, OneCycleLR,
                                          PolynomialLR, ReduceLROnPlateau, ScheduledLR, SequentialLR, StepLR,
                                          _LRScheduler)
from torchstep.schedules.adapters.base import EPOCH_DEPRECATION_WARNING  # noqa: F401 (torch has it here too)

__all__ = [
    "LambdaLR", "MultiplicativeLR", "StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR",
    "SequentialLR", "CosineAnnealingLR", "ChainedScheduler", "ReduceLROnPlateau", "CyclicLR",
    "CosineAnnealingWarmRestarts", "OneCycleLR", "PolynomialLR", "LRScheduler", "ScheduledLR",
]
