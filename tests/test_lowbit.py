"""State in fewer bits (``state_dtype``), bfloat16 weights rounded stochastically or with Kahan
compensation, and the checkpoint formats (torchstep.core.lowbit, torchstep.core.checkpoint).

The oracle of the fused kernels is the reference path, written from the definitions (quantize
with ``torch.searchsorted`` over the code map's midpoints, update in full precision, re-quantize);
the oracle of the update itself is torch.optim / the float32-state run."""

from __future__ import annotations

import copy
import inspect
import math
import warnings

import pytest
import torch

import torchstep
import torchstep.optim as O
from torchstep.backends import dispatch
from torchstep.core import lowbit

from registry import REPRESENTATIVE

BIG = (70, 80)  # 5600 elements: quantized (>= 4096), 22 blocks, the last one partial
SMALL = (30,)  # kept in full precision


def _params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g, dtype=torch.float32).to(dtype)) for s in (BIG, SMALL)]


def _grads(params, step):
    g = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


def _train(cls, kwargs, backend, steps=4, dtype=torch.float32):
    params = _params(dtype)
    opt = cls(params, **kwargs)
    if hasattr(opt, "train"):  # Schedule-Free: steps are taken in train mode
        opt.train()
    with dispatch.use(backend):
        for i in range(steps):
            _grads(params, i)
            opt.step()
    return params, opt


# -- the code maps and the quantizer ------------------------------------------------------

@pytest.mark.parametrize("form", lowbit.INT8_FORMS)
def test_code_maps_are_sorted_and_hold_zero_and_their_extremes(form):
    code = lowbit.CODES[form]
    assert code.numel() == 256 and bool((code[1:] > code[:-1]).all())
    assert (code == 0).sum() == 1 and code[-1] == 1.0
    assert code[0] == (-1.0 if form == lowbit.INT8_SIGNED else 0.0)
    # dynamic: seven decades, so values down to 1e-6 of the block's scale are told apart from 0
    assert code[code > 0].min() < 1e-6


def _half_gap(form):
    code = lowbit.CODES[form].double()
    return float((code[1:] - code[:-1]).max()) / 2


@pytest.mark.parametrize("form", lowbit.INT8_FORMS)
def test_round_trip_error_is_within_half_a_code_gap_of_each_block_scale(form):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10_000, generator=g) * torch.logspace(-6, 2, 10_000)  # magnitudes over 8 decades
    if form == lowbit.INT8_UNSIGNED:
        x = x.abs()
    codes, absmax = lowbit.quantize(x, form)
    back = lowbit.dequantize(codes, absmax, form, torch.float32)
    scale = absmax.repeat_interleave(lowbit.BLOCK)[: x.numel()]
    err = (back - x).abs()
    assert bool((err <= scale * (_half_gap(form) + 1e-6)).all())
    # each block's largest magnitude is exact (its code is an extreme of the map)
    blocks = x.abs().view(-1)[: (x.numel() // 256) * 256].view(-1, 256)
    assert torch.equal(absmax[: blocks.shape[0]], blocks.amax(dim=1))


@pytest.mark.parametrize("form", lowbit.INT8_FORMS)
def test_quantize_picks_the_nearest_code(form):
    g = torch.Generator().manual_seed(4)
    x = torch.rand(512, generator=g) * (2 if form == lowbit.INT8_SIGNED else 1) - (1 if form == lowbit.INT8_SIGNED else 0)
    x[0] = 1.0  # scale 1 in both blocks, so x / absmax is x
    x[256] = 1.0
    codes, absmax = lowbit.quantize(x, form)
    code = lowbit.CODES[form]
    brute = (x[:, None] - code[None, :]).abs().argmin(dim=1)
    assert torch.equal(absmax, torch.ones(2))
    assert torch.equal(codes.long(), brute)


def test_zero_and_nan_blocks():
    x = torch.zeros(512)
    x[300] = float("nan")
    codes, absmax = lowbit.quantize(x, lowbit.INT8_SIGNED)
    assert absmax[0] == 0 and math.isnan(absmax[1])
    back = lowbit.dequantize(codes, absmax, lowbit.INT8_SIGNED, torch.float32)
    assert torch.equal(back[:256], torch.zeros(256)) and bool(back[256:].isnan().all())


def _adversarial_values(form):
    """Block-scale-1 values on and next to every midpoint of the map, and the midpoints' ties."""
    mids = lowbit.MIDPOINTS[form]
    up = torch.nextafter(mids, torch.full_like(mids, 2.0))
    down = torch.nextafter(mids, torch.full_like(mids, -2.0))
    values = torch.cat([mids, up, down, lowbit.CODES[form]])
    values = values[values.abs() <= 1]
    n = math.ceil(values.numel() / 255) * 255
    values = torch.cat([values, torch.zeros(n - values.numel())]).view(-1, 255)
    # a leading 1.0 per block of 256 fixes the block's scale at 1
    return torch.cat([torch.ones(values.shape[0], 1), values], dim=1).reshape(-1)


@pytest.mark.parametrize("form", lowbit.INT8_FORMS)
def test_the_fused_kernel_codes_exactly_as_the_definition(form):
    # SGD's momentum buffer is the gradient itself at the first step: the kernel's quantizer
    # sees exactly the values given
    values = _adversarial_values(form)
    values = torch.cat([values, torch.ones(max(0, 4096 - values.numel()))])
    p = torch.nn.Parameter(torch.zeros_like(values))
    p.grad = values.clone()
    opt = O.SGD([p], lr=0.1, momentum=0.9, state_dtype="int8")
    if form == lowbit.INT8_UNSIGNED:  # Adagrad's sum of squares: 0 + g^2; feed square roots
        p.grad = values.abs().sqrt()
        opt = O.Adagrad([p], lr=0.1, state_dtype="int8")
        values = p.grad * p.grad
    with dispatch.use("fused"):
        opt.step()
    name = "momentum_buffer" if form == lowbit.INT8_SIGNED else "sum"
    codes, absmax = lowbit.quantize(values, form)
    assert torch.equal(opt.state[p][name + lowbit.ABSMAX], absmax)
    assert torch.equal(opt.state[p][name], codes)


# -- every element-wise algorithm: fused kernel == reference, and close to full precision ----

# every element-wise algorithm that keeps moment state: the registry's option-rich configuration
# where it has one (ASGD keeps only a weight average and refuses state_dtype; tested below)
ELEMENTWISE = {
    **{name: kwargs for name, kwargs in REPRESENTATIVE.items() if name != "ASGD"},
    "Lion": dict(lr=1e-3, weight_decay=0.1),
    "Adan": dict(lr=1e-2),
    "AdaBelief": dict(lr=1e-2),
    "ADOPT": dict(lr=1e-2),
    "AdEMAMix": dict(lr=1e-2),
    "AdamWScheduleFree": dict(lr=1e-2),
}


def _codes_close(a, b, name):
    """int8 codes equal or one code apart (the update's last bit may differ between the kernel's
    C and torch's operations, and a value by a midpoint then codes one step over)."""
    diff = (a.long() - b.long()).abs()
    assert int(diff.max()) <= 1, name
    assert float((diff > 0).float().mean()) < 0.01, name


@pytest.mark.parametrize("state_dtype", ["int8", torch.bfloat16])
@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_fused_matches_the_reference_for_every_elementwise_algorithm(name, state_dtype):
    cls = getattr(O, name)
    kwargs = {**ELEMENTWISE[name], "state_dtype": state_dtype}
    fused_params, fused = _train(cls, kwargs, "fused")
    ref_params, ref = _train(cls, kwargs, "reference")
    for pf, pr in zip(fused_params, ref_params):
        torch.testing.assert_close(pf, pr, rtol=1e-4, atol=1e-4)
        sf, sr = fused.state[pf], ref.state[pr]
        assert sorted(sf) == sorted(sr)
        for key, value in sf.items():
            if value.dtype == torch.uint8:
                _codes_close(value, sr[key], key)
            elif key.endswith(lowbit.ABSMAX) or value.dtype == torch.bfloat16:
                torch.testing.assert_close(value.float(), sr[key].float(), rtol=2e-2, atol=1e-6)
    big = fused.state[fused_params[0]]
    reducible = lowbit.reducible_names(cls.algorithm if hasattr(cls, "algorithm") else None, fused.param_groups[0])
    for n in reducible:
        assert big[n].dtype == (torch.uint8 if state_dtype == "int8" else torch.bfloat16)
    for n in fused.algorithm.exact_state:  # weights' copies stay exact
        assert big[n].dtype == torch.float32
    small = fused.state[fused_params[1]]
    for n in reducible:  # < 4096 elements: full precision under int8, bfloat16 under bfloat16
        assert small[n].dtype == (torch.float32 if state_dtype == "int8" else torch.bfloat16)


@pytest.mark.parametrize("state_dtype", ["int8", torch.bfloat16])
@pytest.mark.parametrize("name", ["AdamW", "SGD", "Lion", "RMSprop"])
def test_reduced_state_stays_close_to_full_precision(name, state_dtype):
    cls = getattr(O, name)
    full_params, _ = _train(cls, ELEMENTWISE[name], "fused", steps=8)
    low_params, _ = _train(cls, {**ELEMENTWISE[name], "state_dtype": state_dtype}, "fused", steps=8)
    moved = (full_params[0] - _params()[0]).abs().mean()
    drift = (low_params[0] - full_params[0]).abs().mean()
    assert drift < 0.05 * moved, (float(drift), float(moved))


def test_int8_adamw_state_takes_a_quarter_of_float32s_bytes():
    p = torch.nn.Parameter(torch.randn(1 << 20))
    p.grad = torch.randn_like(p)
    sizes = {}
    for sd in (None, "int8", torch.bfloat16):
        opt = O.AdamW([p], state_dtype=sd)
        opt.step()
        sizes[sd] = sum(t.numel() * t.element_size() for k, t in opt.state[p].items() if k != "step")
    assert sizes["int8"] / sizes[None] <= 0.27
    assert sizes[torch.bfloat16] / sizes[None] == 0.5


def test_small_tensors_are_decided_on_their_size():
    p = torch.nn.Parameter(torch.randn(4095))
    q = torch.nn.Parameter(torch.randn(4096))
    opt = O.Adam([p, q], state_dtype="int8")
    p.grad, q.grad = torch.randn_like(p), torch.randn_like(q)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.float32
    assert opt.state[q]["exp_avg"].dtype == torch.uint8 and opt.state[q]["exp_avg_sq.absmax"].shape == (16,)


def test_param_groups_pass_state_dtype_through():
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.LayerNorm(128))
    groups = torchstep.param_groups(model, lr=1e-3, weight_decay=0.1, state_dtype="int8")
    assert all(g["state_dtype"] == "int8" for g in groups)
    opt = O.AdamW(groups)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[model[0].weight]["exp_avg"].dtype == torch.uint8


def test_a_group_may_choose_its_own_state_dtype_and_change_it():
    a, b = torch.nn.Parameter(torch.randn(5000)), torch.nn.Parameter(torch.randn(5000))
    opt = O.AdamW([{"params": [a], "state_dtype": "int8"}, {"params": [b]}], state_dtype=torch.bfloat16)
    for p in (a, b):
        p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[a]["exp_avg"].dtype == torch.uint8 and opt.state[b]["exp_avg"].dtype == torch.bfloat16
    expect = lowbit.full_value(opt.algorithm, opt.state[a], "exp_avg", a)
    opt.param_groups[0]["state_dtype"] = None  # back to full precision: the state is converted
    opt.step()
    assert opt.state[a]["exp_avg"].dtype == torch.float32 and "exp_avg.absmax" not in opt.state[a]
    torch.testing.assert_close(opt.state[a]["exp_avg"], expect * 0.9 + a.grad * 0.1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(state_dtype="int4"), r"state_dtype must be None, torch.float32, torch.bfloat16 \(or 'float32', 'bfloat16'\) "
                               r"or 'int8', got 'int4'"),
    (dict(state_dtype=torch.float16), r"state_dtype must be .* got torch.float16"),
    (dict(stochastic_rounding=-1), r"stochastic_rounding must be True, False or a non-negative integer seed, got -1"),
    (dict(kahan=1), r"kahan must be True or False, got 1"),
    (dict(kahan=True, stochastic_rounding=True), r"choose one"),
    (dict(state_dtype="int8", differentiable=True), r"differentiable=True cannot be combined"),
])
def test_bad_options_are_refused_naming_them(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        O.AdamW([torch.nn.Parameter(torch.randn(3))], **kwargs)


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_seed_zero_is_a_seed_not_off(backend):
    """``stochastic_rounding=0`` is seed 0, the same as ``True`` (it was half-on before: the fused
    path rounded stochastically and the reference path did not)."""
    results = {}  # keyed by name: 0 == False as dict keys
    for name, sr in (("true", True), ("zero", 0), ("off", False)):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 5000).bfloat16())
        opt = O.AdamW([p], lr=1e-4, stochastic_rounding=sr)
        with dispatch.use(backend):
            for step in range(3):
                p.grad = torch.full_like(p, 0.01 * (step + 1))
                opt.step()
        results[name] = (p.detach().clone(), opt.state[p]["exp_avg"].clone())
    assert torch.equal(results["true"][0], results["zero"][0]) and torch.equal(results["true"][1], results["zero"][1])
    assert not torch.equal(results["true"][0], results["off"][0])


def test_a_group_choosing_stochastic_rounding_over_the_constructors_kahan():
    a, b = (torch.nn.Parameter(torch.randn(8).bfloat16()) for _ in range(2))
    with pytest.raises(ValueError, match=r"stochastic_rounding=3 and kahan=True .* set the other one to False"):
        O.AdamW([{"params": [a]}, {"params": [b], "stochastic_rounding": 3}], kahan=True)
    opt = O.AdamW([{"params": [a]}, {"params": [b], "stochastic_rounding": 3, "kahan": False}], kahan=True)
    for p in (a, b):
        p.grad = torch.randn(8).bfloat16()
    opt.step()
    assert "kahan_comp" in opt.state[a] and "kahan_comp" not in opt.state[b]


@pytest.mark.parametrize("key, value, pattern", [
    ("state_dtype", "int4", r"state_dtype must be .* got 'int4'"),
    ("stochastic_rounding", -3, r"stochastic_rounding must be .* got -3"),
    ("kahan", "yes", r"kahan must be True or False, got 'yes'"),
    ("differentiable", True, r"AdamW \(param group 0\): differentiable=True cannot be combined"),
])
def test_options_edited_in_place_are_checked_at_the_next_step(key, value, pattern):
    """Schedulers and users edit ``param_groups`` in place; an option edited to a value the
    constructor would refuse is refused at the next step, before anything changes."""
    p = torch.nn.Parameter(torch.randn(5000))
    opt = O.AdamW([p], state_dtype="int8")
    p.grad = torch.randn(5000)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items()}
    opt.param_groups[0][key] = value
    with pytest.raises(ValueError, match=pattern):
        opt.step()
    assert all(torch.equal(opt.state[p][k], v) for k, v in before.items())


def test_an_option_edited_in_a_later_group_stops_the_step_before_any_group_moves():
    a, b = torch.nn.Parameter(torch.randn(5000)), torch.nn.Parameter(torch.randn(5000))
    opt = O.AdamW([{"params": [a]}, {"params": [b]}], state_dtype="int8")
    for p in (a, b):
        p.grad = torch.randn(5000)
    opt.step()
    weights = (a.detach().clone(), b.detach().clone())
    opt.param_groups[1]["state_dtype"] = "int4"
    with pytest.raises(ValueError, match="got 'int4'"):
        opt.step()
    assert torch.equal(a, weights[0]) and torch.equal(b, weights[1])


def test_a_checkpoint_with_a_bad_option_is_refused_on_load():
    p = torch.nn.Parameter(torch.randn(5000))
    opt = O.AdamW([p], state_dtype="int8")
    p.grad = torch.randn(5000)
    opt.step()
    sd = opt.state_dict()
    sd["param_groups"][0]["state_dtype"] = "fp8"
    before = {k: v.clone() for k, v in opt.state[p].items()}
    with pytest.raises(ValueError, match=r"state_dtype must be .* got 'fp8'"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["state_dtype"] == "int8"
    assert all(torch.equal(opt.state[p][k], v) for k, v in before.items())


def test_options_outside_the_elementwise_algorithms_are_refused():
    p = torch.nn.Parameter(torch.randn(3, 3))
    with pytest.raises(ValueError, match="LBFGS: state_dtype, stochastic_rounding and kahan apply to the element-wise"):
        O.LBFGS([p], state_dtype="int8")
    with pytest.raises(ValueError, match=r"ASGD: state_dtype='int8' has nothing to reduce"):
        O.ASGD([p], state_dtype="int8")
    with pytest.raises(ValueError, match=r"SGDScheduleFree: state_dtype='int8' has nothing to reduce: .*\(z\)"):
        O.SGDScheduleFree([p], state_dtype="int8")
    with pytest.raises(ValueError, match="cautious=True cannot be combined"):
        O.Lion([p], cautious=True, state_dtype="int8")
    with pytest.raises(ValueError, match="state_dtype must be"):
        O.Adam([p]).add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], "state_dtype": "fp8"})


def test_constructor_signature_shows_the_options():
    sig = inspect.signature(O.AdamW.__init__)
    assert sig.parameters["state_dtype"].default is None
    assert sig.parameters["stochastic_rounding"].default is False and sig.parameters["kahan"].default is False


# -- bfloat16 weights: stochastic rounding and Kahan compensation ----------------------------

def test_stochastic_rounding_is_unbiased():
    x = torch.full((1 << 16,), 1.0 + 2 ** -9, dtype=torch.float32)  # a quarter of the way up to the next bf16
    bits = lowbit.random_bits(lowbit.tensor_key(7, 1, 0), x.numel())
    rounded = lowbit.round_stochastic(x, bits).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2 ** -7}
    assert abs(float(rounded.double().mean()) - (1.0 + 2 ** -9)) < 2 ** -7 * 0.01
    neg = lowbit.round_stochastic(-x, bits).float()
    assert torch.equal(neg, -rounded)  # rounding is on the magnitude: symmetric
    special = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0])
    out = lowbit.round_stochastic(special, torch.full((5,), 0xFFFF, dtype=torch.int64)).float()
    assert out[0] == float("inf") and out[1] == -float("inf") and math.isnan(out[2]) and out[3] == 0


def _bf16_sgd(backend, steps, **kwargs):
    p = torch.nn.Parameter(torch.ones(8192, dtype=torch.bfloat16))
    opt = O.SGD([p], lr=1e-4, **kwargs)
    with dispatch.use(backend):
        for _ in range(steps):
            p.grad = torch.ones_like(p)  # each update (1e-4) is below half a bf16 step at 1.0 (2**-8)
            opt.step()
    return p, opt


def test_round_to_nearest_stalls_where_stochastic_rounding_and_kahan_move():
    steps = 40
    exact = 1.0 - 1e-4 * steps
    nearest, _ = _bf16_sgd("fused", steps)
    assert bool((nearest == 1.0).all())  # every update rounded away: off by 4e-3
    sr, _ = _bf16_sgd("fused", steps, stochastic_rounding=True)
    assert abs(float(sr.detach().float().mean()) - exact) < 2e-4
    kahan, opt = _bf16_sgd("fused", steps, kahan=True)
    total = kahan.detach().float() + opt.state[kahan]["kahan_comp"].float()
    assert float((total - exact).abs().max()) < 5e-5  # the bfloat16 buffer's own rounding


@pytest.mark.parametrize("kwargs", [dict(stochastic_rounding=True), dict(stochastic_rounding=5, state_dtype="int8"),
                                    dict(kahan=True), dict(kahan=True, state_dtype=torch.bfloat16)])
def test_bf16_weights_fused_equals_reference_bit_for_bit(kwargs):
    fused_params, fused = _train(O.AdamW, dict(lr=1e-3, **kwargs), "fused", dtype=torch.bfloat16)
    ref_params, ref = _train(O.AdamW, dict(lr=1e-3, **kwargs), "reference", dtype=torch.bfloat16)
    for pf, pr in zip(fused_params, ref_params):
        assert torch.equal(pf, pr)
        for key, value in fused.state[pf].items():
            assert torch.equal(value, ref.state[pr][key]), key


def test_stochastic_rounding_is_reproducible_and_seeded():
    a, _ = _bf16_sgd("fused", 5, stochastic_rounding=3)
    b, _ = _bf16_sgd("fused", 5, stochastic_rounding=3)
    c, _ = _bf16_sgd("fused", 5, stochastic_rounding=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_stochastic_rounding_resumes_the_same_stream_from_a_checkpoint():
    p_full, opt_full = _bf16_sgd("fused", 6, stochastic_rounding=True)
    p, opt = _bf16_sgd("fused", 3, stochastic_rounding=True)
    saved = opt.state_dict()
    q = torch.nn.Parameter(p.detach().clone())
    resumed = O.SGD([q], lr=1e-4, stochastic_rounding=True)
    resumed.load_state_dict(saved)
    for _ in range(3):
        q.grad = torch.ones_like(q)
        resumed.step()
    assert torch.equal(q, p_full)


# -- checkpoints ----------------------------------------------------------------------------

def _adamw_pair(state_dtype, steps=3):
    params = _params()
    opt = O.AdamW(params, lr=1e-2, state_dtype=state_dtype)
    for i in range(steps):
        _grads(params, i)
        opt.step()
    return params, opt


@pytest.mark.parametrize("state_dtype", ["int8", torch.bfloat16])
def test_torch_format_is_torchs_and_torch_resumes_it(state_dtype):
    params, opt = _adamw_pair(state_dtype)
    saved = copy.deepcopy(opt.state_dict())  # (torch's load would share tensors with the live state)
    for st in saved["state"].values():
        assert set(st) == {"step", "exp_avg", "exp_avg_sq"}
        assert st["exp_avg"].dtype == torch.float32
    mirror = [torch.nn.Parameter(p.detach().clone()) for p in params]
    theirs = torch.optim.AdamW(mirror, lr=1e-2)
    theirs.load_state_dict(saved)
    for i in range(3, 6):
        _grads(params, i)
        _grads(mirror, i)
        opt.step()
        theirs.step()
    for a, b in zip(params, mirror):  # the same moments, up to what quantization loses
        torch.testing.assert_close(a, b, rtol=0, atol=3e-3)


def test_torch_format_reloads_without_drift():
    params, opt = _adamw_pair("int8")
    held = {k: v.clone() for k, v in opt.state[params[0]].items()}
    for _ in range(3):
        saved = opt.state_dict()
        opt = O.AdamW(params, lr=1e-2, state_dtype="int8")
        opt.load_state_dict(saved)
    for k, v in held.items():
        assert torch.equal(opt.state[params[0]][k], v), k


@pytest.mark.parametrize("state_dtype", ["int8", torch.bfloat16])
def test_compact_format_round_trips_bit_exactly(state_dtype, tmp_path):
    params, opt = _adamw_pair(state_dtype)
    path = tmp_path / "opt.pt"
    torch.save(opt.state_dict(compact=True), path)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    again = O.AdamW(copies, lr=1e-2, state_dtype=state_dtype)
    again.load_state_dict(torch.load(path, weights_only=True))
    for p, q in zip(params, copies):
        assert sorted(opt.state[p]) == sorted(again.state[q])
        for k, v in opt.state[p].items():
            assert v.dtype == again.state[q][k].dtype and torch.equal(v, again.state[q][k]), k
    for i in range(3, 5):
        _grads(params, i)
        _grads(copies, i)
        opt.step()
        again.step()
    for p, q in zip(params, copies):
        assert torch.equal(p, q)


def test_compact_int8_uses_names_torch_refuses():
    params, opt = _adamw_pair("int8")
    compact = opt.state_dict(compact=True)
    assert set(compact["state"][0]) == {"step", "exp_avg.codes", "exp_avg.absmax", "exp_avg_sq.codes", "exp_avg_sq.absmax"}
    assert set(compact["state"][1]) == {"step", "exp_avg", "exp_avg_sq"}  # small: full precision
    theirs = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params], lr=1e-2)
    theirs.load_state_dict(compact)
    for p in theirs.param_groups[0]["params"]:
        p.grad = torch.randn_like(p)
    with pytest.raises(KeyError, match="exp_avg"):
        theirs.step()


def test_a_full_precision_checkpoint_is_quantized_on_load():
    params = _params()
    theirs = torch.optim.AdamW(params, lr=1e-2)
    for i in range(3):
        _grads(params, i)
        theirs.step()
    ours = O.AdamW(params, lr=1e-2, state_dtype="int8")
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))  # torch's groups lack state_dtype: ours is kept
    assert ours.param_groups[0]["state_dtype"] == "int8"
    held = ours.state[params[0]]
    assert held["exp_avg"].dtype == torch.uint8
    back = lowbit.full_value(ours.algorithm, held, "exp_avg", params[0])
    scale = held["exp_avg.absmax"].repeat_interleave(256)[: params[0].numel()].view(params[0].shape)
    assert bool(((back - theirs.state[params[0]]["exp_avg"]).abs() <= scale * (_half_gap("int8s") + 1e-6)).all())
    # a compact checkpoint brings its groups' state_dtype along (saved options win, as in torch);
    # turned off, the state goes back to full precision at the next step
    plain = O.AdamW(params, lr=1e-2)
    plain.load_state_dict(ours.state_dict(compact=True))
    assert plain.param_groups[0]["state_dtype"] == "int8"
    assert torch.equal(plain.state[params[0]]["exp_avg"], held["exp_avg"])
    plain.param_groups[0]["state_dtype"] = None
    _grads(params, 9)
    plain.step()
    assert plain.state[params[0]]["exp_avg"].dtype == torch.float32


def test_a_compact_checkpoint_of_another_model_is_refused():
    params, opt = _adamw_pair("int8")
    other = [torch.nn.Parameter(torch.randn(80, 70)), torch.nn.Parameter(torch.randn(30))]
    fresh = O.AdamW(other, state_dtype="int8")
    with pytest.raises(ValueError, match="shape"):
        fresh.load_state_dict(opt.state_dict(compact=True))


@pytest.mark.parametrize("cls, kwargs", [(O.Adagrad, {}), (O.SGD, dict(momentum=0.9))])
def test_sparse_gradients_with_int8_state(cls, kwargs):
    """Sparse gradients take the reference path: Adagrad's dense sum is held in int8; SGD's momentum
    buffer, sparse like its gradients, stays as it is. Both follow torch closely."""
    torch.manual_seed(0)
    ours, theirs = torch.nn.Embedding(1000, 8, sparse=True), torch.nn.Embedding(1000, 8, sparse=True)
    theirs.load_state_dict(ours.state_dict())
    a = cls(ours.parameters(), lr=0.1, state_dtype="int8", **kwargs)
    b = getattr(torch.optim, cls.__name__)(theirs.parameters(), lr=0.1, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            idx = torch.randint(0, 1000, (20,))
            for model, opt in ((ours, a), (theirs, b)):
                opt.zero_grad()
                model(idx).square().sum().backward()
                opt.step()
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=2e-2)
    held = a.state[ours.weight]
    if cls is O.Adagrad:
        assert held["sum"].dtype == torch.uint8
    else:
        assert held["momentum_buffer"].layout == torch.sparse_coo


def test_a_positive_second_moment_never_reads_back_as_zero():
    """The zero-point problem: v coded as 0 would make m / (sqrt(v) + eps) explode; the unsigned
    map codes any positive value as at least its smallest non-zero code, zero as zero."""
    x = torch.zeros(512)
    x[0], x[1], x[2], x[300] = 1.0, 1e-12, 1e-30, 1e-9
    codes, absmax = lowbit.quantize(x, lowbit.INT8_UNSIGNED)
    assert codes[:4].tolist() == [255, 1, 1, 0] and codes[300] == 255
    p = torch.nn.Parameter(torch.zeros(512 * 8))
    opt = O.Adagrad([p], lr=0.1, state_dtype="int8")
    p.grad = torch.zeros_like(p)
    p.grad[0], p.grad[1], p.grad[2] = 1.0, 1e-6, 1e-15  # squared: 1, 1e-12, 1e-30
    with dispatch.use("fused"):
        opt.step()
    assert opt.state[p]["sum"][:4].tolist() == [255, 1, 1, 0]


def test_float32_state_for_bfloat16_weights():
    """state_dtype=torch.float32 gives a bfloat16 parameter float32 state, read and written by the
    kernel as such (the reference path computes in float32 too, as the kernel does)."""
    fused_params, fused = _train(O.AdamW, dict(lr=1e-3, state_dtype=torch.float32, stochastic_rounding=True), "fused",
                                 dtype=torch.bfloat16)
    ref_params, ref = _train(O.AdamW, dict(lr=1e-3, state_dtype="float32", stochastic_rounding=True), "reference",
                             dtype=torch.bfloat16)
    for pf, pr in zip(fused_params, ref_params):
        assert fused.state[pf]["exp_avg"].dtype == torch.float32
        assert torch.equal(pf, pr)
        torch.testing.assert_close(fused.state[pf]["exp_avg_sq"], ref.state[pr]["exp_avg_sq"], rtol=1e-6, atol=1e-9)
    # torch's format keeps float32 state as it is (torch.optim casts it to the parameter's dtype on load)
    saved = copy.deepcopy(fused.state_dict())
    assert saved["state"][0]["exp_avg"].dtype == torch.float32
    theirs = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in fused_params], lr=1e-3)
    theirs.load_state_dict(saved)
    assert theirs.state[theirs.param_groups[0]["params"][0]]["exp_avg"].dtype == torch.bfloat16


def test_bfloat16_state_is_rounded_stochastically():
    """A second moment whose per-step change is under half a bfloat16 step: rounded to nearest it
    would never move; rounded stochastically it follows the float32 one on average."""
    p = torch.nn.Parameter(torch.zeros(1 << 14))
    opt = O.Adam([p], lr=0.0, betas=(0.9, 0.999), state_dtype=torch.bfloat16)
    exact = torch.zeros(())
    for step in range(60):
        p.grad = torch.ones_like(p) * (1.0 if step < 10 else 1.2)  # g^2 moves from 1 to 1.44
        opt.step()
        exact = exact * 0.999 + 0.001 * float(p.grad[0]) ** 2
    held = opt.state[p]["exp_avg_sq"].float()
    assert abs(float(held.mean()) - float(exact)) < 2e-4 * float(exact) + 1e-6, (float(held.mean()), float(exact))
    assert held.unique().numel() > 1  # rounded both ways


def test_stochastic_rounding_is_unbiased_across_steps_at_one_element():
    """The bits of one element over many steps (keys) average out too, not only over elements."""
    x = torch.full((1,), 1.0 + 2 ** -9)
    rounded = [float(lowbit.round_stochastic(x, lowbit.random_bits(lowbit.tensor_key(0, step, 3), 1)).float())
               for step in range(4096)]
    ulp = 2 ** -7
    assert abs(sum(rounded) / len(rounded) - (1.0 + 2 ** -9)) < 0.05 * ulp  # ~5 standard errors
