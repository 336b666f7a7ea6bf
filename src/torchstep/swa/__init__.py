"""Stochastic weight averaging: averaged models, BatchNorm re-estimation and the SWA lr schedule.

The public path is :mod:`torchstep.optim.swa_utils` (``torch.optim.swa_utils``'s counterpart).
"""

from .averaged_model import AveragedModel
from .averages import get_ema_avg_fn, get_ema_multi_avg_fn, get_swa_avg_fn, get_swa_multi_avg_fn
from .batchnorm import update_bn
from .swalr import SWALR

__all__ = ["AveragedModel", "update_bn", "SWALR", "get_ema_multi_avg_fn", "get_swa_multi_avg_fn",
           "get_ema_avg_fn", "get_swa_avg_fn"]
