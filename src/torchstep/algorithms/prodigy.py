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
update and the step, so Prodigy is written as stages (:mod:`torchstep.core.stages`,
``PRODIGY_STAGES``): :func:`prodigy_moments` (:math:`m, v, s` and each tensor's
:math:`\langle g, \theta_0-\theta\rangle` and :math:`\lVert s\rVert_1`), :func:`prodigy_estimate` (the sums
over every tensor of every group, :math:`d_{k+1}`), :func:`prodigy_step` (the parameter step). The
reference backend runs the passes tensor by tensor, the fused one as two passes over memory
(``slice_p=1`` only; a parameter whose ``p0`` is the 0-d zero takes the per-tensor path); sums are
accumulated in float64 either way, with one host sync per step. Options that shape the single
:math:`d` (betas, beta3, d_coef, growth_rate, use_bias_correction, decouple) are read from the
first group, as in prodigyopt; a group's ``lr`` must be the largest one or 0. Coupled decay comes
from the shared wrappers; the decoupled one is part of the step (its rate is :math:`\hat\gamma_k`).

Parity with prodigyopt 1.1.2: parameters, state and :math:`d` agree within 1e-10 in float64
after 25 steps, and within 1e-4 relative in float32 -- the only difference being the summation
order of the float32 inner product (prodigyopt's ``torch.dot``; here float64 sums).

State (prodigyopt's keys, so state_dicts move between the two): ``step`` (an int), ``s``,
``p0`` (:math:`\theta_0`; a 0-d zero when the parameter starts all-zero), ``exp_avg``
(:math:`m`, when :math:`\beta_1 > 0`), ``exp_avg_sq`` (:math:`v`); per group ``d``, ``d_max``,
``d_numerator`` (:math:`r`), ``k``, and after a step ``d_denom``, ``d_hat``.
With ``slice_p=1``, ``s`` and ``p0`` have the parameter's shape (a DTensor's placements too: a
sharded tensor has no flat layout every sharding allows, and so a checkpoint moves between
sharded and unsharded runs); with ``slice_p > 1`` they are every ``slice_p``-th element of the
flattened parameter. prodigyopt 1.1.2 flattens them for ``slice_p=1`` too: its state_dicts load
here (the flat tensors are reshaped); for the other way, :func:`prodigyopt_state_dict`.
DTensor parameters (FSDP2, tensor parallel; ``slice_p=1`` only): each tensor's sums are all-reduced over its mesh, so :math:`d` is that of an unsharded run and
``fsdp_in_use`` is not needed for them (it still all-reduces the sums of plain parameters).
Deliberate differences from prodigyopt 1.1.2: gradients are left untouched (it adds coupled
weight decay into ``p.grad``); a group with ``lr=0`` is frozen (prodigyopt still applies the
decoupled decay and, with :math:`\beta_1 = 0`, a step to it at the global rate); its parameters
with a gradient get their state, untouched after, as in prodigyopt (DCP's ``get_state_dict``
builds the state it loads into with an ``lr=0`` step).
Reference: Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner"
(ICML 2024), arXiv:2306.06101.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..core import check, dtensors
from ..core.stages import Across, Pass, Staged, Summed
from .adamax import adam_like_checks
from .stage_optimizer import StagedOptimizer


def sliced(t: torch.Tensor, slice_p: int) -> torch.Tensor:
    """The elements ``s`` and ``p0`` follow: with ``slice_p=1`` all of ``t``, in its own shape (so
    the state is laid out as the parameter, plain or DTensor -- a sharded tensor has no flat
    layout every sharding allows -- and a checkpoint moves between sharded and unsharded runs);
    else every ``slice_p``-th element of the flattened tensor."""
    return t if slice_p == 1 else t.flatten()[::slice_p]


def shaped_as_parameter(p: torch.Tensor, value: Any, slice_p: int) -> Any:
    """A loaded ``s`` or ``p0`` in this layout: a flat one of all of ``p``'s elements (prodigyopt
    1.1.2 and older torchstep checkpoints flatten even with ``slice_p=1``) reshaped to ``p``'s
    shape; anything else (a 0-d ``p0``, a sliced state) as it is."""
    if (slice_p == 1 and isinstance(value, torch.Tensor) and not dtensors.is_dtensor(value) and value.dim() == 1
            and value.numel() == p.numel() and tuple(value.shape) != tuple(p.shape)):
        return value.reshape(p.shape)
    return value


def prodigyopt_state_dict(opt: Any, state_dict: dict | None = None) -> dict:
    """``opt``'s state_dict (or ``state_dict``, one of ``opt``'s; plain parameters) in prodigyopt
    1.1.2's layout, for its ``load_state_dict``: ``s`` and ``p0`` of every parameter flattened
    (prodigyopt flattens them even with ``slice_p=1``; a 0-d zero ``p0`` of a parameter that
    started all-zero stays as it is). A shallow copy; the other entries are shared."""
    state_dict = opt.state_dict() if state_dict is None else state_dict
    params = [p for group in opt.param_groups for p in group["params"]]
    index = {i: params[k] for k, i in enumerate(i for g in state_dict["param_groups"] for i in g["params"])}
    state = {}
    for key, st in state_dict["state"].items():
        st, p = dict(st), index.get(key)
        for name in ("s", "p0"):
            value = st.get(name)
            if isinstance(value, torch.Tensor) and p is not None and value.shape == p.shape and value.dim() != 1:
                st[name] = value.flatten()
        state[key] = st
    return {**state_dict, "state": state}


def refuse_sliced_dtensor(p: torch.Tensor, group: dict) -> None:
    if group["slice_p"] != 1 and dtensors.is_dtensor(p):
        raise ValueError(
            f"Prodigy's slice_p={group['slice_p']} is not supported for DTensor parameters (FSDP2, tensor "
            f"parallel; a parameter of shape {tuple(p.shape)}): use slice_p=1"
        )


def init_state(p: torch.Tensor, group: dict) -> dict:
    refuse_sliced_dtensor(p, group)
    beta1 = group["betas"][0]
    p0 = sliced(p, group["slice_p"]).clone() if dtensors.any_nonzero(p) else torch.tensor(0, device=p.device, dtype=p.dtype)
    state = {"step": 0, "s": torch.zeros_like(sliced(p, group["slice_p"])), "p0": p0}
    if beta1 > 0:
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


def prodigy_moments(p, g, s, p0, exp_avg_sq, exp_avg=None, *, beta1, beta2, beta3, d, s_rate, slice_p, sliced):
    r"""Stage 1: :math:`m, v, s`; returns this tensor's :math:`\langle g, \theta_0-\theta\rangle` and
    :math:`\lVert s\rVert_1` (on every ``slice_p``-th element when ``sliced``)."""
    g_s, p_s = (g.flatten()[::slice_p], p.flatten()[::slice_p]) if sliced else (g, p)
    if exp_avg is not None:
        exp_avg.mul_(beta1).add_(g, alpha=d * (1 - beta1))
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=d * d * (1 - beta2))
    s.mul_(beta3).add_(g_s, alpha=s_rate)
    return {"dot": Summed(g_s * (p0 - p_s)), "l1": Summed(s.abs())}


def prodigy_step(p, exp_avg_sq, g=None, exp_avg=None, *, d, eps, dlr, decay) -> None:
    r"""Stage 2: the Adam-shaped step with the new :math:`d` in the denominator (``g`` is read
    only without :math:`m`); ``decay`` is :math:`-\lambda\hat\gamma_k`, or None."""
    denom = exp_avg_sq.sqrt().add_(d * eps)
    if decay is not None:
        p.add_(p, alpha=decay)
    if exp_avg is not None:
        p.addcdiv_(exp_avg, denom, value=-dlr)
    else:
        p.addcdiv_(g, denom, value=-dlr * d)


def prodigy_context(opt: Any) -> dict:
    """The step's global scalars, from the first group (and the largest ``lr``)."""
    first = opt.param_groups[0]
    beta1, beta2 = first["betas"]
    beta3 = first["beta3"] if first["beta3"] is not None else math.sqrt(beta2)
    k, d = first["k"], first["d"]
    lr = max(group["lr"] for group in opt.param_groups)
    for i, group in enumerate(opt.param_groups):
        if group["lr"] not in (lr, 0.0):
            raise RuntimeError(
                "Setting different lr values in different parameter groups is only supported for values of 0 "
                f"(group {i} has lr={group['lr']}, the largest is {lr}; set it to {lr} or to 0 to freeze it)"
            )
    bias_correction = math.sqrt(1 - beta2 ** (k + 1)) / (1 - beta1 ** (k + 1)) if first["use_bias_correction"] else 1
    return dict(beta1=beta1, beta2=beta2, beta3=beta3, d=d, dlr=d * lr * bias_correction, decouple=first["decouple"])


def prodigy_estimate(opt: Any, context: dict, reductions: list) -> dict | None:
    r""":math:`d_{k+1}` from every tensor's sums (all-reduced with ``fsdp_in_use``), stored in
    every group; None (the step ends, nothing moves) while the sum of :math:`\lVert s\rVert_1` is 0."""
    active = [p for g in opt.param_groups if g["lr"] != 0 for p in g["params"] if p.grad is not None]
    sums = torch.zeros(2, dtype=torch.float64, device=active[0].device if active else "cpu")
    whole = None  # DTensors' sums: already over the whole tensors, the same on every rank
    for group, values in reductions:
        rate = context["d"] / group["d0"] * context["dlr"]
        flags = values.get("dtensor")
        for k, name in enumerate(("dot", "l1")):
            if values.get(name):
                part = torch.stack([v.reshape(-1) for v in values[name]]).to(sums.device, torch.float64)
                if name == "dot":
                    part = part * rate
                if flags is None:
                    sums[k] += part.sum()
                else:
                    whole = torch.zeros_like(sums) if whole is None else whole
                    shared = torch.tensor(flags, device=sums.device)
                    sums[k] += part[~shared].sum()
                    whole[k] += part[shared].sum()
    if any(g["fsdp_in_use"] for g in opt.param_groups) or any(hasattr(p, "_fsdp_flattened") for p in active):
        torch.distributed.all_reduce(sums, op=torch.distributed.ReduceOp.SUM)
    delta_numerator, d_denom = (sums if whole is None else sums + whole).tolist()
    if d_denom == 0:
        return None  # no gradient information yet
    first, d = opt.param_groups[0], context["d"]
    d_numerator = first["d_numerator"] * context["beta3"] + delta_numerator
    d_hat = first["d_coef"] * d_numerator / d_denom
    d_max = max(first["d_max"], d_hat)
    if d == opt.param_groups[-1]["d0"]:
        d = max(d, d_hat)
    d = min(d_max, d * first["growth_rate"])
    for group in opt.param_groups:
        group.update(d_numerator=d_numerator, d_denom=d_denom, d=d, d_max=d_max, d_hat=d_hat, k=group["k"] + 1)
    return {"d": d}


def _state_names(group: dict) -> tuple[str, ...]:
    return ("s", "p0", "exp_avg_sq") + (("exp_avg",) if group["betas"][0] > 0 else ())


def _scalars(group: dict, context: dict) -> dict:
    d, dlr, wd = context["d"], context["dlr"], group["weight_decay"]
    return dict(beta1=context["beta1"], beta2=context["beta2"], beta3=context["beta3"], d=d, dlr=dlr, eps=group["eps"],
                s_rate=d / group["d0"] * (d if group["safeguard_warmup"] else dlr), slice_p=group["slice_p"],
                sliced=group["slice_p"] > 1, decay=-wd * dlr if wd != 0 and context["decouple"] else None)


def _moments_written(group: dict) -> tuple[str, ...]:
    return tuple(n for n in _state_names(group) if n != "p0")


def _step_reads(group: dict) -> tuple[str, ...]:
    return ("p", "exp_avg_sq", "exp_avg") if group["betas"][0] > 0 else ("p", "exp_avg_sq", "g")


PRODIGY_STAGES = Staged(
    name="prodigy",
    state_names=_state_names,
    init=init_state,
    program=(Pass(prodigy_moments, lambda group: ("p", "g", *_state_names(group)), _moments_written),
             Across(prodigy_estimate),
             Pass(prodigy_step, _step_reads, ("p",))),
    scalars=_scalars,
    counter="int",
    context=prodigy_context,
    wrappers=lambda group, context: dict(weight_decay=0 if context["decouple"] else group["weight_decay"]),
    takes=lambda group: group["lr"] != 0,
    fusable=lambda group: group["slice_p"] == 1,
    fusable_state=lambda p, state, group: state["p0"].shape == p.shape,  # not the 0-d zero of an all-zero p
    state_shape=lambda p, name, group: tuple(p.shape),  # fused: slice_p=1 only, where s and p0 are parameter-shaped
)


class Prodigy(StagedOptimizer):
    """Prodigy; see :mod:`torchstep.algorithms.prodigy`."""

    stages = PRODIGY_STAGES

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

    def _upgrade_loaded_state(self) -> None:
        """Flat ``s`` and ``p0`` of ``slice_p=1`` (prodigyopt's layout, older checkpoints) take the
        parameter's shape."""
        super()._upgrade_loaded_state()
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if st:
                    for name in ("s", "p0"):
                        if name in st:
                            st[name] = shaped_as_parameter(p, st[name], group.get("slice_p", 1))
