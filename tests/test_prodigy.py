"""Prodigy against the authors' prodigyopt (1.1.2): parity over options (two groups, float32 and
float64, 25 steps on a gradient stream that makes d grow; float64 at 1e-10, float32 at 1e-4
relative), state_dict interchange both ways, the deliberate differences (untouched gradients,
frozen lr=0 groups), fsdp_in_use's all-reduce, errors; the fused passes against the reference
backend, and that they ran."""

import pytest
import prodigyopt
import torch

import torchstep.optim as ts_optim
from modern_helpers import (assert_close, assert_params_close, assert_state_close, continue_after_load, make_params,
                            run_side_by_side, set_grads, two_groups)
from registry import TOLERANCE
from torchstep.algorithms.prodigy import prodigyopt_state_dict
from torchstep.backends import staged, use

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


# Prodigy's parity criterion (its module docstring): float64 at the registry's 1e-10; float32
# within 1e-4 relative, the float32 inner product being summed in another order than prodigyopt's
F32_PARITY = dict(rtol=1e-4, atol=1e-6)


def flat_like_prodigyopt(opt, params) -> dict:
    """``opt``'s state with ``s`` and ``p0`` flattened, as prodigyopt 1.1.2 keeps them (torchstep
    keeps them parameter-shaped with ``slice_p=1``, as sharded DTensor parameters require)."""
    flat = {}
    for p in params:
        st = dict(opt.state.get(p, {}))
        for key in ("s", "p0"):
            if isinstance(st.get(key), torch.Tensor) and st[key].shape == p.shape:
                st[key] = st[key].flatten()
        flat[p] = st
    return flat


class _FlatState:
    def __init__(self, opt, params):
        self.state, self.param_groups = flat_like_prodigyopt(opt, params), opt.param_groups


def assert_same(a, b, a_p, b_p, dtype):
    a, b = _FlatState(a, a_p), _FlatState(b, b_p)
    if dtype == torch.float32:
        return assert_same_f32(a, b, a_p, b_p)
    assert_params_close(a_p, b_p, dtype)
    assert_state_close(a, b, a_p, b_p, dtype, keys=STATE_KEYS)
    for ga, gb in zip(a.param_groups, b.param_groups):
        for key in GROUP_KEYS:
            assert_close(gb[key], ga[key], dtype, key)


def assert_same_f32(a, b, a_p, b_p):
    close = lambda got, want, what: torch.testing.assert_close(got, want, **F32_PARITY, msg=lambda m: f"{what}: {m}")  # noqa: E731
    for i, (x, y) in enumerate(zip(a_p, b_p)):
        close(y.detach(), x.detach(), f"param {i}")
        for key in STATE_KEYS:
            if key in a.state.get(x, {}) or key in b.state.get(y, {}):
                want, got = a.state[x][key], b.state[y][key]
                if isinstance(want, torch.Tensor):
                    close(got, want, f"state[{i}][{key!r}]")
                else:
                    assert got == want, (i, key, got, want)
    for ga, gb in zip(a.param_groups, b.param_groups):
        for key in GROUP_KEYS:
            want = ga[key]
            if isinstance(want, float):
                assert abs(gb[key] - want) <= F32_PARITY["atol"] + F32_PARITY["rtol"] * abs(want), (key, gb[key], want)
            else:
                assert gb[key] == want, (key, gb[key], want)


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

    def make_first(ps):
        opt = libs[first].Prodigy(two_groups(ps, group2), use_bias_correction=True, weight_decay=0.05)
        if (first, second) == ("torchstep", "prodigyopt"):  # prodigyopt's flat layout of s and p0
            opt.state_dict = lambda: prodigyopt_state_dict(opt, ts_optim.Prodigy.state_dict(opt))
        return opt

    one, two, one_p, two_p = continue_after_load(
        make_first,
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


FUSED_CASES = [dict(), dict(weight_decay=0.1, decouple=False, use_bias_correction=True),
               dict(betas=(0.0, 0.99), weight_decay=0.05), dict(safeguard_warmup=True, growth_rate=1.05)]


def _run(backend, kwargs, dtype, group2=None, between=None):
    params = make_params(dtype, zero=3)
    opt = ts_optim.Prodigy(two_groups(params, group2 or dict(weight_decay=0.02, eps=1e-5)), **kwargs)
    with use(backend):
        for step in range(25):
            set_grads(step, [(p, p) for p in params], pull=1.0)
            opt.step()
            if between is not None:
                between(opt, params, step)
    return opt, params


@DTYPES
@pytest.mark.parametrize("kwargs", FUSED_CASES, ids=[f"c{i}" for i in range(len(FUSED_CASES))])
def test_fused_passes_match_the_reference(kwargs, dtype, monkeypatch):
    """Two kernels per group and step (a parameter whose p0 is the 0-d zero, and groups with
    slice_p > 1, take the per-tensor lane alongside); the same trajectory as tensor by tensor."""
    ref, ref_p = _run("reference", kwargs, dtype)
    launches = []
    original = staged.run_pass
    monkeypatch.setattr(staged, "run_pass", lambda fn, ops, *a, **k: launches.append(len(ops["p"])) or original(fn, ops, *a, **k))
    fused, fused_p = _run("fused", kwargs, dtype)
    # per step and group two kernels: group 1 takes both its tensors, group 2 two of its three
    # (the last has no gradient every 5th step)
    assert len(launches) == 2 * 2 * 25 and sum(launches) == 2 * (2 * 25 + 2 * 20 + 1 * 5)
    assert fused.state[fused_p[3]]["p0"].shape == ()
    tolerance = TOLERANCE[dtype] if dtype == torch.float64 else F32_PARITY  # float32: d amplifies rounding
    for x, y in zip(ref_p, fused_p):
        torch.testing.assert_close(y.detach(), x.detach(), **tolerance)
        for key in ("s", "p0", "exp_avg", "exp_avg_sq"):
            if key in ref.state[x]:
                torch.testing.assert_close(fused.state[y][key], ref.state[x][key], **tolerance)
        assert fused.state[y]["step"] == ref.state[x]["step"]
    for ga, gb in zip(ref.param_groups, fused.param_groups):
        for key in GROUP_KEYS:
            assert abs(gb[key] - ga[key]) <= tolerance["atol"] + tolerance["rtol"] * abs(ga[key]), key


def test_sliced_groups_take_the_per_tensor_lane(monkeypatch):
    launches = []
    monkeypatch.setattr(staged, "run_pass", lambda *a, **k: launches.append(a))
    _run("fused", dict(slice_p=2), torch.float64, group2=dict())
    assert launches == []


def test_storage_replaced_between_steps_is_seen():
    """The plan's pointer check every step: a state tensor or parameter given new storage."""
    def replace(opt, params, step):
        if step == 3:
            opt.state[params[0]]["exp_avg"].data = opt.state[params[0]]["exp_avg"].data.clone()
        if step == 6:
            params[1].data = params[1].data.clone()

    ref, ref_p = _run("reference", {}, torch.float64, between=replace)
    fused, fused_p = _run("fused", {}, torch.float64, between=replace)
    for x, y in zip(ref_p, fused_p):
        torch.testing.assert_close(y.detach(), x.detach(), **TOLERANCE[torch.float64])


def test_misshaped_loaded_state_is_refused_before_the_kernel():
    params = make_params(torch.float64)
    opt = ts_optim.Prodigy(params)
    set_grads(0, [(p, p) for p in params], pull=1.0)
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["s"] = sd["state"][0]["s"].flatten()[:7].clone()
    opt.load_state_dict(sd)
    with use("fused"), pytest.raises(RuntimeError, match=r"state 's' of parameter 0 has shape \(7,\).*must have shape \(4, 5\)"):
        opt.step()
