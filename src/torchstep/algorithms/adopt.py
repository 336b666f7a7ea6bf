r"""ADOPT: Adam that normalizes by the *previous* second moment, then takes momentum.

With gradient :math:`g_t` (after ``maximize`` and weight decay), ``lr`` :math:`\gamma`,
``betas`` :math:`(\beta_1, \beta_2)`, ``eps`` :math:`\epsilon`, ``clip_lambda`` :math:`c(t)`:

.. math::
    t = 1: \quad v_1 = g_1^2 \quad \text{(no step)}

    t > 1: \quad \tilde g_t = \operatorname{clip}\!\left(\frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)},
                                                   -c(t),\ c(t)\right) \qquad
    m_t = \beta_1 m_{t-1} + (1-\beta_1)\,\tilde g_t

    \theta_t = \theta_{t-1} - \gamma\, m_t \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2

Dividing by :math:`v_{t-1}`, which does not contain :math:`g_t`, is what lets ADOPT converge for
any :math:`\beta_2`; the clip (default :math:`c(t) = t^{1/4}`, ``clip_lambda=None`` disables it)
keeps early steps bounded. No bias correction is needed.

Weight decay :math:`\lambda`: L2 (:math:`g_t \leftarrow g_t + \lambda\theta_{t-1}`) by default;
with ``decoupled_weight_decay=True`` (the authors' ``decouple``)
:math:`\theta_{t-1} \leftarrow (1-\gamma\lambda)\theta_{t-1}`, applied at every step including the
first. The authors' defaults: ``lr=1e-3, betas=(0.9, 0.9999), eps=1e-6``, :math:`c(t)=t^{1/4}`.

State: ``step``, ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`) -- as the authors' code
(and torch) lay them out. ``clip_lambda`` is a property of the optimizer object, not of a group,
and is not saved in the ``state_dict`` (a function cannot be, portably), as in pytorch-optimizer.
``cautious=True``: see :mod:`torchstep.backends.cautious`.
Reference: Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any beta_2 with the Optimal
Rate" (NeurIPS 2024), arXiv:2411.02853.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import torch

from ..core import check
from ..core.algorithm import Algorithm
from ..core.optimizer import Optimizer
from ..core.wrappers import squeeze_scalar
from ._common import lr_checks


def fourth_root(step: float) -> float:
    """The default clip bound :math:`c(t) = t^{1/4}`."""
    return step**0.25


def scalars(group: dict, step: Any, first: bool, clip_lambda: Callable | None = fourth_root) -> dict:
    beta1, beta2 = group["betas"]
    initial = step == 1
    clip = clip_lambda(step) if clip_lambda is not None and not initial else None
    return {"lr": squeeze_scalar(group["lr"]), "beta1": beta1, "beta2": beta2, "eps": group["eps"], "initial": initial,
            "clip": clip}


def update(p, g, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, initial, clip) -> None:
    """The first step seeds ``exp_avg_sq``; later ones normalize, clip, average, step."""
    if initial:
        exp_avg_sq.addcmul_(g, g)
        return
    normed = g.div(exp_avg_sq.sqrt().clamp(min=eps))
    if clip is not None:
        normed = normed.clamp(-clip, clip)
    exp_avg.lerp_(normed, 1 - beta1)
    p.add_(exp_avg, alpha=-lr)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)


ADOPT_ALGORITHM = Algorithm(
    name="adopt", nonnegative_state=("exp_avg_sq",), state_names=lambda group: ("exp_avg", "exp_avg_sq"), scalars=scalars, update=update,
    sparse_error="ADOPT does not support sparse gradients",
)


class ADOPT(Optimizer):
    """ADOPT; see :mod:`torchstep.algorithms.adopt`."""

    algorithm = ADOPT_ALGORITHM

    def __init__(self, params, lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.9999),
                 eps: float = 1e-6, clip_lambda: Callable[[float], float] | None = fourth_root,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, cautious: bool = False) -> None:
        lr_checks(lr)
        check.at_least(eps, "eps", "epsilon value")
        check.betas_pair(betas)
        check.at_least(weight_decay, "weight_decay", "weight_decay value")
        check.callable_or_none(clip_lambda, "clip_lambda")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, foreach=foreach,
                        cautious=cautious)
        super().__init__(params, defaults)
        self._set_clip_lambda(clip_lambda)

    def _set_clip_lambda(self, clip_lambda: Callable | None) -> None:
        """The clip bound lives on the object: the instance gets its own algorithm binding it."""
        self.clip_lambda = clip_lambda
        self.__dict__.pop("algorithm", None)
        if clip_lambda is not fourth_root:
            self.algorithm = dataclasses.replace(
                ADOPT_ALGORITHM, scalars=functools.partial(scalars, clip_lambda=clip_lambda))

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "clip_lambda": self.clip_lambda}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._set_clip_lambda(state.get("clip_lambda", getattr(self, "clip_lambda", fourth_root)))
