"""Configurations of the modern element-wise algorithms, the gradient stream they run on, and how
to build the reference each is checked against: the authors' package where one is published
(adabelief-pytorch), lion-pytorch for Lion, pytorch-optimizer otherwise (the authors' Adan, ADOPT
and AdEMAMix code is not packaged). A reference takes other argument names; each row's
``reference`` maps ours to its."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Callable

import adabelief_pytorch
import lion_pytorch
import pytorch_optimizer
import torch

from helpers import SHAPES

F32 = dict(rtol=1e-5, atol=1e-6)
F64 = dict(rtol=1e-10, atol=1e-12)


def _renamed(options: dict, names: dict) -> dict:
    return {names.get(k, k): v for k, v in options.items()}


def _pytorch_optimizer(cls_name: str, names: dict, fixed: dict) -> Callable:
    """A builder for ``pytorch_optimizer.<cls_name>``: our option names mapped by ``names``, plus
    ``fixed`` options; its per-parameter (not foreach) path, whose operation order ours follows."""
    cls = getattr(pytorch_optimizer, cls_name)

    def build(groups: list[dict], kwargs: dict):
        renamed = [_renamed(g, names) for g in groups]
        return cls(renamed, **{**fixed, **_renamed(kwargs, names), "foreach": False})

    return build


def lion_reference(groups: list[dict], kwargs: dict):
    return lion_pytorch.Lion(groups, **kwargs)


def adabelief_reference(groups: list[dict], kwargs: dict):
    names = {"decoupled_weight_decay": "weight_decouple"}
    with contextlib.redirect_stdout(io.StringIO()):  # the package announces its options
        return adabelief_pytorch.AdaBelief(groups, **_renamed(kwargs, names), print_change_log=False)


def ademamix_reference(groups: list[dict], kwargs: dict):
    """pytorch-optimizer has one warmup length for alpha and beta3 (rows set both alike), and its
    default alpha is 5 where the authors' is 2."""
    def rename(options: dict) -> dict:
        out = {k: v for k, v in options.items() if k not in ("alpha_warmup", "beta3_warmup")}
        if "alpha_warmup" in options:
            out["t_alpha_beta3"] = options["alpha_warmup"]
        return out

    return pytorch_optimizer.AdEMAMix([rename(g) for g in groups], **{"alpha": 2.0, **rename(kwargs)},
                                      weight_decouple=True, foreach=False)


PYOPT_LION = _pytorch_optimizer("Lion", {}, dict(weight_decouple=True))
PYOPT_ADAN = _pytorch_optimizer("Adan", {"no_prox": "weight_decouple"}, {})
PYOPT_ADOPT = _pytorch_optimizer("ADOPT", {"decoupled_weight_decay": "weight_decouple"}, {})

# our state key -> the reference's, per algorithm
STATE_NAMES = {
    "Lion": {"exp_avg": "exp_avg"},
    "Adan": {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "exp_avg_diff": "exp_avg_diff",
             "neg_pre_grad": "previous_grad"},
    "AdaBelief": {"exp_avg": "exp_avg", "exp_avg_var": "exp_avg_var", "max_exp_avg_var": "max_exp_avg_var"},
    "ADOPT": {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"},
    "AdEMAMix": {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "exp_avg_slow": "exp_avg_slow"},
}


@dataclass
class Row:
    cls: str
    kwargs: dict
    group2: dict
    reference: Callable
    skipping: bool = False  # may a parameter skip steps? (only where the reference counts steps per parameter)
    f64: dict = field(default_factory=lambda: F64)
    shapes: tuple = tuple(SHAPES)

    @property
    def id(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.kwargs.items() if not callable(v)) or "defaults"
        return f"{self.cls}[{opts}]"


def _quarter_plus_half(step: float) -> float:
    return 0.5 + step**0.25


ROWS = [
    # Lion: lion-pytorch, and pytorch-optimizer for maximize / cautious
    Row("Lion", {}, {"lr": 3e-4, "betas": (0.95, 0.98), "weight_decay": 0.1}, lion_reference, skipping=True),
    Row("Lion", {"lr": 1e-3, "weight_decay": 0.5}, {"weight_decay": 0.0}, lion_reference, skipping=True),
    Row("Lion", {"lr": 1e-3, "weight_decay": 0.1, "maximize": True}, {"lr": 2e-3}, PYOPT_LION),
    Row("Lion", {"lr": 1e-3, "weight_decay": 0.1, "cautious": True}, {"lr": 2e-3, "weight_decay": 0.0}, PYOPT_LION),
    Row("Lion", {"lr": 1e-3, "maximize": True, "cautious": True}, {"betas": (0.5, 0.9)}, PYOPT_LION),
    # Adan: pytorch-optimizer (its weight_decouple is the authors' no_prox)
    Row("Adan", {}, {"lr": 3e-3, "betas": (0.9, 0.9, 0.999)}, PYOPT_ADAN),
    Row("Adan", {"lr": 1e-2, "weight_decay": 0.05}, {"weight_decay": 0.0, "eps": 1e-6}, PYOPT_ADAN),
    Row("Adan", {"lr": 1e-2, "weight_decay": 0.05, "no_prox": True}, {"no_prox": False}, PYOPT_ADAN),
    # pytorch-optimizer sums the squared norms in float32, so float64 agrees to about 1e-7; its
    # clip factor has shape [1], which its in-place multiply cannot broadcast into a 0-d gradient
    Row("Adan", {"lr": 1e-2, "max_grad_norm": 1.0}, {"lr": 3e-3}, PYOPT_ADAN, f64=dict(rtol=1e-6, atol=1e-8),
        shapes=tuple(SHAPES[1:])),
    # AdaBelief: the authors' package (its options are per optimizer, so group 2 varies the rest)
    Row("AdaBelief", {}, {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-12}, adabelief_reference, skipping=True),
    Row("AdaBelief", {"lr": 1e-2, "weight_decay": 0.1}, {"weight_decay": 0.0}, adabelief_reference, skipping=True),
    Row("AdaBelief", {"decoupled_weight_decay": False, "weight_decay": 0.1}, {"lr": 3e-3}, adabelief_reference,
        skipping=True),
    Row("AdaBelief", {"rectify": False, "eps": 1e-8}, {"betas": (0.5, 0.9)}, adabelief_reference, skipping=True),
    Row("AdaBelief", {"rectify": False, "amsgrad": True}, {"amsgrad": False, "lr": 3e-3}, adabelief_reference,
        skipping=True),
    Row("AdaBelief", {"degenerated_to_sgd": False}, {"betas": (0.9, 0.99)}, adabelief_reference, skipping=True),
    # ADOPT: pytorch-optimizer
    Row("ADOPT", {}, {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-8}, PYOPT_ADOPT),
    Row("ADOPT", {"clip_lambda": None, "lr": 1e-2}, {"betas": (0.5, 0.5)}, PYOPT_ADOPT),
    Row("ADOPT", {"clip_lambda": _quarter_plus_half}, {"lr": 3e-3}, PYOPT_ADOPT),
    Row("ADOPT", {"weight_decay": 0.1}, {"weight_decay": 0.0}, PYOPT_ADOPT),
    Row("ADOPT", {"weight_decay": 0.1, "decoupled_weight_decay": True}, {"decoupled_weight_decay": False},
        PYOPT_ADOPT),
    Row("ADOPT", {"maximize": True, "weight_decay": 0.1}, {"lr": 3e-3}, PYOPT_ADOPT),
    Row("ADOPT", {"cautious": True, "lr": 1e-2}, {"lr": 3e-3}, PYOPT_ADOPT),
    # AdEMAMix: pytorch-optimizer (one warmup length for both, so rows keep them equal)
    Row("AdEMAMix", {}, {"lr": 3e-3, "betas": (0.8, 0.99, 0.999), "alpha": 5.0}, ademamix_reference),
    Row("AdEMAMix", {"alpha": 5.0, "alpha_warmup": 10, "beta3_warmup": 10, "lr": 1e-2},
        {"alpha_warmup": 20, "beta3_warmup": 20}, ademamix_reference),
    Row("AdEMAMix", {"weight_decay": 0.1, "lr": 1e-2}, {"weight_decay": 0.0}, ademamix_reference),
    Row("AdEMAMix", {"maximize": True, "weight_decay": 0.1}, {"lr": 3e-3}, ademamix_reference),
    # cautious: pytorch-optimizer masks only the fast term, which is the whole step when alpha = 0
    Row("AdEMAMix", {"cautious": True, "alpha": 0.0, "lr": 1e-2}, {"lr": 3e-3}, ademamix_reference),
]


def grads_at(step: int, params: list[torch.Tensor], skipping: bool, seed: int = 1) -> list[torch.Tensor | None]:
    """Step ``step``'s gradients; with ``skipping`` the last parameter gets none every 5th step."""
    gen = torch.Generator().manual_seed(seed * 1000 + step)
    out = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) for p in params]
    if skipping and step % 5 == 4:
        out[-1] = None
    return out


def run_steps(opt, params, steps: range, skipping: bool) -> None:
    """Step ``opt`` over ``steps`` of the gradient stream (fresh copies for each optimizer)."""
    for step in steps:
        for p, g in zip(params, grads_at(step, params, skipping)):
            p.grad = None if g is None else g.clone()
        opt.step()
