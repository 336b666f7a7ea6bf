r"""``update_bn``: recompute BatchNorm running statistics for averaged weights.

Averaged weights (SWA, EMA) need activation statistics of their own. ``update_bn`` resets every
BatchNorm layer's ``running_mean`` / ``running_var`` / ``num_batches_tracked``, sets its
``momentum`` to ``None`` (cumulative average: after :math:`k` batches the running statistic is the
plain mean of the :math:`k` batch statistics) and runs one pass over ``loader`` in training mode
without gradients. Afterwards each layer's momentum and the model's training mode (``model.train(
was_training)``, applied to every submodule, as torch does) are restored -- also when the pass
raises.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["update_bn"]


@torch.no_grad()
def update_bn(loader: Iterable[Any], model: nn.Module, device: int | torch.device | str | None = None) -> None:
    """One pass over ``loader`` to re-estimate the BatchNorm statistics of ``model``.

    Each batch is a tensor, or a list/tuple whose first element is the model's input (e.g. the
    ``(input, target)`` pairs of a ``DataLoader``); it is moved to ``device`` when one is given.
    A model without BatchNorm layers is left untouched.
    """
    momenta = {}
    for layer in model.modules():
        if isinstance(layer, _BatchNorm):
            layer.reset_running_stats()
            momenta[layer] = layer.momentum
    if not momenta:
        return
    was_training = model.training
    model.train()
    for layer in momenta:
        layer.momentum = None
    try:
        for batch in loader:
            inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
            model(inputs if device is None else inputs.to(device))
    finally:
        for layer, momentum in momenta.items():
            layer.momentum = momentum
        model.train(was_training)
