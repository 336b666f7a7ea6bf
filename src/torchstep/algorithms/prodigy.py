r"""Prodigy: Adam whose step size is learned -- an estimate :math:`d` of the distance to the solution.

With gradient :math:`g_k` at step :math:`k` (plus :math:`\lambda\theta` for coupled weight
decay), ``lr`` :math:`\gamma`, ``betas`` :math:`(\beta_1, \beta_2)`, ``beta3`` :math:`\beta_3`
(default :math:`\sqrt{\beta_2}`), ``eps`` :math:`\epsilon`, ``d0`` :math:`d_0`, ``d_coef``
:math:`c`, ``growth_rate`` :math:`\kappa`, ``weight_decay`` :math:`\lambda`, and
:math:`\hat\gamma_k = d_k\gamma\,\sqrt{1-\beta_2^{k+1}}/(1-\beta_1^{k+1})` with
``use_bias_correction`` (else :math:`d_k\gamma`):

.. math::
    m_{k+1} = \beta_1 m_k + (1-\beta_1)\, d_k g_k \qquad
    v_{k+1} = \beta_2 v_k + (1-\beta_2)\, d_k^2 g_k^2

    r_{k+1} = \beta_3 r_k + \tfrac{d_k}{d_0}\hat\gamma_k \langle g_k, \theta_0 - \theta_k\rangle \qquad
    s_{k+1} = \beta_3 s_k + \tfrac{d_k}{d_0}\hat\gamma_k\, g_k
    \ (\text{with } \texttt{safeguard\_warmup}: \tfrac{d_k}{d_0} d_k\, g_k)

    \hat d_{k+1} = c\, \frac{r_{k+1}}{\lVert s_{k+1}\rVert_1} \qquad
    d_{k+1} = \min\!\big(\max_{j \le k+1} \hat d_j,\ \kappa d_k\big)
    \ (\text{and } d_{k+1} \ge d_0 \text{ while } d_k = d_0)

    \theta_{k+1} = \theta_k - \hat\gamma_k \frac{m_{k+1}}{\sqrt{v_{k+1}} + d_{k+1}\epsilon}
    \ (\beta_1 = 0: \ \hat\gamma_k d_k \frac{g_k}{\sqrt{v_{k+1}} + d_{k+1}\epsilon})

With ``decouple=True`` (default) the decay is :math:`\theta_k \leftarrow (1-\lambda\hat\gamma_k)
\theta_k` before the step instead of being added to :math:`g_k`. Inner products and
:math:`\lVert s\rVert_1` run over every parameter of every group (all-reduced across processes
with ``fsdp_in_use``); ``slice_p`` :math:`p > 1` computes them on every :math:`p`-th element only,
to save memory. Leave ``lr`` at 1 and tune ``d_coef`` if at all.

Not element-wise: :math:`d_{k+1}` is a global sum over all tensors, needed between the moment
update and the step, so Prodigy stands alone with two passes per step and two host syncs (the
sums are accumulated on the device in float64). Options that shape the single :math:`d` (betas,
beta3, d_coef, growth_rate, use_bias_correction, decouple) are read from the first group, as in
prodigyopt; a group's ``lr`` must be the largest one or 0.

State (prodigyopt's keys, so state_dicts move between the two): ``step`` (an int), ``s``,
``p0`` (:math:`\theta_0`, sliced; a 0-d zero when the parameter starts all-zero), ``exp_avg``
(:math:`m`, when :math:`\beta_1 > 0`), ``exp_avg_sq`` (:math:`v`); per group ``d``, ``d_max``,
``d_numerator`` (:math:`r`), ``k``, and after a step ``d_denom``, ``d_hat``.
Deliberate differences from prodigyopt 1.1.2: gradients are left untouched (it adds coupled
weight decay into ``p.grad``); a group with ``lr=0`` is frozen (prodigyopt still applies the
decoupled decay and, with :math:`\beta_1 = 0`, a step to it at the global rate).
Reference: Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner"
(ICML 2024), arXiv:2306.06101.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ..core import check
from ..core.optimizer import Optimizer
from .adamax import adam_like_checks


def sliced(t: torch.Tensor, slice_p: int) -> torch.Tensor:
    return t.flatten()[::slice_p]


def init_state(p: torch.Tensor, group: dict) -> dict:
    beta1 = group["betas"][0]
    p0 = sliced(p, group["slice_p"]).clone() if p.any() else torch.tensor(0, device=p.device, dtype=p.dtype)
    state = {"step": 0, "s": torch.zeros_like(sliced(p, group["slice_p"])), "p0": p0}
    if beta1 > 0:
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


class Prodigy(Optimizer):
    """Prodigy; see :mod:`torchstep.algorithms.prodigy`."""

    def __init__(self, params, lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999), beta3: float | None = None,
                 eps: float = 1e-8, weight_decay: float = 0, decouple: bool = True, use_bias_correction: bool = False,
                 safeguard_warmup: bool = False, d0: float = 1e-6, d_coef: float = 1.0,
                 growth_rate: float = float("inf"), fsdp_in_use: bool = False, slice_p: int = 1) -> None:
        adam_like_checks(lr, betas, eps, weight_decay)
        check.positive(lr, "lr", "learning rate")
        check.positive(eps, "eps", "epsilon value")
        check.positive(d0, "d0", "d0 value")
        check.positive(d_coef, "d_coef", "d_coef value")
        check.positive(growth_rate, "growth_rate", "growth_rate value")
        if beta3 is not None:
            check.in_range(beta3, "beta3", "beta3 value", 0.0, 1.0)
        check.whole_number(slice_p, "slice_p", 1)
        defaults = dict(lr=lr, betas=tuple(betas), beta3=beta3, eps=eps, weight_decay=weight_decay, d=d0, d0=d0,
                        d_max=d0, d_numerator=0.0, d_coef=d_coef, k=0, growth_rate=growth_rate,
                        use_bias_correction=use_bias_correction, decouple=decouple, safeguard_warmup=safeguard_warmup,
                        fsdp_in_use=fsdp_in_use, slice_p=slice_p)
        super().__init__(params, defaults)

    def _grad(self, p: torch.Tensor, group: dict, decouple: bool) -> torch.Tensor:
        """The gradient the step uses: with coupled weight decay, ``g + weight_decay * p``."""
        if group["weight_decay"] != 0 and not decouple:
            return p.grad.add(p, alpha=group["weight_decay"])
        return p.grad

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step of every group with a nonzero ``lr``; returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        first = self.param_groups[0]
        beta1, beta2 = first["betas"]
        beta3 = first["beta3"] if first["beta3"] is not None else math.sqrt(beta2)
        k, d, decouple = first["k"], first["d"], first["decouple"]
        lr = max(group["lr"] for group in self.param_groups)
        for i, group in enumerate(self.param_groups):
            if group["lr"] not in (lr, 0.0):
                raise RuntimeError(
                    "Setting different lr values in different parameter groups is only supported for values of 0 "
                    f"(group {i} has lr={group['lr']}, the largest is {lr}; set it to {lr} or to 0 to freeze it)"
                )
        bias_correction = math.sqrt(1 - beta2 ** (k + 1)) / (1 - beta1 ** (k + 1)) if first["use_bias_correction"] else 1
        dlr = d * lr * bias_correction
        active = [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups if g["lr"] != 0]
        for _, params in active:
            for p in params:
                check.dense_real(p, "Prodigy")  # before anything moves
        sums = torch.zeros(2, dtype=torch.float64, device=next((p.device for _, ps in active for p in ps), "cpu"))
        fsdp = any(g["fsdp_in_use"] for g in self.param_groups) or any(hasattr(p, "_fsdp_flattened") for _, ps in active for p in ps)
        for group, params in active:
            scale = d / group["d0"]
            s_rate = scale * (d if group["safeguard_warmup"] else dlr)
            for p in params:
                grad = self._grad(p, group, decouple)
                state = self.state[p]
                if "step" not in state:
                    state.update(init_state(p, group))
                g_sliced = sliced(grad, group["slice_p"])
                dot = torch.dot(g_sliced, state["p0"] - sliced(p, group["slice_p"]))
                sums[0] += dot.to(sums.device, torch.float64) * (scale * dlr)
                if beta1 > 0:
                    state["exp_avg"].mul_(beta1).add_(grad, alpha=d * (1 - beta1))
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=d * d * (1 - beta2))
                state["s"].mul_(beta3).add_(g_sliced, alpha=s_rate)
                sums[1] += state["s"].abs().sum().to(sums.device, torch.float64)
        if fsdp:
            torch.distributed.all_reduce(sums, op=torch.distributed.ReduceOp.SUM)
        delta_numerator, d_denom = sums.tolist()
        if d_denom == 0:
            return loss  # no gradient information yet: nothing moves
        d_numerator = first["d_numerator"] * beta3 + delta_numerator
        d_hat = first["d_coef"] * d_numerator / d_denom
        d_max = max(first["d_max"], d_hat)
        if d == self.param_groups[-1]["d0"]:
            d = max(d, d_hat)
        d = min(d_max, d * first["growth_rate"])
        for group in self.param_groups:
            group.update(d_numerator=d_numerator, d_denom=d_denom, d=d, d_max=d_max, d_hat=d_hat, k=group["k"] + 1)
        for group, params in active:
            for p in params:
                self._apply(p, group, d, dlr, beta1 > 0, decouple)
        return loss

    def _apply(self, p: torch.Tensor, group: dict, d: float, dlr: float, has_exp_avg: bool, decouple: bool) -> None:
        """The second pass for one tensor: the Adam-shaped step with the new ``d`` in the denominator."""
        state = self.state[p]
        state["step"] += 1
        denom = state["exp_avg_sq"].sqrt().add_(d * group["eps"])
        if group["weight_decay"] != 0 and decouple:
            p.add_(p, alpha=-group["weight_decay"] * dlr)
        if has_exp_avg:
            p.addcdiv_(state["exp_avg"], denom, value=-dlr)
        else:
            p.addcdiv_(self._grad(p, group, decouple), denom, value=-dlr * d)
