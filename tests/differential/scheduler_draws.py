"""Random scheduler configurations for the differential fuzzer (test_scheduler_fuzz.py).

A draw is a ``Case``: how many param groups and their lrs, and a ``build(L, opt, last_epoch)``
that constructs the scheduler from the module ``L`` (torch's ``lr_scheduler`` or torchstep's), so
both libraries get exactly the same arguments. Values are drawn from everything each class
accepts, edge values included (zero, negative where torch takes them, large, ints vs floats,
per-group lists, tensors), and also values torch rejects: the fuzzer then checks that ours raises
the same exception type.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

GAMMAS = [0.1, 0.5, 0.9, 0.99, 1.0, 1, 0.0, 2.0, -0.5, 10.0, 1e-3, 3]
SMALL_INTS = [0, 1, 2, 3, 5, 7, 10, 30, -1, -3, 100]


class Scaled:
    """A callable object with state (its ``__dict__`` goes into the state_dict)."""

    def __init__(self, base: float) -> None:
        self.base = base

    def __call__(self, x: Any) -> float:
        return self.base ** (x % 7)


LAMBDAS: list[Callable[[int], Any]] = [
    lambda e: 0.95**e, lambda e: 1 / (e + 1) if e != -1 else 1.0, lambda e: e // 3, lambda e: 0.0,
    lambda e: 1.0, lambda e: 1.5 if e % 2 else 0.5, Scaled(0.9),
]
MULTIPLIERS: list[Any] = [lambda e: 0.9, lambda e: 1.0 if e % 2 else 0.5, lambda e: 1.01, Scaled(0.99),
                          lambda e: 0.0]
SCALE_FNS: list[Any] = [None, None, lambda x: 1 / (x + 1), lambda x: 0.99**x, Scaled(0.95)]


@dataclass
class Case:
    kind: str
    lrs: list[float]
    build: Callable[[Any, Any, int], Any]
    tensor_lr: list[bool] = field(default_factory=list)
    optimizer: str = "SGD"  # or "Adam" (momentum lives in betas[0])
    momentum: float = 0.9
    resume: int = -1  # >= 0: rebuild with last_epoch=resume after resume + 1 fresh steps
    steps: int = 20
    metrics: list[Any] = field(default_factory=list)
    epochs: dict[int, Any] = field(default_factory=dict)  # step index -> deprecated step(epoch) argument
    roundtrip: dict[int, str] = field(default_factory=dict)  # step index -> "self", "pickle" or "cross"
    get_lr_at: set[int] = field(default_factory=set)  # step indices after which get_lr() is called directly
    text: str = ""


def per_group(rng: random.Random, n: int, pool: list[Any], tensors: bool = False) -> Any:
    """A scalar, or (sometimes) one value per group, (rarely) of the wrong length or as tensors."""
    r = rng.random()
    if r < 0.6:
        return rng.choice(pool)
    size = n if r < 0.95 else n + 1
    values = [rng.choice(pool) for _ in range(size)]
    if tensors and rng.random() < 0.3:
        values = [torch.tensor(float(v), dtype=torch.float64) for v in values]
    return values if rng.random() < 0.8 else tuple(values)


def _text(name: str, kwargs: dict) -> str:
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


def simple(name: str, kwargs: dict) -> tuple[Callable, str]:
    def build(L, opt, last_epoch=-1):
        return getattr(L, name)(opt, **kwargs, last_epoch=last_epoch)

    return build, _text(name, kwargs)


def draw_chainable(rng: random.Random, n: int) -> tuple[Callable, str]:
    """One of the schedulers that compose (for SequentialLR / ChainedScheduler children too)."""
    kind = rng.choice(["StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR", "PolynomialLR",
                       "CosineAnnealingLR", "LambdaLR", "MultiplicativeLR"])
    return DRAWS[kind](rng, n)


def draw_step(rng, n):
    return simple("StepLR", {"step_size": rng.choice([1, 2, 3, 7, 30, 0, -1, -2, 2.5]), "gamma": rng.choice(GAMMAS)})


def draw_multistep(rng, n):
    milestones = [rng.randint(-3, 40) for _ in range(rng.randint(0, 5))]
    if rng.random() < 0.3 and milestones:
        milestones.append(rng.choice(milestones))
    return simple("MultiStepLR", {"milestones": milestones, "gamma": rng.choice(GAMMAS)})


def draw_constant(rng, n):
    return simple("ConstantLR", {"factor": rng.choice([1 / 3, 0.5, 0, 1, 1.0, 0.1, -0.1, 1.5]),
                                 "total_iters": rng.choice([5, 0, -1, 1, 3, 100, 2.5])})


def draw_linear(rng, n):
    return simple("LinearLR", {"start_factor": rng.choice([1 / 3, 0.5, 1, 1.0, 1e-3, 0, 1.2]),
                               "end_factor": rng.choice([1.0, 1, 0, 0.5, 0.2, 1.1, -0.1]),
                               "total_iters": rng.choice([5, 0, 1, 3, 100, 4.5])})


def draw_exponential(rng, n):
    return simple("ExponentialLR", {"gamma": rng.choice(GAMMAS)})


def draw_polynomial(rng, n):
    return simple("PolynomialLR", {"total_iters": rng.choice([5, 0, 1, 3, -1, 50, 7.5]),
                                   "power": rng.choice([1.0, 1, 2, 0.5, 0.9, 0, -1, 3])})


def draw_cosine(rng, n):
    return simple("CosineAnnealingLR", {"T_max": rng.choice([10, 1, 2, 5, 0, -3, 100, 2.5, 3]),
                                        "eta_min": rng.choice([0, 0.0, 1e-5, 0.01, 0.5, -0.01])})


def draw_warm_restarts(rng, n):
    return simple("CosineAnnealingWarmRestarts", {
        "T_0": rng.choice([1, 2, 5, 10, 3, 0, -1, 2.5]), "T_mult": rng.choice([1, 2, 3, 1, 0, 1.5]),
        "eta_min": rng.choice([0, 0.0, 1e-4, 0.05, -0.1, "0.1"])})


def draw_lambda(rng, n):
    picks = [rng.randrange(len(LAMBDAS)) for _ in range(n)]
    as_list = rng.random() < 0.5

    def build(L, opt, last_epoch=-1):
        fns = [LAMBDAS[i] for i in picks]
        return L.LambdaLR(opt, fns if as_list else fns[0], last_epoch=last_epoch)

    return build, f"LambdaLR(lambdas={picks if as_list else picks[0]})"


def draw_multiplicative(rng, n):
    picks = [rng.randrange(len(MULTIPLIERS) + 1) for _ in range(n)]  # the extra index: not callable
    as_list = rng.random() < 0.5

    def build(L, opt, last_epoch=-1):
        fns = [MULTIPLIERS[i] if i < len(MULTIPLIERS) else 0.95 for i in picks]
        return L.MultiplicativeLR(opt, fns if as_list else fns[0], last_epoch=last_epoch)

    return build, f"MultiplicativeLR(lambdas={picks if as_list else picks[0]})"


def draw_cyclic(rng, n):
    kwargs = {
        "base_lr": per_group(rng, n, [0.01, 0.001, 0.1, 0, 1], tensors=True),
        "max_lr": per_group(rng, n, [0.1, 1.0, 0.05, 0.01], tensors=True),
        "step_size_up": rng.choice([1, 2, 5, 2000, 3, 0, 2.5]),
        "step_size_down": rng.choice([None, None, 1, 3, 0, 7]),
        "mode": rng.choice(["triangular", "triangular2", "exp_range", "exp_range", "bogus"]),
        "gamma": rng.choice([1.0, 0.99, 0.9, 1.1]),
        "scale_mode": rng.choice(["cycle", "iterations"]),
        "cycle_momentum": rng.random() < 0.7,
        "base_momentum": per_group(rng, n, [0.8, 0.85, 0.5]),
        "max_momentum": per_group(rng, n, [0.9, 0.95, 0.99]),
    }
    fn = rng.randrange(len(SCALE_FNS))

    def build(L, opt, last_epoch=-1):
        return L.CyclicLR(opt, **kwargs, scale_fn=SCALE_FNS[fn], last_epoch=last_epoch)

    return build, _text("CyclicLR", {**kwargs, "scale_fn": fn})


def draw_onecycle(rng, n):
    kwargs: dict[str, Any] = {"max_lr": per_group(rng, n, [0.1, 1.0, 0.01, 25, 0], tensors=True)}
    if rng.random() < 0.75:
        kwargs["total_steps"] = rng.choice([10, 1, 2, 3, 25, 100, 0, -1, 2.5, None])
    if rng.random() < 0.4:
        kwargs["epochs"] = rng.choice([2, 3, 1, 0, 1.5])
        kwargs["steps_per_epoch"] = rng.choice([5, 1, 4, 0, -2])
    kwargs.update({
        "pct_start": rng.choice([0.3, 0.0, 1.0, 0.5, 0.25, 0.9, 1.1, 1, -0.1]),
        "anneal_strategy": rng.choice(["cos", "linear", "cos", "exp"]),
        "cycle_momentum": rng.random() < 0.7,
        "base_momentum": per_group(rng, n, [0.85, 0.8, 1]),
        "max_momentum": per_group(rng, n, [0.95, 0.9, 22]),
        "div_factor": rng.choice([25.0, 1, 1e4, 0.5]),
        "final_div_factor": rng.choice([1e4, 1, 10, 2]),
        "three_phase": rng.random() < 0.3,
    })
    return simple("OneCycleLR", kwargs)


def draw_plateau(rng, n):
    kwargs = {
        "mode": rng.choice(["min", "max", "min", "avg"]),
        "factor": rng.choice([0.1, 0.5, 0.9, 0, 1.0, -0.5, 0.99]),
        "patience": rng.choice([0, 1, 3, 10, 2]),
        "threshold": rng.choice([1e-4, 0, 0.1, 1, -0.01]),
        "threshold_mode": rng.choice(["rel", "abs", "rel", "bad"]),
        "cooldown": rng.choice([0, 1, 3]),
        "min_lr": per_group(rng, n, [0, 1e-3, 0.05, 1e-6]),
        "eps": rng.choice([1e-8, 0, 0.1, 1e-3]),
    }

    def build(L, opt, last_epoch=-1):
        return L.ReduceLROnPlateau(opt, **kwargs)

    return build, _text("ReduceLROnPlateau", kwargs)


def draw_swalr(rng, n):
    kwargs = {"swa_lr": per_group(rng, n, [0.05, 0.01, 0.5, 0, 1], tensors=True),
              "anneal_epochs": rng.choice([0, 1, 3, 10, 5, -1, 1.5]),
              "anneal_strategy": rng.choice(["cos", "linear", "cos", "exp"])}

    def build(L, opt, last_epoch=-1):
        return L.SWALR(opt, **kwargs, last_epoch=last_epoch)

    return build, _text("SWALR", kwargs)


NOT_CHAINABLE = ["CosineAnnealingWarmRestarts", "CyclicLR", "OneCycleLR", "SWALR", "ReduceLROnPlateau"]


def _children(rng: random.Random, n: int, nested: bool) -> list[tuple[Callable, str]]:
    out = []
    for _ in range(rng.randint(1, 3)):
        r = rng.random()
        if nested and r < 0.15:
            out.append(draw_chained(rng, n, nested=False))
        elif r > 0.9:  # torch takes these too (ReduceLROnPlateau: ValueError)
            out.append(DRAWS[rng.choice(NOT_CHAINABLE)](rng, n))
        else:
            out.append(draw_chainable(rng, n))
    return out


def draw_sequential(rng, n, nested=True):
    children = _children(rng, n, nested)
    milestones = sorted(rng.randint(-1, 15) for _ in range(len(children) - 1))
    if rng.random() < 0.1:
        milestones = milestones + [rng.randint(0, 9)]  # one too many: ValueError
    elif rng.random() < 0.1:
        rng.shuffle(milestones)

    def build(L, opt, last_epoch=-1):
        return L.SequentialLR(opt, [b(L, opt) for b, _ in children], milestones, last_epoch=last_epoch)

    return build, f"SequentialLR([{', '.join(t for _, t in children)}], milestones={milestones})"


def draw_chained(rng, n, nested=True):
    children = _children(rng, n, nested)
    pass_opt = rng.random() < 0.5

    def build(L, opt, last_epoch=-1):
        built = [b(L, opt) for b, _ in children]
        return L.ChainedScheduler(built, opt) if pass_opt else L.ChainedScheduler(built)

    return build, f"ChainedScheduler([{', '.join(t for _, t in children)}])"


DRAWS: dict[str, Callable[[random.Random, int], tuple[Callable, str]]] = {
    "StepLR": draw_step, "MultiStepLR": draw_multistep, "ConstantLR": draw_constant, "LinearLR": draw_linear,
    "ExponentialLR": draw_exponential, "PolynomialLR": draw_polynomial, "CosineAnnealingLR": draw_cosine,
    "CosineAnnealingWarmRestarts": draw_warm_restarts, "CyclicLR": draw_cyclic, "OneCycleLR": draw_onecycle,
    "LambdaLR": draw_lambda, "MultiplicativeLR": draw_multiplicative, "SequentialLR": draw_sequential,
    "ChainedScheduler": draw_chained, "ReduceLROnPlateau": draw_plateau, "SWALR": draw_swalr,
}
RESUMABLE = set(DRAWS) - {"ReduceLROnPlateau", "ChainedScheduler"}
# classes whose step() takes the deprecated epoch argument (a closed form where they have one)
CLOSED_FORM_EPOCHS = {"StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR", "PolynomialLR",
                      "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "LambdaLR", "MultiplicativeLR",
                      "CyclicLR", "OneCycleLR", "SWALR", "ReduceLROnPlateau"}


def draw_metrics(rng: random.Random, steps: int) -> list[Any]:
    value, out = rng.choice([1.0, 10.0, -1.0, 0.0]), []
    for _ in range(steps):
        r = rng.random()
        value = value if r < 0.3 else value * rng.choice([0.9, 0.99, 1.0, 1.01, 1.2]) + rng.choice([0, 0, -0.1, 0.1])
        metric: Any = value
        if r > 0.97:
            metric = rng.choice([math.inf, -math.inf, math.nan])
        elif r > 0.85:
            metric = torch.tensor(value)
        out.append(metric)
    return out


def draw_case(kind: str, rng: random.Random) -> Case:
    n = rng.choice([1, 1, 2, 3])
    lrs = [rng.choice([0.1, 0.05, 0.01, 1.0, 1, 0.5, 1e-3, 3.0]) for _ in range(n)]
    build, text = DRAWS[kind](rng, n)
    case = Case(kind, lrs, build, tensor_lr=[rng.random() < 0.15 for _ in range(n)],
                optimizer="Adam" if rng.random() < 0.1 else "SGD",
                momentum=rng.choice([0.9, 0.0, 0.5]), steps=rng.randint(1, 60), text=text)
    if kind in RESUMABLE and rng.random() < 0.2:
        case.resume = rng.choice([0, 1, 3, 7])
    if kind == "ReduceLROnPlateau":
        case.metrics = draw_metrics(rng, case.steps)
    if kind in CLOSED_FORM_EPOCHS and rng.random() < 0.1:
        at = rng.randrange(case.steps)
        fractional = kind == "CosineAnnealingWarmRestarts"
        case.epochs[at] = rng.choice([0, 2.5, 7, 12.25, 31]) if fractional else rng.randint(0, 30)
    for _ in range(rng.choice([0, 0, 1, 2])):
        case.roundtrip[rng.randrange(case.steps)] = rng.choice(["self", "cross", "pickle"])
    if kind != "ReduceLROnPlateau" and rng.random() < 0.1:
        case.get_lr_at.add(rng.randrange(case.steps))
    return case
