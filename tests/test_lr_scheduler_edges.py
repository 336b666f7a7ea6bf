"""Edge cases where torchstep's schedulers once differed from torch 2.13's, run side by side.

Each case builds torch's scheduler on a torch.optim.SGD and ours on a torchstep SGD, steps both
and compares every lr -- or, where torch raises, the exception type and the step it comes at.
"""

from __future__ import annotations

import math
import pickle
import types
import warnings

import pytest
import torch
from torch.optim import lr_scheduler as T

import torchstep.optim
import torchstep.optim.lr_scheduler as S

LIBS = {"torch": (T, torch.optim.SGD), "torchstep": (S, torchstep.optim.SGD)}


def make_opt(lib: str, lrs=(0.1, 0.03), momentum=0.9):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]
    return LIBS[lib][1](groups, lr=lrs[0], momentum=momentum)


def trace(lib: str, build, steps: int = 8, lrs=(0.1, 0.03)):
    """Every group's lr after construction and after each step; an exception ends the trace."""
    sched_mod = LIBS[lib][0]
    opt = make_opt(lib, lrs)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sched = build(sched_mod, opt)
            out.append([float(g["lr"]) for g in opt.param_groups])
            for _ in range(steps):
                opt.step()
                sched.step()
                out.append([float(g["lr"]) for g in opt.param_groups])
        except Exception as exc:  # noqa: BLE001 -- the exception type is what we compare
            out.append(type(exc).__name__)
    return out


def same(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return all(math.isclose(x, y, rel_tol=1e-12, abs_tol=0.0) or x == y for x, y in zip(a, b, strict=True))


def assert_same_as_torch(build, steps=8):
    theirs, ours = trace("torch", build, steps), trace("torchstep", build, steps)
    assert len(theirs) == len(ours), f"torch {theirs}\nours  {ours}"
    for t, (a, b) in enumerate(zip(theirs, ours)):
        assert same(a, b), f"step {t}: torch {a} != torchstep {b}\ntorch {theirs}\nours  {ours}"
    return theirs


def test_polynomial_total_iters_zero_keeps_the_lr():
    lrs = assert_same_as_torch(lambda L, o: L.PolynomialLR(o, total_iters=0))
    assert lrs[-1] == [0.1, 0.03]


def test_step_lr_negative_step_size_decays_every_step():
    lrs = assert_same_as_torch(lambda L, o: L.StepLR(o, step_size=-1, gamma=0.5))
    assert lrs[3][0] == pytest.approx(0.1 * 0.5**3)


@pytest.mark.parametrize("milestones", [[-2, 1, 3], [-1, -1, 0, 2], [0, 0]])
def test_multistep_negative_and_zero_milestones(milestones):
    assert_same_as_torch(lambda L, o: L.MultiStepLR(o, milestones=milestones, gamma=0.5))


def test_constant_lr_negative_total_iters_never_restores():
    lrs = assert_same_as_torch(lambda L, o: L.ConstantLR(o, factor=0.5, total_iters=-1))
    assert lrs[-1] == [0.05, 0.015]


def test_constant_lr_factor_zero_raises_at_total_iters():
    lrs = assert_same_as_torch(lambda L, o: L.ConstantLR(o, factor=0, total_iters=3))
    assert lrs[-1] == "ZeroDivisionError" and len(lrs) == 4


@pytest.mark.parametrize("total_iters", [0, -2])
def test_linear_lr_degenerate_total_iters(total_iters):
    assert_same_as_torch(lambda L, o: L.LinearLR(o, start_factor=0.5, total_iters=total_iters))


def test_sequential_keeps_base_lr_after_constant_with_zero_iters():
    def build(L, o):
        return L.SequentialLR(
            o,
            [L.LinearLR(o, 0.5, total_iters=2), L.ConstantLR(o, factor=0.1, total_iters=0), L.ExponentialLR(o, 0.9)],
            milestones=[2, 4],
        )

    lrs = assert_same_as_torch(build)
    assert lrs[2] == [0.1, 0.03]  # the milestone step: base lr, not base lr * 0.1


def test_sequential_raises_like_torch_when_linear_has_zero_iters():
    def build(L, o):
        return L.SequentialLR(o, [L.ExponentialLR(o, 0.9), L.LinearLR(o, 0.5, total_iters=0)], milestones=[2])

    assert assert_same_as_torch(build)[-1] == "ZeroDivisionError"


# --- warnings: torch's texts, word for word ------------------------------------------------------


def caught(lib: str, action) -> list[str]:
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        action(lib)
    return [str(w.message) for w in ws if issubclass(w.category, UserWarning)]


def test_epoch_deprecation_text_is_torchs():
    assert S.EPOCH_DEPRECATION_WARNING == T.EPOCH_DEPRECATION_WARNING

    def action(lib):
        opt = make_opt(lib)
        sched = LIBS[lib][0].StepLR(opt, 2)
        opt.step()
        sched.step(3)

    assert caught("torchstep", action) == caught("torch", action) == [T.EPOCH_DEPRECATION_WARNING]


def test_step_order_warning_text_is_torchs():
    def action(lib):
        opt = make_opt(lib)
        sched = LIBS[lib][0].ExponentialLR(opt, 0.9)
        sched.step()
        opt.step()

    theirs = caught("torch", action)
    assert len(theirs) == 1 and theirs[0].startswith("Detected call of `lr_scheduler.step()`")
    assert caught("torchstep", action) == theirs


def _override_step(opt):
    original = opt.step

    def new_step(self, *args, **kwargs):
        return original(*args, **kwargs)

    opt.step = types.MethodType(new_step, opt)


@pytest.mark.parametrize("optimizer_first", [True, False])
def test_overridden_optimizer_step_warns_like_torch(optimizer_first):
    def action(lib):
        opt = make_opt(lib)
        sched = LIBS[lib][0].StepLR(opt, 3)
        _override_step(opt)
        for _ in range(3):
            if optimizer_first:
                opt.step()
            sched.step()
            if not optimizer_first:
                opt.step()

    theirs = caught("torch", action)
    assert len(theirs) == 1 and "`optimizer.step()` has been overridden" in theirs[0]
    assert caught("torchstep", action) == theirs


@pytest.mark.parametrize("optimizer_first", [True, False])
def test_optimizer_step_overridden_before_the_scheduler_is_no_override(optimizer_first):
    """torch wraps the override it finds; we see its calls through the step hooks: the order
    warning comes exactly when the scheduler steps first."""
    def action(lib):
        opt = make_opt(lib)
        _override_step(opt)
        sched = LIBS[lib][0].StepLR(opt, 3)
        for _ in range(3):
            if optimizer_first:
                opt.step()
            sched.step()
            if not optimizer_first:
                opt.step()

    theirs = caught("torch", action)
    assert len(theirs) == (0 if optimizer_first else 1)
    assert caught("torchstep", action) == theirs


# --- legacy state_dicts torch still loads --------------------------------------------------------


def onecycle(lib):
    opt = make_opt(lib)
    return opt, LIBS[lib][0].OneCycleLR(opt, max_lr=25, final_div_factor=2, base_momentum=1, max_momentum=22,
                                        total_steps=10)


def test_onecycle_loads_legacy_anneal_func():
    runs = {}
    for lib in LIBS:
        opt, sched = onecycle(lib)
        del sched._anneal_func_type  # a scheduler from before anneal_strategy was stored by name
        state = sched.state_dict()
        state["anneal_func"] = type(sched)._annealing_cos
        sched.load_state_dict(state)
        lrs = []
        for _ in range(9):
            opt.step()
            sched.step()
            lrs.append(float(opt.param_groups[0]["lr"]))
        runs[lib] = lrs
    assert runs["torchstep"] == pytest.approx(runs["torch"], rel=1e-12)
    assert "anneal_func" not in onecycle("torchstep")[1].state_dict()


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_cyclic_scale_fn_ref_and_picklable_state(mode):
    for lib in LIBS:
        opt = make_opt(lib)
        sched = LIBS[lib][0].CyclicLR(opt, 0.01, 0.1, step_size_up=3, mode=mode, gamma=0.9)
        assert sched._scale_fn_ref(3) == sched.scale_fn(3)
        state = sched.state_dict()
        assert "_scale_fn_ref" not in state and state["_scale_fn_custom"] is None
        pickle.loads(pickle.dumps(state))
    if mode != "exp_range":  # torch keeps the built-in scale functions as plain functions
        assert isinstance(sched._scale_fn_ref, types.FunctionType)


def test_cyclic_loads_state_with_legacy_scale_fn_entries():
    """A state_dict from before ``_scale_fn_ref`` was dropped from it still loads, and the mode wins."""
    runs = {}
    for lib in LIBS:
        src_opt = make_opt(lib)
        src = LIBS[lib][0].CyclicLR(src_opt, 0.01, 0.1, step_size_up=2, mode="triangular2")
        state = src.state_dict()
        state["_scale_fn_ref"] = lambda x: 1.0  # stale: the loaded mode decides the scale function
        opt = make_opt(lib)
        sched = LIBS[lib][0].CyclicLR(opt, 0.01, 0.1, step_size_up=2)
        sched.load_state_dict(state)
        lrs = []
        for _ in range(8):
            opt.step()
            sched.step()
            lrs.append(float(opt.param_groups[0]["lr"]))
        runs[lib] = lrs
    assert runs["torchstep"] == pytest.approx(runs["torch"], rel=1e-12)
