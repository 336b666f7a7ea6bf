"""Schedules in use: string specs, previews and plots without an optimizer, any hyperparameter on a
schedule, and modern schedules as LRSchedulers."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch.optim import lr_scheduler as T

import torchstep.optim.lr_scheduler as S
from torchstep.schedules import (Constant, Cosine, Floor, Join, Linear, ScheduleHyperparam, plot, preview,
                                 preview_scheduler, schedule_from_spec, warmup_cosine, wsd)

approx = pytest.approx


def test_spec_builds_the_modern_recipes():
    s = schedule_from_spec("warmup_cosine(peak=1e-3, warmup=100, total=1000, floor=1e-5)")
    assert s == warmup_cosine(peak=1e-3, warmup=100, total=1000, floor=1e-5)
    assert schedule_from_spec(" wsd(1.0, 10, 100, cooldown='cosine') ") == wsd(1.0, 10, 100, cooldown="cosine")
    nested = schedule_from_spec("Floor(Join([Linear(0.0, 1.0, 10), Cosine(1.0, 0.0, 90)], (10,)), minimum=0.05)")
    assert nested == Floor(Join((Linear(0.0, 1.0, 10), Cosine(1.0, 0.0, 90)), (10,)), 0.05)


@pytest.mark.parametrize("spec,cls,kwargs", [
    ("StepLR(step_size=30, gamma=0.1)", T.StepLR, {"step_size": 30, "gamma": 0.1}),
    ("MultiStepLR(milestones=[10, 50], gamma=0.5)", T.MultiStepLR, {"milestones": [10, 50], "gamma": 0.5}),
    ("CosineAnnealingLR(T_max=80, eta_min=0.001)", T.CosineAnnealingLR, {"T_max": 80, "eta_min": 0.001}),
    ("LinearLR(start_factor=0.1, total_iters=20)", T.LinearLR, {"start_factor": 0.1, "total_iters": 20}),
    ("PolynomialLR(total_iters=90, power=2.0)", T.PolynomialLR, {"total_iters": 90, "power": 2.0}),
    ("OneCycleLR(max_lr=0.5, total_steps=100, three_phase=True)", T.OneCycleLR,
     {"max_lr": 0.5, "total_steps": 100, "three_phase": True}),
    ("CosineAnnealingWarmRestarts(T_0=10, T_mult=2)", T.CosineAnnealingWarmRestarts, {"T_0": 10, "T_mult": 2}),
])
def test_spec_of_a_torch_class_gives_its_values(spec, cls, kwargs):
    schedule = schedule_from_spec(spec, lr=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    sched = cls(opt, **kwargs)
    for t in range(100):
        assert schedule(t) == approx(opt.param_groups[0]["lr"], rel=1e-10, abs=1e-15), t
        opt.step()
        sched.step()
    assert schedule_from_spec(spec[:-1] + ", lr=0.1)") == schedule


@pytest.mark.parametrize("spec,message", [
    ("__import__('os').system('true')", "is not a schedule name"),
    ("warmup_cosine(peak=__import__('os'), warmup=1, total=2)", "unknown schedule '__import__'"),
    ("warmup_cosine(peak=x, warmup=1, total=2)", "'x' is not a literal"),
    ("warmup_cosine(peak=(1).real, warmup=1, total=2)", "is not a literal"),
    ("warmup_cosine(**{'peak': 1})", "not allowed"),
    ("open('x')", "unknown schedule 'open'"),
    ("StepLR(step_size=3)", "pass lr="),
    ("warmup_cosine(peak=1e-3,", "not a call expression"),
    ("1e-3", "expected one call"),
])
def test_spec_parsing_is_safe_and_explains_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        schedule_from_spec(spec)


def test_preview_as_list_and_tensor():
    s = warmup_cosine(peak=1.0, warmup=2, total=6)
    values = preview(s, 8)
    assert values == approx([0.0, 0.5, 1.0, 0.8535533905932737, 0.5, 0.14644660940672627, 0.0, 0.0])
    tensor = preview(s, 8, tensor=True)
    assert tensor.dtype == torch.float64 and tensor.tolist() == values
    with pytest.raises(ValueError, match="steps must be an int >= 0"):
        preview(s, -1)


def test_preview_scheduler_runs_the_class_without_an_optimizer():
    values = preview_scheduler(S.StepLR, 7, lr=0.1, step_size=3, gamma=0.5)
    assert values == approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025])
    chained = preview_scheduler(S.CyclicLR, 5, base_lr=0.0, max_lr=1.0, step_size_up=2)
    assert chained == approx([0.0, 0.5, 1.0, 0.5, 0.0])


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "schedules.png"
    out = plot({"cosine": warmup_cosine(1.0, 10, 100), "wsd": wsd(1.0, 10, 100), "values": [0.5] * 100}, 100, path,
               title="t", log_scale=True)
    assert out == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot(Cosine(1.0, 0.0, 10), 10, tmp_path / "one.png")
    plot([Constant(1.0), Linear(0.0, 1.0, 5)], 10, tmp_path / "two.png")
    assert (tmp_path / "two.png").stat().st_size > 1000


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install torchstep\[plot\]"):
        plot(Constant(1.0), 10, tmp_path / "x.png")


def test_schedule_hyperparam_drives_momentum_betas_and_weight_decay():
    p = torch.nn.Parameter(torch.ones(3))
    sgd = torch.optim.SGD([{"params": [p]}, {"params": [torch.nn.Parameter(torch.ones(1))], "momentum": 0.5}],
                          lr=0.1, momentum=0.9, weight_decay=0.0)
    momentum = ScheduleHyperparam(sgd, "momentum", [Cosine(0.95, 0.85, 10), Constant(0.5)])
    decay = ScheduleHyperparam(sgd, "weight_decay", Linear(0.0, 0.1, 10))
    assert [g["momentum"] for g in sgd.param_groups] == [0.95, 0.5]
    for _ in range(5):
        sgd.step()
        momentum.step()
        decay.step()
    assert momentum.get_last() == approx([0.9, 0.5])
    assert sgd.param_groups[1]["weight_decay"] == approx(0.05)

    adam = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))], betas=(0.9, 0.99))
    beta1 = ScheduleHyperparam(adam, "betas", Linear(0.8, 0.9, 4), index=0)
    beta2 = ScheduleHyperparam(adam, "betas", Constant(0.95), index=1)
    beta1.step()
    assert adam.param_groups[0]["betas"] == approx((0.825, 0.95))
    state = beta1.state_dict()
    again = ScheduleHyperparam(adam, "betas", Linear(0.8, 0.9, 4), index=0)
    again.load_state_dict(state)
    assert again.last_step == 1 and adam.param_groups[0]["betas"][0] == approx(0.825)
    assert beta2.get_last() == [0.95]


def test_schedule_hyperparam_fills_tensors_and_checks_its_arguments():
    beta = torch.tensor(0.9)
    adam = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))], betas=(beta, torch.tensor(0.99)))
    ScheduleHyperparam(adam, "betas", Constant(0.5), index=0)
    assert adam.param_groups[0]["betas"][0] is beta and float(beta) == 0.5
    with pytest.raises(KeyError, match="has no 'momentum'"):
        ScheduleHyperparam(adam, "momentum", Constant(0.5))
    with pytest.raises(ValueError, match="pass index in range"):
        ScheduleHyperparam(adam, "betas", Constant(0.5))
    with pytest.raises(ValueError, match="pass index=None"):
        ScheduleHyperparam(adam, "lr", Constant(0.5), index=0)
    with pytest.raises(ValueError, match="schedule must have the same length"):
        ScheduleHyperparam(adam, "lr", [Constant(0.5), Constant(0.1)])


def test_scheduled_lr_and_lambda_lr_take_schedules():
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.ones(1))], "lr": 0.2},
                           {"params": [torch.nn.Parameter(torch.ones(1))], "lr": 0.02}], lr=0.2)
    absolute = S.ScheduledLR(opt, warmup_cosine(peak=0.1, warmup=5, total=50, floor=0.001))
    assert isinstance(absolute, T.LRScheduler)
    for _ in range(5):
        opt.step()
        absolute.step()
    assert absolute.get_last_lr() == approx([0.1, 0.1])
    assert absolute.schedule(1)(5) == 0.1

    opt2 = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.ones(1))], "lr": 0.2},
                            {"params": [torch.nn.Parameter(torch.ones(1))], "lr": 0.02}], lr=0.2)
    factor = warmup_cosine(peak=1.0, warmup=5, total=50)
    for L in (S, T):
        relative = L.LambdaLR(opt2, factor)
        for _ in range(5):
            opt2.step()
            relative.step()
        assert relative.get_last_lr() == approx([0.2, 0.02])
        state = copy.deepcopy(relative.state_dict())
        assert state["lr_lambdas"][0]["pieces"] == factor.pieces
        relative.load_state_dict(state)
    with pytest.raises(TypeError, match="should be a Schedule"):
        S.ScheduledLR(opt, 0.1)
