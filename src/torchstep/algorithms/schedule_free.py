r"""Schedule-Free SGD and AdamW: iterate averaging in place of a learning-rate schedule.

Three sequences per parameter: :math:`z` (the base optimizer's iterate, state ``z``), :math:`x`
(a weighted average of the :math:`z`'s: the weights to evaluate) and the point where gradients
are taken, :math:`y = (1-\beta)\,z + \beta x`. With ``lr`` :math:`\gamma`, ``momentum`` (SGD) or
``betas[0]`` (AdamW) :math:`\beta`, ``warmup_steps`` :math:`W`, ``r`` :math:`r`,
``weight_lr_power`` :math:`q`, ``weight_decay`` :math:`\lambda`, at step :math:`t = k+1`
(``k`` counts the steps taken, per group):

.. math::
    \gamma_t = \gamma \min(1, t/W) \qquad \gamma^{\max}_t = \max_{s \le t} \gamma_s \qquad
    w_t = t^r (\gamma^{\max}_t)^q \qquad c_t = w_t / \textstyle\sum_{s\le t} w_s

    u_t = d_t + \lambda y_t \qquad
    d_t = g_t \text{ (SGD)}, \quad
    d_t = \frac{g_t}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}, \ v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2
    \text{ (AdamW)}

    z_{t+1} = z_t - \gamma_t u_t \qquad x_{t+1} = (1-c_t)\,x_t + c_t z_{t+1} \qquad
    y_{t+1} = (1-\beta) z_{t+1} + \beta x_{t+1}

The parameter holds :math:`y` in train mode and :math:`x` in eval mode; :math:`x` is never
stored: the step moves :math:`y` directly (:math:`y \leftarrow y + c_t(z_t - y) +
\gamma_t(\beta(1-c_t) - 1)\,u_t`), and ``eval()`` / ``train()`` convert
(:math:`x = y + (1 - 1/\beta)(z - y)`, :math:`y = x + (1-\beta)(z - x)`). ``betas[1]``
:math:`\beta_2`, ``eps`` :math:`\epsilon`.

Call ``optimizer.train()`` before training steps and ``optimizer.eval()`` before evaluating or
saving a checkpoint, with the model's own ``train()`` / ``eval()``; a step in eval mode raises
:class:`RuntimeError`. The optimizer starts in eval mode, as the authors' package does.

Layout: per parameter ``z`` (and ``exp_avg_sq`` :math:`v` for AdamW); per group ``k``,
``train_mode``, ``weight_sum``, ``lr_max`` and ``scheduled_lr`` -- the names of the authors'
``schedulefree`` package, so state_dicts move between the two. The per-element part is an
:class:`~torchstep.core.algorithm.Algorithm` (so it runs fused); the per-group stage (warmup,
:math:`\gamma^{\max}`, :math:`\sum w`) runs once per step before it.

Deliberate differences from ``schedulefree`` 1.4.1: the gradient tensors are left untouched (the
package adds weight decay into / divides ``p.grad`` in place); a step raises if *any* group is in
eval mode (the package looks at the first group only); a tensor ``lr`` is read as a float.
Reference: Defazio, Yang, Mehta, Mishchenko, Khaled, Cutkosky, "The Road Less Scheduled"
(NeurIPS 2024), arXiv:2405.15682.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import check
from ..core.algorithm import Algorithm
from ..core.optimizer import Optimizer
from ._common import lr_checks

# the group keys the per-group stage keeps (after the hyperparameters), as schedulefree names them
SCHEDULE_KEYS = dict(k=0, train_mode=False, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0)


def init_sgd(p: torch.Tensor, group: dict) -> dict[str, torch.Tensor]:
    """``z`` starts at the parameter."""
    return {"z": p.detach().clone(memory_format=torch.preserve_format)}


def init_adamw(p: torch.Tensor, group: dict) -> dict[str, torch.Tensor]:
    """``z`` starts at the parameter, ``exp_avg_sq`` at zero."""
    return {**init_sgd(p, group), "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}


def advance_schedule(group: dict) -> float:
    """The per-group stage of step ``k + 1``: warmup, running max lr and weight sum; returns
    :math:`c_t`, the weight of the new ``z`` in the average."""
    k, warmup = group["k"], group["warmup_steps"]
    lr = float(group["lr"]) * ((k + 1) / warmup if k < warmup else 1.0)
    group["scheduled_lr"] = lr
    group["lr_max"] = max(lr, group["lr_max"])
    weight = ((k + 1) ** group["r"]) * (group["lr_max"] ** group["weight_lr_power"])
    group["weight_sum"] = group["weight_sum"] + weight
    return weight / group["weight_sum"] if group["weight_sum"] != 0 else 0.0


def momentum_of(group: dict) -> float:
    r""":math:`\beta`, the weight of :math:`x` in :math:`y`: ``momentum`` (SGD) or ``betas[0]``."""
    return group["betas"][0] if "betas" in group else group["momentum"]


def sgd_scalars(group: dict, step: Any, first: bool) -> dict:
    lr, ckp1 = group["scheduled_lr"], group["ckp1"]
    y_coef = lr * (momentum_of(group) * (1 - ckp1) - 1)
    decay = group["weight_decay"]
    return dict(lr=lr, ckp1=ckp1, y_coef=y_coef, decay=decay, has_decay=decay != 0)


def adamw_scalars(group: dict, step: Any, first: bool) -> dict:
    beta2 = group["betas"][1]
    return dict(sgd_scalars(group, step, first), beta2=beta2, eps=group["eps"],
                bias_correction2=1 - beta2 ** (group["k"] + 1))


def update(p, g, z, exp_avg_sq=None, *, lr, ckp1, y_coef, decay, has_decay, beta2=None, eps=None,
           bias_correction2=None) -> None:
    """One Schedule-Free step of ``y`` (held in ``p``) and ``z`` (see module docstring)."""
    if exp_avg_sq is not None:
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        g = g / exp_avg_sq.div(bias_correction2).sqrt().add(eps)
    if has_decay:
        g = g.add(p, alpha=decay)
    p.lerp_(z, ckp1)
    p.add_(g, alpha=y_coef)
    z.sub_(g, alpha=lr)


SGD_SCHEDULE_FREE = Algorithm(
    name="sgd_schedule_free", exact_state=("z",), state_names=lambda group: ("z",), scalars=sgd_scalars, update=update, init=init_sgd,
    counts_steps=False, applies_weight_decay=True,
    sparse_error="SGDScheduleFree does not support sparse gradients",
)
ADAMW_SCHEDULE_FREE = Algorithm(
    name="adamw_schedule_free", exact_state=("z",), nonnegative_state=("exp_avg_sq",), state_names=lambda group: ("z", "exp_avg_sq"), scalars=adamw_scalars, update=update,
    init=init_adamw, counts_steps=False, applies_weight_decay=True,
    sparse_error="AdamWScheduleFree does not support sparse gradients",
)


class ScheduleFreeOptimizer(Optimizer):
    """What :class:`SGDScheduleFree` and :class:`AdamWScheduleFree` share: the train-mode check
    and per-group stage around the base class's ``step``, and ``train`` / ``eval``."""

    def _check_step(self) -> None:
        """Every group must be in train mode (checked before the closure runs)."""
        resting = [i for i, g in enumerate(self.param_groups) if not g["train_mode"]]
        if resting:
            raise RuntimeError(
                f"{type(self).__name__}.step() called in eval mode (param groups {resting} have "
                "train_mode=False): call optimizer.train() before training steps and "
                "optimizer.eval() before evaluating or saving a checkpoint"
            )

    def _backend_group(self, group: dict) -> dict:
        """Run the per-group stage of this step and count the step in ``k``; the backends see the
        group after the stage but before the count, plus this step's :math:`c_t` (``ckp1``)."""
        ckp1 = advance_schedule(group)
        view = dict(group, ckp1=ckp1)
        group["k"] += 1
        return view

    @torch.no_grad()
    def _switch(self, to_train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == to_train:
                continue
            beta = momentum_of(group)
            weight = 1 - beta if to_train else 1 - 1 / beta
            for p in group["params"]:
                z = self.state.get(p, {}).get("z")
                if z is not None:
                    p.lerp_(z.to(p.device), weight)
            group["train_mode"] = to_train

    def train(self) -> None:
        """Parameters to :math:`y`, where training steps take gradients (no-op if already there)."""
        self._switch(True)

    def eval(self) -> None:
        """Parameters to the average :math:`x`, the weights to evaluate and save."""
        self._switch(False)


def schedule_checks(lr: Any, weight_decay: float, warmup_steps: int, r: float, weight_lr_power: float) -> None:
    lr_checks(lr)
    check.at_least(weight_decay, "weight_decay", "weight_decay value")
    check.whole_number(warmup_steps, "warmup_steps", 0)
    check.at_least(r, "r", "polynomial averaging power")
    check.at_least(weight_lr_power, "weight_lr_power", "weight_lr_power value")


class SGDScheduleFree(ScheduleFreeOptimizer):
    """Schedule-Free SGD; see :mod:`torchstep.algorithms.schedule_free`."""

    algorithm = SGD_SCHEDULE_FREE

    def __init__(self, params, lr: float | torch.Tensor = 1.0, momentum: float = 0.9, weight_decay: float = 0,
                 warmup_steps: int = 0, r: float = 0.0, weight_lr_power: float = 2, foreach: bool | None = True) -> None:
        schedule_checks(lr, weight_decay, warmup_steps, r, weight_lr_power)
        check.in_range(momentum, "momentum", "momentum value", 0.0, 1.0, high_open=True)
        check.positive(momentum, "momentum", "momentum value")
        defaults = dict(lr=lr, momentum=momentum, r=r, warmup_steps=warmup_steps, weight_lr_power=weight_lr_power,
                        weight_decay=weight_decay, foreach=foreach, **SCHEDULE_KEYS)
        super().__init__(params, defaults)


class AdamWScheduleFree(ScheduleFreeOptimizer):
    """Schedule-Free AdamW; see :mod:`torchstep.algorithms.schedule_free`."""

    algorithm = ADAMW_SCHEDULE_FREE

    def __init__(self, params, lr: float | torch.Tensor = 0.0025, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0, foreach: bool | None = True) -> None:
        schedule_checks(lr, weight_decay, warmup_steps, r, weight_lr_power)
        check.betas_pair(betas)
        check.positive(betas[0], "betas[0]", "beta parameter at index 0")
        check.at_least(eps, "eps", "epsilon value")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, r=r, warmup_steps=warmup_steps,
                        weight_lr_power=weight_lr_power, weight_decay=weight_decay, foreach=foreach, **SCHEDULE_KEYS)
        super().__init__(params, defaults)
