"""LAMB and LARS: parity with pytorch-optimizer (4.1.0) where it has the same algorithm, with a
literal transcription of the LAMB paper's Algorithm 2 for its bias correction, with torch's
AdamW / SGD for groups excluded from the trust ratio; state_dict round trips; errors."""

import itertools
import math

import pytest
import pytorch_optimizer
import torch

import torchstep.optim as ts_optim
from modern_helpers import assert_params_close, make_params, assert_state_close, continue_after_load, run_side_by_side, two_groups

DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
LARS_SHAPES = [(4, 5), (3, 2), (2, 3, 4), (3,), (6,), ()]  # matrices first: pytorch-optimizer skips the rest

LAMB_CASES = [
    dict(lr=lr, weight_decay=wd, decoupled_weight_decay=dec, max_weight_norm=clip, maximize=mx)
    for lr, wd, dec, clip, mx in [
        (1e-2, 0.0, False, 10.0, False), (1e-2, 0.1, False, 10.0, False), (5e-3, 0.1, True, 10.0, False),
        (2e-2, 0.01, False, 1.5, True), (1e-2, 0.05, True, None, False),
    ]
] + [dict(betas=(0.5, 0.9), eps=1e-3, weight_decay=0.02)]


def their_lamb(ps, group2, max_weight_norm=10.0, decoupled_weight_decay=False, **kw):
    """pytorch-optimizer's Lamb set to our bias_correction=False semantics."""
    g2 = {"adam": not group2.get("trust_ratio", True), **{k: v for k, v in group2.items() if k != "trust_ratio"}}
    opt = pytorch_optimizer.Lamb(two_groups(ps, g2), weight_decouple=decoupled_weight_decay, adam_debias=True,
                                 foreach=False, **kw)
    opt.clamp = math.inf if max_weight_norm is None else max_weight_norm
    return opt


@DTYPES
@pytest.mark.parametrize("group2", [dict(trust_ratio=False, weight_decay=0.0), dict(lr=3e-3, eps=1e-8)], ids=["excluded", "lr"])
@pytest.mark.parametrize("kwargs", LAMB_CASES, ids=[f"c{i}" for i in range(len(LAMB_CASES))])
def test_lamb_parity_with_pytorch_optimizer(kwargs, group2, dtype):
    a, b, a_p, b_p = run_side_by_side(lambda ps: their_lamb(ps, group2, **kwargs),
                                      lambda ps: ts_optim.Lamb(two_groups(ps, group2), bias_correction=False, **kwargs),
                                      dtype, zero=0)
    assert_params_close(a_p, b_p, dtype)
    assert_state_close(a, b, a_p, b_p, dtype, keys=("exp_avg", "exp_avg_sq"))
    assert all(set(b.state[p]) == {"step", "exp_avg", "exp_avg_sq"} for p in b_p)


class PaperLamb(torch.optim.Optimizer):
    """Algorithm 2 of You et al. (2020), transcribed line by line as the test's oracle, with
    phi(z) = min(z, clip) and epsilon in the ratio's denominator."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, clip=10.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, clip=clip))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            (b1, b2), eps = group["betas"], group["eps"]
            for x in group["params"]:
                if x.grad is None:
                    continue
                st = self.state[x]
                if not st:
                    st.update(t=0, m=torch.zeros_like(x), v=torch.zeros_like(x))
                st["t"] += 1
                st["m"] = b1 * st["m"] + (1 - b1) * x.grad
                st["v"] = b2 * st["v"] + (1 - b2) * x.grad**2
                r = (st["m"] / (1 - b1 ** st["t"])) / ((st["v"] / (1 - b2 ** st["t"])).sqrt() + eps)
                u = r + group["weight_decay"] * x
                wn, un = min(x.norm().item(), group["clip"]), u.norm().item()
                ratio = wn / (un + eps) if wn > 0 and un > 0 else 1.0
                x -= group["lr"] * ratio * u


@DTYPES
@pytest.mark.parametrize("kwargs", [dict(lr=1e-2), dict(lr=2e-2, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-4)])
def test_lamb_bias_correction_matches_the_paper(kwargs, dtype):
    group2 = dict(lr=5e-3, weight_decay=0.0)
    a, b, a_p, b_p = run_side_by_side(lambda ps: PaperLamb(two_groups(ps, group2), **kwargs),
                                      lambda ps: ts_optim.Lamb(two_groups(ps, group2), **kwargs), dtype, zero=2)
    assert_params_close(a_p, b_p, dtype)


def test_lamb_step_size_of_pytorch_optimizers_default():
    """pytorch-optimizer's default Lamb (adam_debias=False) divides the step, not the ratio's input,
    by 1 - beta1**t: its first step is ours without bias correction at lr / (1 - beta1)."""
    p = make_params(torch.float64)
    q = [x.detach().clone().requires_grad_() for x in p]
    for x, y in zip(p, q):
        x.grad = y.grad = torch.linspace(-1, 1, x.numel(), dtype=torch.float64).reshape(x.shape)
    pytorch_optimizer.Lamb(p, lr=1e-2, weight_decay=0.1, weight_decouple=False, foreach=False).step()
    ts_optim.Lamb(q, lr=1e-2 / (1 - 0.9), weight_decay=0.1, bias_correction=False).step()
    assert_params_close(p, q, torch.float64)


@DTYPES
def test_lamb_group_without_trust_ratio_is_adamw(dtype):
    kwargs = dict(lr=1e-2, eps=1e-6, weight_decay=0.1)
    a, b, a_p, b_p = run_side_by_side(lambda ps: torch.optim.AdamW(ps, foreach=False, **kwargs),
                                      lambda ps: ts_optim.Lamb(ps, decoupled_weight_decay=True, trust_ratio=False, **kwargs),
                                      dtype)
    assert_params_close(a_p, b_p, dtype)
    assert_state_close(a, b, a_p, b_p, dtype)


LARS_CASES = [
    dict(lr=lr, momentum=mu, dampening=damp, weight_decay=wd, nesterov=nest, trust_coefficient=tc, maximize=mx)
    for (lr, mu, damp, nest), (wd, tc, mx) in itertools.product(
        [(0.5, 0.9, 0.0, False), (0.5, 0.9, 0.0, True), (1.0, 0.5, 0.3, False), (0.3, 0.0, 0.0, False)],
        [(0.0, 1e-3, False), (0.01, 0.02, True)],
    )
]


@DTYPES
@pytest.mark.parametrize("kwargs", LARS_CASES, ids=[f"c{i}" for i in range(len(LARS_CASES))])
def test_lars_parity_with_pytorch_optimizer(kwargs, dtype):
    """pytorch-optimizer takes tensors of one dimension or less out of the ratio and the decay;
    here they sit in a group with ``trust_ratio=False, weight_decay=0``."""
    group2 = dict(lr=0.1, momentum=0.8)
    mine = dict(group2, trust_ratio=False, weight_decay=0.0)
    a, b, a_p, b_p = run_side_by_side(lambda ps: pytorch_optimizer.LARS(two_groups(ps, group2, 3), foreach=False, **kwargs),
                                      lambda ps: ts_optim.LARS(two_groups(ps, mine, 3), **kwargs),
                                      dtype, shapes=LARS_SHAPES, zero=1)
    assert_params_close(a_p, b_p, dtype)
    assert_state_close(a, b, a_p, b_p, dtype)


@DTYPES
@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_group_without_trust_ratio_is_torch_sgd(nesterov, dtype):
    kwargs = dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
    a, b, a_p, b_p = run_side_by_side(lambda ps: torch.optim.SGD(ps, foreach=False, **kwargs),
                                      lambda ps: ts_optim.LARS(ps, trust_ratio=False, **kwargs), dtype)
    assert_params_close(a_p, b_p, dtype)
    assert_state_close(a, b, a_p, b_p, dtype)


def test_lars_momentum_buffer_starts_at_zero_unlike_torch_sgd():
    """With dampening the first buffer is (1 - dampening) * u (b_0 = 0, as in the paper);
    torch's SGD starts it at u."""
    p, q = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    p.grad, q.grad = torch.full((3,), 2.0), torch.full((3,), 2.0)
    mine = ts_optim.LARS([p], lr=1.0, momentum=0.9, dampening=0.5, trust_ratio=False)
    theirs = torch.optim.SGD([q], lr=1.0, momentum=0.9, dampening=0.5)
    mine.step()
    theirs.step()
    assert torch.equal(mine.state[p]["momentum_buffer"], torch.full((3,), 1.0))
    assert torch.equal(theirs.state[q]["momentum_buffer"], torch.full((3,), 2.0))


def test_lars_trust_ratio_is_the_papers_local_rate():
    """One step without momentum: the step is lr * eta * |w| / (|g| + wd |w|) * (g + wd w)."""
    w, g = torch.tensor([3.0, 4.0], dtype=torch.float64), torch.tensor([0.0, 10.0], dtype=torch.float64)
    p = w.clone().requires_grad_()
    p.grad = g.clone()
    ts_optim.LARS([p], lr=2.0, momentum=0.0, weight_decay=0.5, trust_coefficient=0.1).step()
    local = 0.1 * 5.0 / (10.0 + 0.5 * 5.0)
    torch.testing.assert_close(p.detach(), w - 2.0 * local * (g + 0.5 * w))


@DTYPES
@pytest.mark.parametrize("name,kwargs", [
    ("Lamb", dict(lr=1e-2, weight_decay=0.1)),
    ("Lamb", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, bias_correction=False)),
    ("LARS", dict(lr=0.5, weight_decay=0.01, nesterov=True)),
    ("LARS", dict(lr=0.5, momentum=0.0)),
])
def test_state_dict_round_trip(name, kwargs, dtype):
    group2 = dict(lr=0.01, trust_ratio=False)
    make = lambda ps: getattr(ts_optim, name)(two_groups(ps, group2), **kwargs)  # noqa: E731
    one, two, one_p, two_p = continue_after_load(make, make, dtype)
    assert_params_close(one_p, two_p, dtype)
    assert_state_close(one, two, one_p, two_p, dtype)
    assert two.state_dict()["param_groups"][1]["trust_ratio"] is False


@pytest.mark.parametrize("name,kwargs,pattern", [
    ("Lamb", dict(lr=-1.0), r"Invalid learning rate: -1.0 \(lr must be >= 0.0\)"),
    ("Lamb", dict(eps=-1.0), r"Invalid epsilon value: -1.0 \(eps must be >= 0.0\)"),
    ("Lamb", dict(betas=(1.0, 0.999)), r"Invalid beta parameter at index 0: 1.0 \(betas\[0\] must be in \[0.0, 1.0\)\)"),
    ("Lamb", dict(weight_decay=-0.1), r"weight_decay must be >= 0.0"),
    ("Lamb", dict(max_weight_norm=0.0), r"Invalid max_weight_norm value: 0.0 \(max_weight_norm must be > 0\)"),
    ("LARS", dict(lr=-0.1), r"Invalid learning rate: -0.1"),
    ("LARS", dict(momentum=1.5), r"Invalid momentum value: 1.5 \(momentum must be in \[0.0, 1.0\]\)"),
    ("LARS", dict(dampening=-0.1), r"dampening must be in \[0.0, 1.0\]"),
    ("LARS", dict(weight_decay=-1.0), r"weight_decay must be >= 0.0"),
    ("LARS", dict(trust_coefficient=-1e-3), r"trust_coefficient must be >= 0.0"),
    ("LARS", dict(nesterov=True, dampening=0.1), r"Nesterov momentum requires a momentum and zero dampening"),
    ("LARS", dict(nesterov=True, momentum=0.0), r"nesterov=True needs momentum > 0"),
])
def test_invalid_arguments(name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        getattr(ts_optim, name)([torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("name", ["Lamb", "LARS"])
def test_complex_and_sparse_rejected_before_any_update(name):
    ok = torch.ones(2, 2, requires_grad=True)
    ok.grad = torch.ones(2, 2)
    bad = torch.zeros(3, 2, requires_grad=True)
    bad.grad = torch.sparse_coo_tensor([[0]], torch.ones(1, 2), (3, 2))
    with pytest.raises(RuntimeError, match=rf"{name} does not support sparse gradients"):
        getattr(ts_optim, name)([ok, bad], lr=0.1).step()
    assert torch.equal(ok.detach(), torch.ones(2, 2))
    z = torch.zeros(2, dtype=torch.complex64, requires_grad=True)
    z.grad = torch.ones_like(z)
    with pytest.raises(RuntimeError, match=rf"{name} does not support complex parameters"):
        getattr(ts_optim, name)([z]).step()
