"""Per-step parity of torchstep.optim.lr_scheduler with torch 2.13's, in the same process.

Every scheduler runs side by side with torch's on its own torch.optim optimizer (two param groups
with different lrs) for 200+ steps; lrs, momentum / betas and ``get_last_lr()`` must agree at every
step, and the final state_dicts must hold the same keys and values.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim import lr_scheduler as T

import torchstep.optim.lr_scheduler as S

STEPS = 220


def make_optimizer(kind: str = "sgd", lrs=(0.1, 0.03)) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lrs[0], betas=(0.9, 0.99))
    return torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)


def snapshot(opt, sched) -> list[float]:
    out = []
    for g in opt.param_groups:
        out.append(float(g["lr"]))
        out.append(float(g["momentum"]) if "momentum" in g else float(g["betas"][0]))
    return out + [float(v) for v in sched.get_last_lr()]


def close(a, b) -> bool:
    return all(math.isclose(x, y, rel_tol=1e-11, abs_tol=1e-15) for x, y in zip(a, b, strict=True))


def drive(lib, build, kind, steps=STEPS, metrics=None):
    opt = make_optimizer(kind)
    sched = build(lib, opt)
    trace = [snapshot(opt, sched)]
    for t in range(steps):
        opt.step()
        if metrics is None:
            sched.step()
        else:
            sched.step(metrics[t])
        trace.append(snapshot(opt, sched))
    return trace, sched, opt


def assert_same_trace(mine, theirs):
    for t, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        assert close(a, b), f"step {t}: torchstep {a} != torch {b}"


def comparable(value):
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if k != "lr_lambdas"}
    if isinstance(value, (list, tuple)):
        return [comparable(v) for v in value]
    if isinstance(value, float):
        return round(value, 12)
    return value


def decay_gamma(epoch):
    return 0.97 if epoch % 3 else 0.9


SINGLE = {
    "lambda": (lambda L, o: L.LambdaLR(o, [lambda e: 0.95**e, lambda e: 1 / (1 + e)]), "sgd"),
    "multiplicative": (lambda L, o: L.MultiplicativeLR(o, decay_gamma), "sgd"),
    "step": (lambda L, o: L.StepLR(o, step_size=7, gamma=0.5), "sgd"),
    "step_default_gamma": (lambda L, o: L.StepLR(o, 30), "adam"),
    "multistep": (lambda L, o: L.MultiStepLR(o, milestones=[10, 40, 40, 150], gamma=0.3), "sgd"),
    "constant": (lambda L, o: L.ConstantLR(o, factor=0.25, total_iters=50), "sgd"),
    "constant_default": (lambda L, o: L.ConstantLR(o), "sgd"),
    "linear": (lambda L, o: L.LinearLR(o, start_factor=0.1, end_factor=0.7, total_iters=60), "sgd"),
    "linear_default": (lambda L, o: L.LinearLR(o), "sgd"),
    "linear_zero_iters": (lambda L, o: L.LinearLR(o, start_factor=0.5, total_iters=0), "sgd"),
    "constant_zero_iters": (lambda L, o: L.ConstantLR(o, factor=0.5, total_iters=0), "sgd"),
    "exponential": (lambda L, o: L.ExponentialLR(o, gamma=0.98), "sgd"),
    "polynomial": (lambda L, o: L.PolynomialLR(o, total_iters=150, power=2.0), "sgd"),
    "polynomial_sqrt": (lambda L, o: L.PolynomialLR(o, total_iters=100, power=0.5), "sgd"),
    "cosine": (lambda L, o: L.CosineAnnealingLR(o, T_max=50), "sgd"),
    "cosine_eta_min": (lambda L, o: L.CosineAnnealingLR(o, T_max=37, eta_min=0.005), "sgd"),
    "cyclic_triangular": (lambda L, o: L.CyclicLR(o, 0.01, [0.1, 0.2], step_size_up=20), "sgd"),
    "cyclic_triangular2": (lambda L, o: L.CyclicLR(o, 0.01, 0.1, step_size_up=15, step_size_down=25,
                                                   mode="triangular2"), "sgd"),
    "cyclic_exp_range": (lambda L, o: L.CyclicLR(o, [0.01, 0.02], 0.1, step_size_up=10, mode="exp_range",
                                                 gamma=0.99), "sgd"),
    "cyclic_custom_cycle": (lambda L, o: L.CyclicLR(o, 0.01, 0.1, step_size_up=12,
                                                    scale_fn=lambda x: 1 / x, scale_mode="cycle"), "sgd"),
    "cyclic_custom_iterations": (lambda L, o: L.CyclicLR(o, 0.01, 0.1, step_size_up=9, step_size_down=4,
                                                         scale_fn=lambda x: 0.995**x, scale_mode="iterations",
                                                         base_momentum=0.7, max_momentum=[0.95, 0.9]), "sgd"),
    "cyclic_adam_betas": (lambda L, o: L.CyclicLR(o, 0.001, 0.01, step_size_up=25), "adam"),
    "cyclic_no_momentum": (lambda L, o: L.CyclicLR(o, 0.001, 0.01, step_size_up=25, cycle_momentum=False), "sgd"),
    "onecycle_cos": (lambda L, o: L.OneCycleLR(o, max_lr=[0.1, 0.05], total_steps=STEPS), "sgd"),
    "onecycle_linear": (lambda L, o: L.OneCycleLR(o, max_lr=0.1, total_steps=STEPS, anneal_strategy="linear"), "sgd"),
    "onecycle_three_phase": (lambda L, o: L.OneCycleLR(o, max_lr=0.1, epochs=11, steps_per_epoch=20,
                                                       three_phase=True, pct_start=0.25), "sgd"),
    "onecycle_three_phase_linear_adam": (lambda L, o: L.OneCycleLR(
        o, max_lr=0.01, total_steps=STEPS, three_phase=True, anneal_strategy="linear", div_factor=10.0,
        final_div_factor=100.0, base_momentum=0.8, max_momentum=0.9), "adam"),
    "onecycle_no_momentum": (lambda L, o: L.OneCycleLR(o, max_lr=0.1, total_steps=STEPS, cycle_momentum=False,
                                                       pct_start=0.5), "sgd"),
    "warm_restarts": (lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=10), "sgd"),
    "warm_restarts_mult": (lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2, eta_min=0.001), "sgd"),
    "warm_restarts_mult3": (lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=3), "adam"),
}


@pytest.mark.parametrize("name", sorted(SINGLE))
def test_single_scheduler_matches_torch(name):
    build, kind = SINGLE[name]
    mine, my_sched, _ = drive(S, build, kind)
    theirs, torch_sched, _ = drive(T, build, kind)
    assert_same_trace(mine, theirs)
    assert comparable(my_sched.state_dict()) == comparable(torch_sched.state_dict())


CHAINED = {
    "step+exponential": lambda L, o: [L.StepLR(o, 10, 0.5), L.ExponentialLR(o, 0.99)],
    "cosine_eta_min+step": lambda L, o: [L.CosineAnnealingLR(o, 40, eta_min=0.01), L.StepLR(o, 25, 0.5)],
    "step+cosine_eta_min": lambda L, o: [L.StepLR(o, 25, 0.5), L.CosineAnnealingLR(o, 40, eta_min=0.01)],
    "linear+cosine": lambda L, o: [L.LinearLR(o, 0.1, total_iters=20), L.CosineAnnealingLR(o, 200, 0.001)],
    "constant+multistep": lambda L, o: [L.ConstantLR(o, 0.5, 30), L.MultiStepLR(o, [20, 60, 120], 0.2)],
    "multiplicative+polynomial": lambda L, o: [L.MultiplicativeLR(o, decay_gamma), L.PolynomialLR(o, 100, 1.5)],
    "exponential+lambda": lambda L, o: [L.ExponentialLR(o, 0.99), L.LambdaLR(o, lambda e: 1 + e % 5)],
}


@pytest.mark.parametrize("name", sorted(CHAINED))
@pytest.mark.parametrize("form", ["two_steps", "ChainedScheduler"])
def test_chained_schedulers_match_torch(name, form):
    """Two schedulers on one optimizer: torch's recursive (chainable) form, step by step."""

    class Both:
        def __init__(self, L, o):
            self.parts = CHAINED[name](L, o)
            self.chain = L.ChainedScheduler(self.parts) if form == "ChainedScheduler" else None

        def step(self):
            if self.chain is not None:
                self.chain.step()
            else:
                for s in self.parts:
                    s.step()

        def get_last_lr(self):
            return (self.chain or self.parts[-1]).get_last_lr()

    mine, _, _ = drive(S, Both, "sgd")
    theirs, _, _ = drive(T, Both, "sgd")
    assert_same_trace(mine, theirs)


SEQUENTIAL = {
    "warmup_then_cosine": lambda L, o: L.SequentialLR(
        o, [L.LinearLR(o, 0.01, total_iters=20), L.CosineAnnealingLR(o, 180, 1e-4)], milestones=[20]),
    "constant_exp_step": lambda L, o: L.SequentialLR(
        o, [L.ConstantLR(o, 0.1, 10), L.ExponentialLR(o, 0.97), L.StepLR(o, 15, 0.5)], milestones=[15, 90]),
    "multiplicative_then_warm_restarts": lambda L, o: L.SequentialLR(
        o, [L.MultiplicativeLR(o, decay_gamma), L.CosineAnnealingWarmRestarts(o, 13, 2)], milestones=[30]),
    "lambda_then_poly": lambda L, o: L.SequentialLR(
        o, [L.LambdaLR(o, lambda e: (e + 1) / 10), L.PolynomialLR(o, 120, 2.0)], milestones=[10]),
    "nested_chained": lambda L, o: L.SequentialLR(
        o, [L.ChainedScheduler([L.LinearLR(o, 0.2, total_iters=10), L.ExponentialLR(o, 0.995)]),
            L.CosineAnnealingLR(o, 100)], milestones=[1000]),
}


@pytest.mark.filterwarnings("ignore:Detected call")  # nested_chained: torch warns too
@pytest.mark.parametrize("name", sorted(SEQUENTIAL))
def test_sequential_matches_torch(name):
    mine, my_sched, _ = drive(S, SEQUENTIAL[name], "sgd")
    theirs, torch_sched, _ = drive(T, SEQUENTIAL[name], "sgd")
    assert_same_trace(mine, theirs)
    assert comparable(my_sched.state_dict()) == comparable(torch_sched.state_dict())


def plateau_metrics(n=STEPS):
    """Improves, plateaus, improves a little (below threshold), plateaus, gets worse, improves."""
    out, v = [], 10.0
    for t in range(n):
        phase = (t // 20) % 5
        v = v * 0.9 if phase == 0 else v * (1 - 5e-5) if phase == 1 else v if phase == 2 else v * 1.01 if phase == 3 else v * 0.97
        out.append(v if t % 7 else torch.tensor(v))
    return out


PLATEAU = {
    "defaults": lambda L, o: L.ReduceLROnPlateau(o),
    "min_rel_cooldown": lambda L, o: L.ReduceLROnPlateau(o, factor=0.5, patience=3, cooldown=4),
    "min_abs": lambda L, o: L.ReduceLROnPlateau(o, patience=2, threshold=0.05, threshold_mode="abs", factor=0.7),
    "max_rel_min_lr_list": lambda L, o: L.ReduceLROnPlateau(o, mode="max", patience=1, min_lr=[0.01, 0.02], factor=0.5),
    "max_abs_eps": lambda L, o: L.ReduceLROnPlateau(o, mode="max", threshold_mode="abs", patience=0,
                                                    factor=0.9, eps=1e-3, min_lr=0.02),
}


@pytest.mark.parametrize("name", sorted(PLATEAU))
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_reduce_on_plateau_matches_torch(name, sign):
    metrics = [m * sign for m in plateau_metrics()]
    mine, my_sched, _ = drive(S, PLATEAU[name], "sgd", metrics=metrics)
    theirs, torch_sched, _ = drive(T, PLATEAU[name], "sgd", metrics=metrics)
    assert_same_trace(mine, theirs)
    assert len({tuple(s[:1]) for s in mine}) > 1 or name == "max_abs_eps", "the metric sequence must reduce the lr"
    assert comparable(my_sched.state_dict()) == comparable(torch_sched.state_dict())
