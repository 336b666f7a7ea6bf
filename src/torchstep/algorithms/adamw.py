r"""AdamW: Adam with decoupled weight decay (default ``weight_decay=1e-2``).

.. math::
    \theta_{t-1} \leftarrow (1 - \gamma\lambda)\,\theta_{t-1}, \text{ then the Adam step of
    } :mod:`torchstep.algorithms.adam`.

The math is Adam's (written once, there); this module only binds the defaults.
Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019).
"""

from __future__ import annotations

import torch

from .adam import Adam


class AdamW(Adam):
    """Adam with decoupled weight decay; ``decoupled_weight_decay`` is always True."""

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused, decoupled_weight_decay=True,
        )

    def _upgrade_loaded_state(self) -> None:
        super()._upgrade_loaded_state()
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
