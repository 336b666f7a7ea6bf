"""Prodigy against the authors' prodigyopt (1.1.2): parity over options (two groups, float32 and
float64, 25 steps on a gradient stream that makes d grow), state_dict interchange both ways, the
deliberate differences (untouched gradients, frozen lr=0 groups), fsdp_in_use's all-reduce, errors."""

import pytest
import prodigyopt
import torch

import torchstep.optim as ts_optim
from modern_helpers import (assert_close, assert_params_close, assert_state_close, continue_after_load,
                            run_side_by_side, two_groups)

DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
GROUP_KEYS = ("d", "d_max", "d_numerator", "d_denom", "d_hat", "k")
STATE_KEYS = ("step", "s", "p0", "exp_avg", "exp_avg_sq")
CASES = [
    dict(),
    dict(weight_decay=0.1),
    dict(weight_decay=0.1, decouple=False),
    dict(use_bias_correction=True, safeguard_warmup=True),
    dict(betas=(0.0, 0.99), weight_decay=0.05, decouple=False),
    dict(betas=(0.0, 0.99), weight_decay=0.05),
    dict(growth_rate=1.05, d_coef=0.5),
    dict(slice_p=3, beta3=0.9, d0=1e-4),
    dict(lr=0.5, eps=1e-6, betas=(0.8, 0.9), use_bias_correction=True),
]
GROUP2 = [dict(), dict(weight_decay=0.02, eps=1e-5, safeguard_warmup=True, slice_p=2)]


def assert_same(a, b, a_p, b_p, dtype):
    assert_params_close(a_p, b_p, dtype)
    assert_state_close(a, b, a_p, b_p, dtype, keys=STATE_KEYS)
    for ga, gb in zip(a.param_groups, b.param_groups):
        for key in GROUP_KEYS:
            assert_close(gb[key], ga[key], dtype, key)


@DTYPES
@pytest.mark.parametrize("group2", GROUP2, ids=["same", "group_opts"])
@pytest.mark.parametrize("kwargs", CASES, ids=[f"c{i}" for i in range(len(CASES))])
def test_parity_with_prodigyopt(kwargs, group2, dtype):
    a, b, a_p, b_p = run_side_by_side(lambda ps: prodigyopt.Prodigy(two_groups(ps, group2), **kwargs),
                                      lambda ps: ts_optim.Prodigy(two_groups(ps, group2), **kwargs),
                                      dtype, pull=1.0, zero=3)
    assert_same(a, b, a_p, b_p, dtype)
    assert b.param_groups[0]["d"] > 1.5 * b.param_groups[0]["d0"]  # the estimate grew
    assert b.state[b_p[3]]["p0"].shape == ()  # an all-zero parameter keeps a 0-d p0, as prodigyopt does
    assert all(list(b.state[p]) == [k for k in STATE_KEYS if k in a.state[q]] for p, q in zip(b_p, a_p))


def test_all_zero_gradients_leave_the_step_undone_like_prodigyopt():
    opts, params = [], []
    for lib in (prodigyopt, ts_optim):
        p = torch.ones(3, requires_grad=True)
        p.grad = torch.zeros(3)
        opt = lib.Prodigy([p])
        opt.step()
        opts.append(opt)
        params.append(p)
    for opt, p in zip(opts, params):
        assert torch.equal(p.detach(), torch.ones(3)) and opt.param_groups[0]["k"] == 0 and opt.state[p]["step"] == 0


@DTYPES
@pytest.mark.parametrize("first,second", [("prodigyopt", "torchstep"), ("torchstep", "prodigyopt"), ("torchstep", "torchstep")])
def test_state_dict_interchange(first, second, dtype):
    libs = {"prodigyopt": prodigyopt, "torchstep": ts_optim}
    group2 = dict(weight_decay=0.01)
    one, two, one_p, two_p = continue_after_load(
        lambda ps: libs[first].Prodigy(two_groups(ps, group2), use_bias_correction=True, weight_decay=0.05),
        lambda ps: libs[second].Prodigy(two_groups(ps, group2)), dtype, pull=1.0, zero=3)
    assert_same(one, two, one_p, two_p, dtype)


def test_gradients_are_left_untouched():
    """Deliberate difference: prodigyopt adds coupled weight decay into p.grad."""
    g = torch.randn(4)
    for lib, changed in ((prodigyopt, True), (ts_optim, False)):
        p = torch.randn(4, requires_grad=True)
        p.grad = g.clone()
        lib.Prodigy([p], weight_decay=0.1, decouple=False).step()
        assert torch.equal(p.grad, g) is not changed


def test_a_group_with_lr_zero_is_frozen():
    """Deliberate difference: prodigyopt still decays such a group at the global rate."""
    moved = []
    for lib in (prodigyopt, ts_optim):
        p, q = torch.randn(5, requires_grad=True), torch.randn(5, requires_grad=True)
        q0 = q.detach().clone()
        opt = lib.Prodigy([{"params": [p]}, {"params": [q], "lr": 0.0}], weight_decay=0.5)
        for step in range(5):
            p.grad, q.grad = p.detach() - 1 + 0.1 * step, q.detach() + 1
            opt.step()
        moved.append(not torch.equal(q.detach(), q0))
        assert opt.param_groups[1]["k"] == 5
    assert moved == [True, False]
    assert not ts_optim.Prodigy([torch.zeros(1, requires_grad=True)]).state  # lazily created


def test_different_nonzero_lrs_are_refused():
    p, q = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    p.grad = q.grad = torch.ones(2)
    opt = ts_optim.Prodigy([{"params": [p]}, {"params": [q], "lr": 0.5}])
    with pytest.raises(RuntimeError, match=r"only supported for values of 0 \(group 1 has lr=0.5, the largest is 1.0"):
        opt.step()


def test_fsdp_in_use_all_reduces_the_sums(tmp_path):
    """With one process the all-reduce is the identity: the same trajectory as without it."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        a, b, a_p, b_p = run_side_by_side(lambda ps: ts_optim.Prodigy(ps), lambda ps: ts_optim.Prodigy(ps, fsdp_in_use=True),
                                          torch.float64, pull=1.0)
    finally:
        torch.distributed.destroy_process_group()
    assert_same(a, b, a_p, b_p, torch.float64)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(lr=0.0), r"Invalid learning rate: 0.0 \(lr must be > 0\)"),
    (dict(d0=0.0), r"Invalid d0 value: 0.0 \(d0 must be > 0\)"),
    (dict(eps=0.0), r"Invalid epsilon value: 0.0 \(eps must be > 0\)"),
    (dict(betas=(0.9, 1.0)), r"Invalid beta parameter at index 1: 1.0 \(betas\[1\] must be in \[0.0, 1.0\)\)"),
    (dict(beta3=1.5), r"Invalid beta3 value: 1.5 \(beta3 must be in \[0.0, 1.0\]\)"),
    (dict(weight_decay=-1.0), r"weight_decay must be >= 0.0"),
    (dict(d_coef=0.0), r"d_coef must be > 0"),
    (dict(growth_rate=-1.0), r"growth_rate must be > 0"),
    (dict(slice_p=0), r"slice_p must be an integer >= 1; got 0"),
])
def test_invalid_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ts_optim.Prodigy([torch.zeros(2, requires_grad=True)], **kwargs)


def test_complex_rejected_before_any_update():
    ok = torch.ones(2, requires_grad=True)
    ok.grad = torch.ones(2)
    z = torch.zeros(2, dtype=torch.complex64, requires_grad=True)
    z.grad = torch.ones_like(z)
    opt = ts_optim.Prodigy([ok, z])
    with pytest.raises(RuntimeError, match="Prodigy does not support complex parameters"):
        opt.step()
    assert not opt.state and torch.equal(ok.detach(), torch.ones(2))
