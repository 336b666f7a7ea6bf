"""The repeated fused step (``backends/repeat.py``): a group's step re-run without the full path
while nothing it was made for changed. Random runs that change options, state, parameters and
gradients between steps are compared with torch.optim step by step (float64, tight tolerance), and
the runs must actually have taken the repeated path -- otherwise the comparison proves nothing."""

import random

import pytest
import torch

import torchstep.optim as ts
from torchstep.backends import repeat as repeat_mod

# (class, constructor options, an option and a new value for it mid-run)
CASES = [
    ("SGD", dict(lr=0.1, momentum=0.9), ("momentum", 0.5)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), ("dampening", 0.0)),
    ("Adam", dict(lr=0.01), ("betas", (0.8, 0.99))),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1), ("eps", 1e-6)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1), ("betas", (0.5, 0.9))),
    ("RAdam", dict(lr=0.01), ("betas", (0.8, 0.95))),  # rectification switches on at step 6
    ("Adamax", dict(lr=0.01), ("eps", 1e-3)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01), ("lr_decay", 0.1)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True), ("alpha", 0.9)),
    ("Adadelta", dict(lr=1.0), ("rho", 0.5)),
]
EVENTS = ["step", "step", "step", "lr", "option", "weight_decay", "step_counter", "data", "no_grad",
          "reload", "maximize"]


def _params(seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64) for s in [(5,), (3, 4), (7,)]]


def _run(module, name, kwargs, change, events, seed):
    params = [p.clone().requires_grad_() for p in _params(seed)]
    opt = getattr(module, name)(params, **kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    out = []
    for event in events:
        group = opt.param_groups[0]
        if event == "lr":
            group["lr"] = group["lr"] * 0.7
        elif event == "option":
            group[change[0]] = change[1]
        elif event == "weight_decay" and "weight_decay" in group:
            group["weight_decay"] = 0.05
        elif event == "maximize" and "maximize" in group:
            group["maximize"] = not group["maximize"]
        elif event == "step_counter":
            for p in params:
                if "step" in opt.state.get(p, {}):
                    opt.state[p]["step"].fill_(10.0)
        elif event == "data":
            params[1].data = params[1].data.clone()
        elif event == "reload":
            opt.load_state_dict(opt.state_dict())
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
        for p, g in zip(params, grads):
            p.grad = g
        if event == "no_grad":
            params[0].grad = None
        opt.step()
        out.append([p.detach().clone() for p in params])
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("name,kwargs,change", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_random_changes_between_steps_match_torch(name, kwargs, change, seed, monkeypatch):
    ran = []
    original = repeat_mod.Repeat.run

    def counting(self, group):
        done = original(self, group)
        ran.append(done)
        return done

    monkeypatch.setattr(repeat_mod.Repeat, "run", counting)
    rng = random.Random(seed)
    events = ["step"] * 3 + [rng.choice(EVENTS) for _ in range(14)]
    theirs = _run(torch.optim, name, kwargs, change, events, seed)
    ours = _run(ts, name, kwargs, change, events, seed)
    for k, (a, b) in enumerate(zip(theirs, ours)):
        for x, y in zip(a, b):
            torch.testing.assert_close(y, x, rtol=1e-10, atol=1e-12, msg=lambda m: f"step {k} ({events[k]}): {m}")
    assert any(ran), "the repeated path never ran"


def test_repeat_is_kept_only_for_the_plain_case():
    p = torch.zeros(4, requires_grad=True)
    opt = ts.Adam([p], lr=torch.tensor(0.01))  # a tensor lr: read through the full path every step
    for _ in range(3):
        p.grad = torch.ones(4)
        opt.step()
    caches = [entry[1] for entry in opt._fused_plans.values()]
    assert caches and all("repeat" not in c for c in caches)
    opt.param_groups[0]["lr"] = 0.01
    for _ in range(2):
        p.grad = torch.ones(4)
        opt.step()
    assert any("repeat" in c for c in [entry[1] for entry in opt._fused_plans.values()])


def test_profiler_range_is_recorded_while_profiling():
    p = torch.zeros(4, requires_grad=True)
    opt = ts.AdamW([p])
    p.grad = torch.ones(4)
    opt.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    assert "Optimizer.step#AdamW.step" in {e.name for e in prof.events()}
