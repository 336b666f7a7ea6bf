"""``torch.optim.swa_utils``, re-implemented (the code lives in :mod:`torchstep.swa`)."""

from torchstep.swa import (SWALR, AveragedModel, get_ema_avg_fn, get_ema_multi_avg_fn, get_swa_avg_fn,
                           get_swa_multi_avg_fn, update_bn)

__all__ = ["AveragedModel", "update_bn", "SWALR", "get_ema_multi_avg_fn", "get_swa_multi_avg_fn",
           "get_ema_avg_fn", "get_swa_avg_fn"]
