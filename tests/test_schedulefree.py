"""Schedule-Free SGD and AdamW against the authors' ``schedulefree`` package (1.4.1): parity over
options (two groups, float32/float64, 25 steps, fused and reference backends), the literal x/y/z
reference classes, train/eval switching, state_dict interchange both ways, errors."""

import json
import subprocess
import sys

import pytest
import schedulefree
import torch

import torchstep.optim as ts_optim
from modern_helpers import (assert_close, assert_params_close, assert_state_close, continue_after_load,
                            run_side_by_side, two_groups)
from torchstep.backends import use

DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
BACKENDS = pytest.mark.parametrize("backend", ["fused", "reference"])
GROUP_KEYS = ("k", "train_mode", "weight_sum", "lr_max", "scheduled_lr")

SGD_CASES = [
    dict(),
    dict(lr=0.1, momentum=0.5, weight_decay=0.01),
    dict(lr=0.05, warmup_steps=10, r=1.0, weight_lr_power=1.0),
    dict(lr=0.2, momentum=0.95, warmup_steps=30, r=0.5, weight_lr_power=0.0, weight_decay=0.1),
]
ADAMW_CASES = [
    dict(),
    dict(lr=0.01, betas=(0.5, 0.99), weight_decay=0.05),
    dict(lr=0.02, warmup_steps=10, r=2.0, weight_lr_power=1.0, eps=1e-4),
    dict(lr=0.005, betas=(0.95, 0.9), warmup_steps=40, weight_decay=0.1, weight_lr_power=3.0),
]
CASES = [("SGDScheduleFree", kw, dict(lr=0.03, weight_decay=0.02, momentum=0.8)) for kw in SGD_CASES] + [
    ("AdamWScheduleFree", kw, dict(lr=0.004, weight_decay=0.02, eps=1e-6, betas=(0.8, 0.95))) for kw in ADAMW_CASES
]


def pair(name, kwargs, group2):
    """(the package's optimizer, ours), each on two groups, started in train mode."""
    return (lambda ps: getattr(schedulefree, name)(two_groups(ps, group2), foreach=False, **kwargs),
            lambda ps: getattr(ts_optim, name)(two_groups(ps, group2), **kwargs))


def train_mode(opt):
    opt.train()


def assert_same(a, b, a_p, b_p, dtype):
    assert_params_close(a_p, b_p, dtype)
    assert_state_close(a, b, a_p, b_p, dtype)
    for ga, gb in zip(a.param_groups, b.param_groups):
        for key in GROUP_KEYS:
            assert_close(gb[key], ga[key], dtype, key)


@BACKENDS
@DTYPES
@pytest.mark.parametrize("name,kwargs,group2", CASES, ids=[f"{c[0][:3]}{i}" for i, c in enumerate(CASES)])
def test_parity_with_schedulefree(name, kwargs, group2, dtype, backend):
    with use(backend):
        a, b, a_p, b_p = run_side_by_side(*pair(name, kwargs, group2), dtype, prepare=train_mode)
    assert_same(a, b, a_p, b_p, dtype)  # train mode: the parameters hold y
    assert all(set(b.state[p]) == ({"z"} if name.startswith("SGD") else {"z", "exp_avg_sq"}) for p in b_p)
    a.eval()
    b.eval()
    assert_params_close(a_p, b_p, dtype)  # eval mode: the average x


@pytest.mark.parametrize("name,kwargs", [
    ("SGDScheduleFree", dict(lr=0.1, weight_decay=0.05, warmup_steps=5, r=1.0)),
    ("AdamWScheduleFree", dict(lr=0.01, weight_decay=0.05, warmup_steps=5, betas=(0.7, 0.99))),
])
def test_matches_the_literal_xyz_reference(name, kwargs):
    """The package's slow reference keeps x, y and z explicitly: our in-place y update and the
    eval-time conversion give its x."""
    dtype = torch.float64
    reference = getattr(schedulefree, name + "Reference")
    a_p = [torch.randn(s, dtype=dtype, generator=torch.Generator().manual_seed(i)).requires_grad_() for i, s in enumerate([(4, 3), (5,)])]
    b_p = [p.detach().clone().requires_grad_() for p in a_p]
    a, b = reference(a_p, **kwargs), getattr(ts_optim, name)(b_p, **kwargs)
    a.train()
    b.train()
    for step in range(25):
        for x, y in zip(a_p, b_p):
            g = torch.randn(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(100 + step))
            x.grad, y.grad = g.clone(), g.clone()
        a.step()
        b.step()
    assert_params_close(a_p, b_p, dtype)
    a.eval()
    b.eval()
    for x, y in zip(a_p, b_p):
        torch.testing.assert_close(y.detach(), a.state[x]["x"], rtol=1e-9, atol=1e-11)


def test_step_in_eval_mode_raises_and_changes_nothing():
    p = torch.ones(3, requires_grad=True)
    p.grad = torch.ones(3)
    opt = ts_optim.AdamWScheduleFree([p])
    with pytest.raises(RuntimeError, match=r"step\(\) called in eval mode .*call optimizer.train\(\)"):
        opt.step()  # a new optimizer starts in eval mode, as the package's does
    opt.train()
    opt.step()
    opt.eval()
    before = p.detach().clone()
    with pytest.raises(RuntimeError, match=r"param groups \[0\] have train_mode=False"):
        opt.step()
    assert torch.equal(p.detach(), before) and opt.param_groups[0]["k"] == 1


def test_a_group_added_in_eval_mode_is_refused_where_the_package_steps_it():
    """Deliberate difference: the package checks only the first group's mode."""
    results = []
    for lib in (schedulefree, ts_optim):
        p, q = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
        opt = lib.SGDScheduleFree([p], lr=0.1)
        opt.train()
        opt.add_param_group({"params": [q]})
        p.grad, q.grad = torch.ones(2), torch.ones(2)
        try:
            opt.step()
            results.append("stepped")
        except RuntimeError as exc:
            results.append(str(exc))
    assert results[0] == "stepped" and "param groups [1] have train_mode=False" in results[1]


@pytest.mark.parametrize("name", ["SGDScheduleFree", "AdamWScheduleFree"])
def test_train_eval_round_trip_and_idempotence(name):
    p = torch.randn(6, requires_grad=True)
    opt = getattr(ts_optim, name)([p], lr=0.1)
    opt.train()
    for _ in range(3):
        p.grad = torch.randn(6)
        opt.step()
    y = p.detach().clone()
    opt.eval()
    x = p.detach().clone()
    opt.eval()  # already there: nothing moves
    assert torch.equal(p.detach(), x) and not torch.allclose(x, y)
    opt.train()
    opt.train()
    torch.testing.assert_close(p.detach(), y)


def test_a_tensor_lr_is_read_as_a_float():
    runs = []
    for lr in (0.1, torch.tensor(0.1, dtype=torch.float64)):
        p = torch.ones(3, requires_grad=True)
        opt = ts_optim.SGDScheduleFree([p], lr=lr, warmup_steps=2)
        opt.train()
        for _ in range(3):
            p.grad = torch.ones(3)
            opt.step()
        runs.append((p.detach().clone(), opt.param_groups[0]["lr_max"]))
    assert torch.equal(runs[0][0], runs[1][0]) and type(runs[1][1]) is float and runs[0][1] == runs[1][1]


@pytest.mark.parametrize("name", ["SGDScheduleFree", "AdamWScheduleFree"])
def test_gradients_are_left_untouched(name):
    """Deliberate difference: the package adds weight decay into (and AdamW divides) p.grad."""
    p = torch.randn(4, requires_grad=True)
    g = torch.randn(4)
    p.grad = g.clone()
    opt = getattr(ts_optim, name)([p], weight_decay=0.1)
    opt.train()
    opt.step()
    assert torch.equal(p.grad, g)


@DTYPES
@pytest.mark.parametrize("first,second", [("schedulefree", "torchstep"), ("torchstep", "schedulefree"), ("torchstep", "torchstep")])
@pytest.mark.parametrize("name", ["SGDScheduleFree", "AdamWScheduleFree"])
def test_state_dict_interchange(name, first, second, dtype):
    libs = {"schedulefree": lambda ps, **kw: getattr(schedulefree, name)(ps, foreach=False, **kw),
            "torchstep": lambda ps, **kw: getattr(ts_optim, name)(ps, **kw)}
    group2 = dict(lr=0.02, weight_decay=0.01)
    one, two, one_p, two_p = continue_after_load(lambda ps: libs[first](two_groups(ps, group2), warmup_steps=4),
                                                 lambda ps: libs[second](two_groups(ps, group2)), dtype, prepare=train_mode)
    assert_same(one, two, one_p, two_p, dtype)


def test_fused_and_reference_agree_with_grad_scaler_skipping_an_inf_step():
    results = []
    for backend in ("fused", "reference"):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        opt = ts_optim.AdamWScheduleFree(model.parameters(), lr=0.01, weight_decay=0.01)
        opt.train()
        scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
        with use(backend):
            for step in range(6):
                opt.zero_grad()
                loss = model(torch.randn(5, 4, generator=torch.Generator().manual_seed(step))).pow(2).mean()
                scaler.scale(loss * (float("inf") if step == 2 else 1.0)).backward()
                scaler.step(opt)
                scaler.update()
        results.append(([p.detach().clone() for p in model.parameters()], opt.param_groups[0]["k"]))
    assert results[0][1] == results[1][1] == 5  # the inf step was skipped
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name,kwargs,pattern", [
    ("SGDScheduleFree", dict(lr=-1.0), r"Invalid learning rate: -1.0 \(lr must be >= 0.0\)"),
    ("SGDScheduleFree", dict(momentum=0.0), r"Invalid momentum value: 0.0 \(momentum must be > 0\)"),
    ("SGDScheduleFree", dict(momentum=1.0), r"Invalid momentum value: 1.0 \(momentum must be in \[0.0, 1.0\)\)"),
    ("SGDScheduleFree", dict(weight_decay=-0.1), r"weight_decay must be >= 0.0"),
    ("SGDScheduleFree", dict(warmup_steps=-1), r"warmup_steps must be an integer >= 0; got -1"),
    ("SGDScheduleFree", dict(warmup_steps=2.5), r"warmup_steps must be an integer >= 0; got 2.5"),
    ("SGDScheduleFree", dict(r=-1.0), r"r must be >= 0.0"),
    ("AdamWScheduleFree", dict(weight_lr_power=-2.0), r"weight_lr_power must be >= 0.0"),
    ("AdamWScheduleFree", dict(betas=(0.0, 0.999)), r"beta parameter at index 0: 0.0 \(betas\[0\] must be > 0\)"),
    ("AdamWScheduleFree", dict(betas=(0.9, 1.0)), r"betas\[1\] must be in \[0.0, 1.0\)"),
    ("AdamWScheduleFree", dict(eps=-1e-8), r"Invalid epsilon value: -1e-08 \(eps must be >= 0.0\)"),
])
def test_invalid_arguments(name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        getattr(ts_optim, name)([torch.zeros(2, requires_grad=True)], **kwargs)


def test_sparse_gradients_are_rejected():
    p = torch.zeros(3, 2, requires_grad=True)
    p.grad = torch.sparse_coo_tensor([[0]], torch.ones(1, 2), (3, 2))
    opt = ts_optim.SGDScheduleFree([p])
    opt.train()
    with pytest.raises(RuntimeError, match="SGDScheduleFree does not support sparse gradients"):
        opt.step()


TRITON_SCRIPT = """
import json, os
os.environ["TRITON_INTERPRET"] = "1"
import torch, torchstep.optim as O
from torchstep.backends import use
out = {}
for name, kw in [("SGDScheduleFree", dict(lr=0.1, weight_decay=0.01, warmup_steps=3)),
                 ("AdamWScheduleFree", dict(lr=0.01, weight_decay=0.01))]:
    res = []
    for backend in ("triton", "reference"):
        gen = torch.Generator().manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(), (5,), (3, 700)]]
        opt = getattr(O, name)(ps, **kw)
        opt.train()
        with use(backend):
            for _ in range(4):
                for p in ps:
                    p.grad = torch.randn(p.shape, generator=gen)
                opt.step()
        res.append(ps + [opt.state[p]["z"] for p in ps])
    out[name] = max((x - y).abs().max().item() for x, y in zip(*res))
print(json.dumps(out))
"""


def test_triton_kernels_under_the_interpreter_match_the_reference():
    """The CUDA path (Triton kernels from the same traced update), run on CPU by Triton's interpreter."""
    done = subprocess.run([sys.executable, "-c", TRITON_SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    diffs = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(diffs) == {"SGDScheduleFree", "AdamWScheduleFree"} and max(diffs.values()) < 1e-5, diffs
