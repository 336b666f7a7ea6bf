"""Learning-rate (and any hyperparameter) schedules as pure functions of the step.

* :mod:`.schedule` -- the ``Schedule`` type and composition as data: ``Join``, ``Scaled``, ``Floor``.
* :mod:`.shapes`, :mod:`.cycles` -- the closed forms, one formula each, in their docstrings.
* :mod:`.recipes` -- the modern schedules: warmup + cosine / linear / constant / exponential /
  inverse-sqrt decay, warmup-stable-decay.
* :mod:`.hyperparam` -- ``ScheduleHyperparam``: any group key (momentum, betas, weight_decay) on a schedule.
* :mod:`.preview`, :mod:`.spec` -- values and plots without an optimizer; schedules from strings.
* :mod:`.adapters` -- torch's scheduler classes (``torchstep.optim.lr_scheduler``).
"""

from .cycles import Cyclic, OneCycle, WarmRestarts, restart_position
from .hyperparam import ScheduleHyperparam
from .preview import plot, preview, preview_scheduler
from .recipes import (warmup_constant, warmup_cosine, warmup_exponential, warmup_inverse_sqrt, warmup_linear,
                      wsd)
from .schedule import Floor, Join, Scaled, Schedule
from .shapes import (Constant, Cosine, CumulativeProduct, Exponential, InverseSqrt, Lambda, Linear,
                     MultiStepDecay, OneMinusSqrt, Polynomial, StepDecay)
from .spec import schedule_from_spec

__all__ = [
    "Schedule", "Join", "Scaled", "Floor",
    "Constant", "Linear", "Cosine", "Exponential", "StepDecay", "MultiStepDecay", "Polynomial",
    "InverseSqrt", "OneMinusSqrt", "Lambda", "CumulativeProduct",
    "Cyclic", "OneCycle", "WarmRestarts", "restart_position",
    "warmup_constant", "warmup_cosine", "warmup_linear", "warmup_exponential", "warmup_inverse_sqrt", "wsd",
    "ScheduleHyperparam", "preview", "preview_scheduler", "plot", "schedule_from_spec",
]
