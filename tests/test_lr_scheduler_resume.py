"""Resuming: state_dict round trips mid-run (torch -> torchstep, torchstep -> torch, torchstep ->
torchstep), construction with ``last_epoch=k``, and the deprecated ``step(epoch)`` closed-form path."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch.optim import lr_scheduler as T

import torchstep.optim.lr_scheduler as S
from test_lr_scheduler_parity import (PLATEAU, SEQUENTIAL, SINGLE, STEPS, assert_same_trace, drive, make_optimizer,
                                      plateau_metrics, snapshot)

LIBS = {"torch": T, "torchstep": S}
RESUMED = ["lambda", "multiplicative", "step", "multistep", "constant", "linear", "exponential", "polynomial",
           "cosine_eta_min", "cyclic_exp_range", "cyclic_custom_cycle", "cyclic_adam_betas", "onecycle_three_phase",
           "warm_restarts_mult"]


def resume(build, kind, first, second, at, metrics=None):
    """Run ``at`` steps with library ``first``, checkpoint, continue to STEPS with library ``second``."""
    opt = make_optimizer(kind)
    sched = build(LIBS[first], opt)
    for t in range(at):
        opt.step()
        sched.step() if metrics is None else sched.step(metrics[t])
    opt_state, sched_state = copy.deepcopy(opt.state_dict()), copy.deepcopy(sched.state_dict())

    opt2 = make_optimizer(kind)
    sched2 = build(LIBS[second], opt2)
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(sched_state)
    trace = [snapshot(opt2, sched2)]
    for t in range(at, STEPS):
        opt2.step()
        sched2.step() if metrics is None else sched2.step(metrics[t])
        trace.append(snapshot(opt2, sched2))
    return trace


@pytest.mark.parametrize("name", RESUMED)
@pytest.mark.parametrize("first,second", [("torch", "torchstep"), ("torchstep", "torch"), ("torchstep", "torchstep")])
def test_state_dict_resume_midway(name, first, second):
    build, kind = SINGLE[name]
    reference, _, _ = drive(T, build, kind)
    at = 97
    assert_same_trace(resume(build, kind, first, second, at), reference[at:])


@pytest.mark.parametrize("name", sorted(SEQUENTIAL)[:3])
@pytest.mark.parametrize("first,second", [("torch", "torchstep"), ("torchstep", "torch")])
def test_sequential_state_dict_resume(name, first, second):
    reference, _, _ = drive(T, SEQUENTIAL[name], "sgd")
    assert_same_trace(resume(SEQUENTIAL[name], "sgd", first, second, 55), reference[55:])


@pytest.mark.parametrize("first,second", [("torch", "torchstep"), ("torchstep", "torch")])
def test_plateau_state_dict_resume(first, second):
    metrics = plateau_metrics()
    build = PLATEAU["min_rel_cooldown"]
    reference, _, _ = drive(T, build, "sgd", metrics=metrics)
    assert_same_trace(resume(build, "sgd", first, second, 63, metrics), reference[63:])


WITH_LAST_EPOCH = {
    "step": lambda L, o, e: L.StepLR(o, 10, 0.5, last_epoch=e),
    "multistep": lambda L, o, e: L.MultiStepLR(o, [5, 30, 31], 0.5, last_epoch=e),
    "constant": lambda L, o, e: L.ConstantLR(o, 0.5, 30, last_epoch=e),
    "linear": lambda L, o, e: L.LinearLR(o, 0.2, 0.9, 40, last_epoch=e),
    "exponential": lambda L, o, e: L.ExponentialLR(o, 0.97, last_epoch=e),
    "polynomial": lambda L, o, e: L.PolynomialLR(o, 60, 2.0, last_epoch=e),
    "cosine": lambda L, o, e: L.CosineAnnealingLR(o, 25, 0.001, last_epoch=e),
    "lambda": lambda L, o, e: L.LambdaLR(o, lambda t: 1 / (1 + t), last_epoch=e),
    "multiplicative": lambda L, o, e: L.MultiplicativeLR(o, lambda t: 0.98, last_epoch=e),
    "cyclic": lambda L, o, e: L.CyclicLR(o, 0.01, 0.1, 7, mode="triangular2", last_epoch=e),
    "onecycle": lambda L, o, e: L.OneCycleLR(o, 0.1, total_steps=120, last_epoch=e),
    "warm_restarts": lambda L, o, e: L.CosineAnnealingWarmRestarts(o, 4, 2, last_epoch=e),
}


@pytest.mark.parametrize("name", sorted(WITH_LAST_EPOCH))
@pytest.mark.parametrize("k", [0, 29, 30])
def test_construct_with_last_epoch_matches_torch(name, k):
    """A scheduler rebuilt with last_epoch=k on a running optimizer continues as torch's does."""

    def run(L):
        opt = make_optimizer("sgd")
        first = WITH_LAST_EPOCH[name](L, opt, -1)
        for _ in range(k):
            opt.step()
            first.step()
        second = WITH_LAST_EPOCH[name](L, opt, k)
        trace = [snapshot(opt, second)]
        for _ in range(60):
            opt.step()
            second.step()
            trace.append(snapshot(opt, second))
        return trace

    assert_same_trace(run(S), run(T))


def test_last_epoch_without_initial_lr_is_a_key_error():
    for L in (S, T):
        with pytest.raises(KeyError, match="initial_lr"):
            L.StepLR(make_optimizer(), 3, last_epoch=5)


CLOSED_FORM = ["step", "multistep", "constant", "linear", "exponential", "polynomial", "cosine", "cosine_eta_min",
               "lambda", "cyclic_triangular2", "onecycle_cos", "warm_restarts_mult"]
EPOCHS = [0, 1, 2, 5, 3, 40, 41, 39, 120, 7, 150, 151, 0, 99]


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_step_with_epoch_uses_the_closed_form_like_torch(name):
    build, kind = SINGLE[name]

    def run(L):
        opt = make_optimizer(kind)
        sched = build(L, opt)
        trace = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for e in EPOCHS:
                opt.step()
                sched.step(e)
                trace.append(snapshot(opt, sched))
        return trace

    assert_same_trace(run(S), run(T))


@pytest.mark.parametrize("T_0,T_mult", [(3, 1), (3, 2), (5, 2), (2, 4)])
def test_warm_restarts_fractional_epochs_match_torch(T_0, T_mult):
    """The documented per-batch use: step(epoch + i / iters)."""

    def run(L):
        opt = make_optimizer("sgd")
        sched = L.CosineAnnealingWarmRestarts(opt, T_0=T_0, T_mult=T_mult, eta_min=1e-4)
        trace = []
        iters = 7
        for epoch in range(30):
            for i in range(iters):
                opt.step()
                sched.step(epoch + i / iters)
                trace.append(snapshot(opt, sched))
        return trace

    assert_same_trace(run(S), run(T))


def test_warm_restarts_exact_restart_by_epoch():
    """At an exact restart torch 2.13's logarithm can land in the previous cycle (T_0=1, T_mult=3,
    epoch=121 gives eta_min there); torchstep restarts exactly, as step() does."""
    opt = make_optimizer()
    sched = S.CosineAnnealingWarmRestarts(opt, T_0=1, T_mult=3, eta_min=0.0)
    sched.step(121)
    assert (sched.T_cur, sched.T_i) == (0, 243)
    assert sched.get_last_lr() == pytest.approx([0.1, 0.03])
    stepped = S.CosineAnnealingWarmRestarts(make_optimizer(), T_0=1, T_mult=3)
    for _ in range(121):
        stepped.step()
    assert stepped.get_last_lr() == pytest.approx(sched.get_last_lr())


def test_onecycle_refuses_to_step_past_total_steps():
    for L in (S, T):
        opt = make_optimizer()
        sched = L.OneCycleLR(opt, 0.1, total_steps=5)
        for _ in range(5):
            opt.step()
            sched.step()
        with pytest.raises(ValueError, match="Tried to step 6 times"):
            sched.step()


def test_tensor_lr_is_filled_in_place_and_tracks_torch():
    def run(L):
        p = torch.nn.Parameter(torch.zeros(2))
        opt = torch.optim.SGD([p], lr=torch.tensor(0.1), momentum=0.9)
        lr_tensor = opt.param_groups[0]["lr"]
        sched = L.CosineAnnealingLR(opt, 20, eta_min=0.01)
        values = []
        for _ in range(50):
            opt.step()
            sched.step()
            assert opt.param_groups[0]["lr"] is lr_tensor
            assert isinstance(sched.get_last_lr()[0], torch.Tensor)
            assert sched.get_last_lr()[0] is not lr_tensor
            values.append(float(lr_tensor))
        return values

    mine, theirs = run(S), run(T)
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(mine, theirs))
