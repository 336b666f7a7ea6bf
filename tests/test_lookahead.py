"""Lookahead around torchstep and torch.optim optimizers: parity with pytorch-optimizer's
Lookahead (4.1.0), the paper's update at a sync step, the deliberate difference for parameters
without a gradient, state_dict round trips mid-cycle, LR schedulers and hooks through the wrapper,
errors."""

import copy

import pytest
import pytorch_optimizer
import torch

import torchstep.optim as ts_optim
from modern_helpers import (assert_params_close, assert_state_close, continue_after_load, make_params,
                            run_side_by_side, through_disk, two_groups)

DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
INNER = {
    "ts_adam": lambda groups: ts_optim.Adam(groups, lr=0.05),
    "torch_adam": lambda groups: torch.optim.Adam(groups, lr=0.05, foreach=False),
    "ts_sgd": lambda groups: ts_optim.SGD(groups, lr=0.1, momentum=0.9),
    "ts_lamb": lambda groups: ts_optim.Lamb(groups, lr=0.01),
}
GROUP2 = dict(lr=0.02)


def ours(inner, k, alpha):
    return lambda ps: ts_optim.Lookahead(INNER[inner](two_groups(ps, GROUP2)), k=k, alpha=alpha)


@DTYPES
@pytest.mark.parametrize("k,alpha", [(5, 0.5), (3, 0.8), (1, 0.3), (4, 0.95), (2, 0.1)])
@pytest.mark.parametrize("inner", ["ts_adam", "torch_adam", "ts_sgd"])
def test_parity_with_pytorch_optimizer(inner, k, alpha, dtype):
    torch_twin = {"ts_adam": "torch_adam", "torch_adam": "torch_adam", "ts_sgd": None}[inner]
    theirs_inner = INNER[torch_twin] if torch_twin else (lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, foreach=False))
    a, b, a_p, b_p = run_side_by_side(lambda ps: pytorch_optimizer.Lookahead(theirs_inner(two_groups(ps, GROUP2)), k=k, alpha=alpha),
                                      ours(inner, k, alpha), dtype, skip_last=False)
    assert_params_close(a_p, b_p, dtype)
    assert_state_close(a, b, a_p, b_p, dtype, keys=())
    for x, y in zip(a_p, b_p):
        torch.testing.assert_close(b.state[y]["slow_param"], a.state[x]["slow_params"])
        assert_state_close(a.optimizer, b.optimizer, [x], [y], dtype)


def test_sync_step_is_the_papers_interpolation():
    p = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    opt = ts_optim.Lookahead(ts_optim.SGD([p], lr=1.0), k=2, alpha=0.25)
    for g in ([1.0, 0.0], [1.0, 4.0]):  # fast weights: [0, 2], then [-1, -2]
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    slow = torch.tensor([1.0, 2.0], dtype=torch.float64) + 0.25 * torch.tensor([-2.0, -4.0], dtype=torch.float64)
    assert torch.equal(p.detach(), slow) and torch.equal(opt.state[p]["slow_param"], slow)
    assert opt.lookahead_step == 0


def test_alpha_one_is_the_inner_optimizer_alone():
    """Allowed here (the paper's range is (0, 1]); pytorch-optimizer refuses it."""
    a, b, a_p, b_p = run_side_by_side(lambda ps: ts_optim.Adam(ps, lr=0.05), lambda ps: ts_optim.Lookahead(ts_optim.Adam(ps, lr=0.05), k=3, alpha=1.0),
                                      torch.float64)
    assert_params_close(a_p, b_p, torch.float64)
    with pytest.raises(ValueError):
        pytorch_optimizer.Lookahead(torch.optim.Adam(make_params(torch.float64)), alpha=1.0)


def test_parameters_without_a_gradient_are_synchronised_too():
    """Deliberate difference: pytorch-optimizer skips a parameter with no gradient at the sync step,
    leaving its slow weights stale; here every parameter is pulled back."""
    results = []
    for make in (pytorch_optimizer.Lookahead, ts_optim.Lookahead):
        p = torch.zeros(2, requires_grad=True)
        opt = make(torch.optim.SGD([p], lr=1.0), k=2, alpha=0.5)
        p.grad = torch.ones(2)
        opt.step()  # fast weights move to -1
        p.grad = None
        opt.step()  # the sync step, without a gradient
        results.append(p.detach().clone())
    assert torch.equal(results[0], torch.full((2,), -1.0)) and torch.equal(results[1], torch.full((2,), -0.5))


def test_a_group_added_mid_cycle_syncs_with_the_others():
    """One counter for the wrapper: a group added after one step is pulled back at the same k-th
    step as the rest (pytorch-optimizer counts per group, so it would wait k steps of its own)."""
    synced = []
    for make in (pytorch_optimizer.Lookahead, ts_optim.Lookahead):
        p, q = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
        opt = make(torch.optim.SGD([p], lr=1.0), k=2, alpha=0.5)
        p.grad = torch.ones(2)
        opt.step()
        opt.add_param_group({"params": [q]})
        p.grad, q.grad = torch.ones(2), torch.ones(2)
        opt.step()  # the second step: a sync for p in both
        synced.append(q.detach().clone())
    assert torch.equal(synced[0], torch.full((2,), -1.0)) and torch.equal(synced[1], torch.full((2,), -0.5))


@DTYPES
@pytest.mark.parametrize("inner", ["ts_adam", "torch_adam", "ts_lamb"])
def test_state_dict_round_trip_mid_cycle(inner, dtype):
    one, two, one_p, two_p = continue_after_load(ours(inner, 5, 0.6), ours(inner, 3, 0.5), dtype)
    assert two.k == 5 and two.alpha == 0.6  # restored with the state
    assert_params_close(one_p, two_p, dtype)
    for x, y in zip(one_p, two_p):
        torch.testing.assert_close(two.state[y]["slow_param"], one.state[x]["slow_param"])
        assert_state_close(one.optimizer, two.optimizer, [x], [y], dtype)


def test_state_dict_layout_holds_both_halves():
    params = make_params(torch.float32)
    opt = ours("ts_adam", 5, 0.5)(params)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    sd = through_disk(opt.state_dict())
    assert set(sd) == {"base_optimizer", "slow_params", "k", "alpha", "lookahead_step"}
    assert sd["lookahead_step"] == 1 and sorted(sd["slow_params"]) == list(range(len(params)))
    assert set(sd["base_optimizer"]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    torch.optim.Adam(two_groups(make_params(torch.float32), GROUP2)).load_state_dict(sd["base_optimizer"])


def test_state_dict_hooks_run():
    opt = ours("ts_adam", 5, 0.5)(make_params(torch.float32))
    seen = []
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "note": 1})
    opt.register_load_state_dict_pre_hook(lambda o, sd: seen.append(sd["note"]))
    opt.register_load_state_dict_post_hook(lambda o: seen.append("loaded"))
    opt.load_state_dict(opt.state_dict())
    assert seen == [1, "loaded"]


def test_load_state_dict_errors():
    opt = ours("ts_adam", 5, 0.5)(make_params(torch.float32))
    with pytest.raises(ValueError, match=r"not a Lookahead state_dict: \['base_optimizer', 'slow_params'\] missing"):
        opt.load_state_dict(opt.optimizer.state_dict())
    small = ours("ts_adam", 5, 0.5)(make_params(torch.float32, shapes=[(2,), (3,)]))
    with pytest.raises(ValueError, match="slow weights for 2 parameters, this optimizer has 5"):
        opt.load_state_dict(small.state_dict())


@pytest.mark.parametrize("scheduler", [torch.optim.lr_scheduler.StepLR, ts_optim.lr_scheduler.StepLR])
def test_lr_scheduler_drives_the_inner_optimizer(scheduler):
    p = torch.zeros(2, requires_grad=True)
    opt = ts_optim.Lookahead(ts_optim.SGD([p], lr=1.0))
    sched = scheduler(opt, step_size=1, gamma=0.5)
    p.grad = torch.ones(2)
    opt.step()
    sched.step()
    assert opt.optimizer.param_groups[0]["lr"] == 0.5 and isinstance(opt, torch.optim.Optimizer)


def test_add_param_group_hooks_and_copies():
    p, q = torch.zeros(2, requires_grad=True), torch.full((3,), 2.0, requires_grad=True)
    opt = ts_optim.Lookahead(ts_optim.SGD([p], lr=1.0), k=2, alpha=0.5)
    opt.add_param_group({"params": [q], "lr": 0.5})
    assert torch.equal(opt.state[q]["slow_param"], q.detach()) and len(opt.optimizer.param_groups) == 2
    calls = []
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append(o.lookahead_step))
    for _ in range(2):
        p.grad, q.grad = torch.ones(2), torch.ones(3)
        opt.step()
    assert calls == [1, 0] and torch.equal(q.detach(), torch.full((3,), 1.5))
    clone = copy.deepcopy(opt)
    assert clone.k == 2 and clone.optimizer is not opt.optimizer and len(clone.param_groups) == 2
    opt.zero_grad()
    assert p.grad is None and q.grad is None


@pytest.mark.parametrize("kwargs,error,pattern", [
    (dict(k=0), ValueError, r"Invalid lookahead steps \(k must be an integer >= 1; got 0\)"),
    (dict(k=2.5), ValueError, r"k must be an integer >= 1; got 2.5"),
    (dict(alpha=1.5), ValueError, r"Invalid slow weights step size: 1.5 \(alpha must be in \[0.0, 1.0\]\)"),
    (dict(alpha=-0.1), ValueError, r"alpha must be in \[0.0, 1.0\]"),
    (dict(alpha=0.0), ValueError, r"Invalid slow weights step size: 0.0 \(alpha must be > 0\)"),
])
def test_invalid_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        ts_optim.Lookahead(ts_optim.SGD([torch.zeros(2, requires_grad=True)]), **kwargs)


def test_wrapping_something_else_is_a_type_error():
    with pytest.raises(TypeError, match="Lookahead wraps an optimizer .*got list"):
        ts_optim.Lookahead([torch.zeros(2, requires_grad=True)])
