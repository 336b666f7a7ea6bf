"""The torch-shaped classes beyond per-step values: errors like torch's, warnings, isinstance, mixing
with torch's schedulers, optimizer-like objects, and each class's closed-form ``schedule()``."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch.optim import lr_scheduler as T

import torchstep.optim.lr_scheduler as S
from test_lr_scheduler_parity import SINGLE, assert_same_trace, drive, make_optimizer, snapshot

CLASSES = [name for name in T.__all__]


def test_every_torch_class_is_provided_with_the_same_signature():
    assert len(CLASSES) == 16  # 15 schedulers + the LRScheduler base
    for name in CLASSES:
        mine, theirs = getattr(S, name), getattr(T, name)
        assert inspect.signature(mine.__init__) == inspect.signature(theirs.__init__) or [
            (p.name, p.default) for p in inspect.signature(mine.__init__).parameters.values()
        ] == [(p.name, p.default) for p in inspect.signature(theirs.__init__).parameters.values()], name


def test_isinstance_of_torch_base_and_plateau():
    opt = make_optimizer()
    assert isinstance(S.StepLR(opt, 3), T.LRScheduler)
    assert isinstance(S.ReduceLROnPlateau(opt), T.ReduceLROnPlateau)
    assert issubclass(S._LRScheduler, S.LRScheduler)


@pytest.mark.parametrize("cls", [S.LRScheduler, S.ReduceLROnPlateau])
def test_no_torch_code_runs_in_subclassed_bases(cls):
    """We subclass torch's classes for isinstance only: every method resolves to torchstep code."""
    torch_names = set()
    for base in cls.__mro__:
        if base.__module__.startswith("torch.optim"):
            torch_names |= {n for n, v in vars(base).items() if callable(v) or isinstance(v, property)}
    for name in torch_names - {"__init_subclass__", "__subclasshook__", "__class__"}:
        owner = next(b for b in cls.__mro__ if name in vars(b))
        assert owner.__module__.startswith("torchstep"), f"{cls.__name__}.{name} comes from {owner.__module__}"


def _sgd():
    return make_optimizer("sgd")


ERRORS = [
    ("not an optimizer", lambda L: L.StepLR(object(), 3), TypeError, "is not an Optimizer"),
    ("lambda count", lambda L: L.LambdaLR(_sgd(), [lambda e: 1.0]), ValueError, "Expected 2 lr_lambdas, but got 1"),
    ("multiplicative not callable", lambda L: L.MultiplicativeLR(_sgd(), [0.9, 0.9]), TypeError, "lr_lambda should be a function"),
    ("constant factor", lambda L: L.ConstantLR(_sgd(), factor=1.5), ValueError, "factor"),
    ("linear start", lambda L: L.LinearLR(_sgd(), start_factor=0.0), ValueError, "Starting multiplicative factor"),
    ("linear end", lambda L: L.LinearLR(_sgd(), end_factor=1.5), ValueError, "Ending multiplicative factor"),
    ("plateau factor", lambda L: L.ReduceLROnPlateau(_sgd(), factor=1.0), ValueError, "Factor should be < 1.0"),
    ("plateau mode", lambda L: L.ReduceLROnPlateau(_sgd(), mode="low"), ValueError, "mode low is unknown"),
    ("plateau threshold mode", lambda L: L.ReduceLROnPlateau(_sgd(), threshold_mode="pct"), ValueError, "threshold mode pct is unknown"),
    ("plateau min_lr count", lambda L: L.ReduceLROnPlateau(_sgd(), min_lr=[0.1]), ValueError, "expected 2 min_lrs, got 1"),
    ("cyclic mode", lambda L: L.CyclicLR(_sgd(), 0.01, 0.1, mode="sawtooth"), ValueError, "mode is invalid and scale_fn is None"),
    ("cyclic max_lr count", lambda L: L.CyclicLR(_sgd(), 0.01, [0.1]), ValueError, "max_lr must have the same length"),
    ("cyclic momentum", lambda L: L.CyclicLR(torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1))]), 0.01, 0.1),
     ValueError, "optimizer must support momentum or beta1"),
    ("onecycle steps missing", lambda L: L.OneCycleLR(_sgd(), 0.1), ValueError, "You must define either total_steps OR"),
    ("onecycle total_steps", lambda L: L.OneCycleLR(_sgd(), 0.1, total_steps=0), ValueError, "Expected positive integer total_steps, but got 0"),
    ("onecycle epochs", lambda L: L.OneCycleLR(_sgd(), 0.1, epochs=-1, steps_per_epoch=3), ValueError, "Expected positive integer epochs, but got -1"),
    ("onecycle steps_per_epoch", lambda L: L.OneCycleLR(_sgd(), 0.1, epochs=2, steps_per_epoch=1.5), ValueError, "steps_per_epoch, but got 1.5"),
    ("onecycle pct_start", lambda L: L.OneCycleLR(_sgd(), 0.1, total_steps=10, pct_start=1.2), ValueError, "pct_start, but got 1.2"),
    ("onecycle anneal", lambda L: L.OneCycleLR(_sgd(), 0.1, total_steps=10, anneal_strategy="exp"), ValueError, "instead got exp"),
    ("restarts T_0", lambda L: L.CosineAnnealingWarmRestarts(_sgd(), T_0=0), ValueError, "Expected positive integer T_0, but got 0"),
    ("restarts T_mult", lambda L: L.CosineAnnealingWarmRestarts(_sgd(), T_0=2, T_mult=1.5), ValueError, "T_mult >= 1, but got 1.5"),
    ("restarts eta_min", lambda L: L.CosineAnnealingWarmRestarts(_sgd(), T_0=2, eta_min="0"), ValueError, "eta_min"),
    ("sequential empty", lambda L: L.SequentialLR(_sgd(), [], []), ValueError, "expects at least one scheduler"),
    ("chained empty", lambda L: L.ChainedScheduler([]), ValueError, "expects at least one scheduler"),
]


def _plateau_in(L, combinator):
    opt = _sgd()
    scheds = [L.StepLR(opt, 3), L.ReduceLROnPlateau(opt)]
    return L.SequentialLR(opt, scheds, [2]) if combinator == "seq" else L.ChainedScheduler(scheds)


def _other_optimizer(L, combinator):
    opt, other = _sgd(), _sgd()
    scheds = [L.StepLR(opt, 3), L.ExponentialLR(other, 0.9)]
    return L.SequentialLR(opt, scheds, [2]) if combinator == "seq" else L.ChainedScheduler(scheds, opt)


ERRORS += [
    ("sequential plateau", lambda L: _plateau_in(L, "seq"), ValueError, "does not support `ReduceLROnPlateau`"),
    ("chained plateau", lambda L: _plateau_in(L, "chain"), ValueError, "does not support `ReduceLROnPlateau`"),
    ("sequential optimizers", lambda L: _other_optimizer(L, "seq"), ValueError, "to belong to the same optimizer"),
    ("chained optimizers", lambda L: _other_optimizer(L, "chain"), ValueError, "to belong to the same optimizer"),
    ("sequential not a scheduler", lambda L: L.SequentialLR(_sgd(), [object()], []), TypeError, "should have `optimizer`"),
    ("sequential milestones", lambda L: (lambda o: L.SequentialLR(o, [L.StepLR(o, 3)], [4]))(_sgd()), ValueError,
     "number of milestones to be equal to 1"),
]


@pytest.mark.parametrize("case", ERRORS, ids=[e[0] for e in ERRORS])
def test_invalid_arguments_raise_like_torch(case):
    _, build, exc, message = case
    with pytest.raises(exc) as torch_error:
        build(T)
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")) as mine:
        build(S)
    assert type(mine.value) is type(torch_error.value)


def test_messages_name_argument_value_and_range():
    with pytest.raises(ValueError, match=r"factor=1.5; allowed: 0 <= factor <= 1"):
        S.ConstantLR(_sgd(), factor=1.5)
    with pytest.raises(ValueError, match=r"start_factor=0.0; allowed: 0 < start_factor <= 1"):
        S.LinearLR(_sgd(), start_factor=0.0)
    with pytest.raises(ValueError, match=r"threshold_mode='pct'; allowed: 'rel', 'abs'"):
        S.ReduceLROnPlateau(_sgd(), threshold_mode="pct")
    with pytest.raises(ValueError, match=r"mode='sawtooth'; allowed"):
        S.CyclicLR(_sgd(), 0.01, 0.1, mode="sawtooth")
    with pytest.raises(ValueError, match=r"epochs=None"):
        S.OneCycleLR(_sgd(), 0.1)
    with pytest.raises(ValueError, match="non-negative epoch, but got -1"):
        S.CosineAnnealingWarmRestarts(_sgd(), 3).step(-1)


def test_step_before_optimizer_step_warns_once_like_torch():
    for L in (S, T):
        opt = _sgd()
        sched = L.StepLR(opt, 3)
        with pytest.warns(UserWarning, match=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`"):
            sched.step()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sched.step()


def test_no_warning_in_the_right_order():
    opt = _sgd()
    sched = S.OneCycleLR(opt, 0.1, total_steps=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(5):
            opt.step()
            sched.step()


def test_get_lr_outside_step_and_epoch_argument_warn():
    opt = _sgd()
    sched = S.ExponentialLR(opt, 0.9)
    with pytest.warns(UserWarning, match="please use `get_last_lr\\(\\)`"):
        sched.get_lr()
    opt.step()
    with pytest.warns(UserWarning, match="The epoch parameter in `scheduler.step\\(\\)` was not necessary"):
        sched.step(3)
    assert sched.get_last_lr() == pytest.approx([0.1 * 0.9**3, 0.03 * 0.9**3])


@pytest.mark.filterwarnings("ignore:Detected call")
def test_torch_combinators_drive_torchstep_schedulers_and_back():
    def build(outer, inner):
        def make(_, o):
            return outer.SequentialLR(o, [inner.LinearLR(o, 0.1, total_iters=10),
                                          inner.CosineAnnealingLR(o, 90, 1e-3)], milestones=[10])
        return make

    reference, _, _ = drive(T, build(T, T), "sgd", steps=120)
    assert_same_trace(drive(T, build(T, S), "sgd", steps=120)[0], reference)
    assert_same_trace(drive(S, build(S, T), "sgd", steps=120)[0], reference)


class LooksLikeAnOptimizer:
    """Not a torch.optim.Optimizer: just param_groups and step()."""

    def __init__(self):
        self.param_groups = [{"lr": 0.1, "momentum": 0.9}, {"lr": 0.03, "momentum": 0.9}]
        self.defaults = {"lr": 0.1, "momentum": 0.9}

    def step(self):
        pass


@pytest.mark.parametrize("name", ["step", "cosine_eta_min", "cyclic_triangular2", "onecycle_three_phase", "warm_restarts_mult"])
def test_works_on_optimizer_shaped_objects(name):
    build, _ = SINGLE[name]
    reference, _, _ = drive(T, build, "sgd", steps=80)
    opt = LooksLikeAnOptimizer()
    sched = build(S, opt)
    trace = [snapshot(opt, sched)]
    for _ in range(80):
        opt.step()
        sched.step()
        trace.append(snapshot(opt, sched))
    assert_same_trace(trace, reference)


@pytest.mark.parametrize("name", ["lambda", "step", "multistep", "constant", "linear", "exponential", "polynomial",
                                  "cosine_eta_min", "cyclic_exp_range", "onecycle_linear", "warm_restarts_mult3",
                                  "multiplicative"])
def test_schedule_method_is_the_closed_form_of_the_stepped_values(name):
    build, kind = SINGLE[name]
    trace, sched, _ = drive(S, build, kind, steps=120)
    for group in (0, 1):
        closed = sched.schedule(group)
        for t in (0, 1, 7, 30, 61, 119):
            assert closed(t) == pytest.approx(trace[t][2 * group], rel=1e-11, abs=1e-15), (name, group, t)


def _torchstep_optimizer(kind):
    import torchstep.optim as optim

    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in (0.1, 0.03)]
    return optim.Adam(groups, lr=0.1, betas=(0.9, 0.99)) if kind == "adam" else optim.SGD(groups, lr=0.1, momentum=0.9)


@pytest.mark.parametrize("name", ["step", "cosine_eta_min", "cyclic_adam_betas", "onecycle_three_phase_linear_adam",
                                  "warm_restarts_mult", "multiplicative"])
@pytest.mark.parametrize("lib", ["torchstep", "torch"])
def test_schedulers_on_torchstep_optimizers(name, lib):
    """torchstep's and torch's schedulers both drive torchstep optimizers exactly as torch.optim ones."""
    build, kind = SINGLE[name]
    reference, _, _ = drive(T, build, kind, steps=80)
    opt = _torchstep_optimizer(kind)
    sched = build(S if lib == "torchstep" else T, opt)
    trace = [snapshot(opt, sched)]
    for _ in range(80):
        opt.step()
        sched.step()
        trace.append(snapshot(opt, sched))
    assert_same_trace(trace, reference)


def test_step_order_warning_on_torchstep_optimizers():
    opt = _torchstep_optimizer("sgd")
    sched = S.LinearLR(opt)
    with pytest.warns(UserWarning, match="before `optimizer.step\\(\\)`"):
        sched.step()
    opt2 = _torchstep_optimizer("sgd")
    sched2 = S.LinearLR(opt2)
    opt2.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched2.step()


def test_chained_cosine_with_eta_min_follows_torch_not_the_product_of_closed_forms():
    """Documented difference: chained, CosineAnnealingLR's update is affine around eta_min, so the
    result is not base_lr * step_factor * cosine_factor; torch's value is the one we give."""
    opt = _sgd()
    cosine, step = S.CosineAnnealingLR(opt, 40, eta_min=0.01), S.StepLR(opt, 10, 0.5)
    for _ in range(15):
        opt.step()
        cosine.step()
        step.step()
    closed_product = 0.01 + (0.1 - 0.01) * (1 + torch.cos(torch.tensor(torch.pi * 15 / 40)).item()) / 2
    closed_product *= 0.5
    assert opt.param_groups[0]["lr"] != pytest.approx(closed_product, rel=1e-3)
    reference, _, _ = drive(T, lambda L, o: _Pair(L.CosineAnnealingLR(o, 40, eta_min=0.01), L.StepLR(o, 10, 0.5)),
                            "sgd", steps=15)
    assert opt.param_groups[0]["lr"] == pytest.approx(reference[-1][0], rel=1e-12)


class _Pair:
    def __init__(self, *parts):
        self.parts = parts

    def step(self):
        for p in self.parts:
            p.step()

    def get_last_lr(self):
        return self.parts[-1].get_last_lr()


def test_user_subclass_written_for_torch_works_unchanged():
    def define(L):
        class HalfEvery(L.LRScheduler):
            def __init__(self, optimizer, every, last_epoch=-1):
                self.every = every
                super().__init__(optimizer, last_epoch)

            def get_lr(self):
                return [base * 0.5 ** (self.last_epoch // self.every) for base in self.base_lrs]

        return HalfEvery

    reference, torch_sched, _ = drive(T, lambda L, o: define(L)(o, 4), "sgd", steps=30)
    mine, my_sched, _ = drive(S, lambda L, o: define(L)(o, 4), "sgd", steps=30)
    assert_same_trace(mine, reference)
    assert my_sched.state_dict() == torch_sched.state_dict()
