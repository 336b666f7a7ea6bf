"""Random legal configurations of the low-bit options, fused kernel against the reference path.

Each seed draws an element-wise algorithm and its options, ``state_dtype``, parameter dtypes
(float32, float64, bfloat16 with stochastic rounding or Kahan compensation), shapes (empty, tiny,
around the 4096-element threshold, not a multiple of the 256-element block), two groups with their
own options, gradients that skip steps, occasionally a non-finite gradient, and sometimes a
``state_dtype`` edited in place between steps (the state is converted); then runs the same
steps on both backends. They must agree: parameters closely, int8 codes within one code, scales
and bfloat16 state closely -- and a non-finite value must reach both the same way."""

from __future__ import annotations

import copy
import io
import random
import warnings

import pytest
import torch

import torchstep.optim as O
from torchstep.backends import dispatch

from test_lowbit import ELEMENTWISE

SHAPES = [(0,), (1,), (7, 3), (4095,), (4096,), (4097,), (33, 129), (3, 2, 700)]
SEEDS = range(120)


def _draw(seed: int) -> dict:
    rng = random.Random(seed)
    name = rng.choice(sorted(ELEMENTWISE))
    shapes = rng.sample(SHAPES, rng.randint(1, 4))
    dtype = rng.choice([torch.float32, torch.float32, torch.float64, torch.bfloat16])
    group = {"state_dtype": rng.choice(["int8", torch.bfloat16, None])}
    if dtype == torch.bfloat16:
        group[rng.choice(["stochastic_rounding", "kahan"])] = True
    if group["state_dtype"] is None and dtype != torch.bfloat16:
        group["state_dtype"] = "int8"
    second = {"state_dtype": rng.choice(["int8", torch.bfloat16, None])}
    if dtype == torch.bfloat16 and rng.random() < 0.5:
        second["stochastic_rounding"] = rng.randint(0, 9)
        second["kahan"] = False  # the constructor's kahan=True would otherwise apply here too (refused)
    # sometimes the first group's state_dtype is edited in place before a later step (state converted)
    switch = (rng.randint(1, 3), rng.choice(["int8", torch.bfloat16, None])) if rng.random() < 0.3 else None
    return dict(name=name, shapes=shapes, dtype=dtype, group=group, second=second, split=rng.randint(0, len(shapes)),
                steps=rng.randint(2, 5), skip=rng.random() < 0.3, nonfinite=rng.random() < 0.15, seed=seed,
                switch=switch)


def _make_opt(case: dict, params: list):
    k = case["split"]
    groups = [g for g in ({"params": params[:k], **case["second"]}, {"params": params[k:]}) if g["params"]]
    opt = getattr(O, case["name"])(groups, **ELEMENTWISE[case["name"]], **case["group"])
    if hasattr(opt, "train"):
        opt.train()
    return opt


def _run(case: dict, backend: str, resume: tuple[int, bool] | None = None):
    """The case's steps; ``resume`` = (step, compact): before that step, the state goes through
    ``torch.save``/``torch.load`` in torch's format (or the compact one) into a new optimizer."""
    gen = torch.Generator().manual_seed(case["seed"])
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(case["dtype"])) for s in case["shapes"]]
    opt = _make_opt(case, params)
    with dispatch.use(backend), warnings.catch_warnings():
        warnings.simplefilter("error")  # a silent fallback would compare the reference with itself
        for step in range(case["steps"]):
            if resume is not None and step == resume[0]:
                buffer = io.BytesIO()
                torch.save(opt.state_dict(compact=resume[1]), buffer)
                buffer.seek(0)
                opt = _make_opt(case, params)
                opt.load_state_dict(torch.load(buffer))
            # (after a resume: an edited state_dtype converts a parameter's state at its next step,
            # while loading converts every parameter's state at once -- the same values, held
            # differently until then)
            if case["switch"] is not None and step == case["switch"][0]:
                opt.param_groups[0]["state_dtype"] = case["switch"][1]
            for i, p in enumerate(params):
                if case["skip"] and (i + step) % 3 == 0:
                    p.grad = None
                    continue
                p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
                if case["nonfinite"] and step == 1 and p.numel() > 5:
                    p.grad.view(-1)[5] = float("nan")
            opt.step()
    return params, opt


@pytest.mark.parametrize("seed", SEEDS)
def test_random_lowbit_configuration_fused_equals_reference(seed):
    case = _draw(seed)
    fused_params, fused = _run(case, "fused")
    ref_params, ref = _run(case, "reference")
    tol = dict(rtol=1e-3, atol=1e-3) if case["dtype"] != torch.bfloat16 else dict(rtol=2e-2, atol=2e-2)
    for pf, pr in zip(fused_params, ref_params):
        torch.testing.assert_close(pf.detach().float(), pr.detach().float(), equal_nan=True, **tol)
        sf, sr = fused.state.get(pf, {}), ref.state.get(pr, {})
        assert sorted(sf) == sorted(sr), case
        for key, value in sf.items():
            other = sr[key]
            if value.dtype == torch.uint8:
                diff = (value.long() - other.long()).abs()
                if case["nonfinite"]:
                    continue  # a NaN block's codes are arbitrary; its scale is NaN on both (the .absmax entry, compared below)
                assert int(diff.max()) <= 1, (key, case)
            elif key == "kahan_comp":  # what rounding left out: where the weights differ by a bf16 step, so does it
                torch.testing.assert_close(pf.detach().float() + value.float(), pr.detach().float() + other.float(),
                                           equal_nan=True, **tol)
            elif torch.is_tensor(value) and value.dim():
                torch.testing.assert_close(value.float(), other.float(), equal_nan=True, rtol=2e-2, atol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_lowbit_configuration_resumes_exactly(seed):
    """Saving mid-run (torch's format or the compact one), loading into a new optimizer and going
    on gives the uninterrupted run's parameters and state bit for bit: the compact format holds
    the state as it is, and torch's format of float32/float64 parameters is a fixed point
    (dequantized values quantize back to the same codes and scales; bfloat16 state cast up and
    back is exact; rounding counters are saved). Two exceptions, both torch's own behaviour:
    torch's format holds a bfloat16 parameter's state in bfloat16, which rounds dequantized int8
    state, and loading casts NAdam's scalar ``mu_product`` (float32) to the parameter's dtype --
    there the resumed run only stays close."""
    case = _draw(seed)
    rng = random.Random(seed + 10_000)
    resume = (rng.randint(1, case["steps"] - 1), rng.random() < 0.5)
    exact = (resume[1] or case["dtype"] != torch.bfloat16) and case["name"] != "NAdam"
    straight_params, straight = _run(case, "fused")
    resumed_params, resumed = _run(case, "fused", resume)
    for a, b in zip(straight_params, resumed_params):
        if exact:
            assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()), (resume, case)
        else:
            torch.testing.assert_close(a.detach().float(), b.detach().float(), equal_nan=True, rtol=2e-2, atol=2e-2)
        sa, sb = straight.state.get(a, {}), resumed.state.get(b, {})
        assert sorted(sa) == sorted(sb), (resume, case)
        for key, value in sa.items():
            other = sb[key]
            if not exact or not torch.is_tensor(value):
                continue  # (the trajectories part: codes may move by many steps in a few updates)
            assert value.dtype == other.dtype, (key, resume, case)
            if value.is_floating_point():
                assert torch.equal(value.isnan(), other.isnan()) and torch.equal(value.nan_to_num(), other.nan_to_num()), \
                    (key, resume, case)
            elif not case["nonfinite"]:  # a NaN block's codes are arbitrary (its scale is NaN: compared above)
                assert torch.equal(value, other), (key, resume, case)


TORCH_TWINS = sorted(n for n in ELEMENTWISE if hasattr(torch.optim, n) and n != "SparseAdam")


@pytest.mark.parametrize("seed", SEEDS)
def test_random_lowbit_checkpoint_resumes_in_torch_optim(seed):
    """A random element-wise algorithm that torch.optim also has, with int8 or bfloat16 state on
    float32 parameters, saved mid-run in torch's format (``state_dict()``): ``torch.optim``'s
    class loads it and steps on as torchstep's same class does from the same checkpoint read
    without the options torch does not know (so in full precision) -- the checkpoint means the
    same thing to both (names, dtypes, shapes, scalar state)."""
    rng = random.Random(seed)
    name = rng.choice(TORCH_TWINS)
    shapes = rng.sample(SHAPES[1:], rng.randint(1, 3))
    kwargs = ELEMENTWISE[name]
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    ours = getattr(O, name)(params, **kwargs, state_dtype=rng.choice(["int8", torch.bfloat16]))
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(6)]
    for step in range(3):
        for p, g in zip(params, grads[step]):
            p.grad = g.clone()
        ours.step()
    saved = ours.state_dict()
    for i, p in enumerate(params):
        assert all(v.dtype == p.dtype for v in saved["state"][i].values() if torch.is_tensor(v) and v.dim()), (name, seed)
    twins = [[torch.nn.Parameter(p.detach().clone()) for p in params] for _ in range(2)]
    theirs = getattr(torch.optim, name)(twins[0], **kwargs)
    full = getattr(O, name)(twins[1], **kwargs)
    theirs.load_state_dict(copy.deepcopy(saved))
    plain = copy.deepcopy(saved)  # as torch reads it: without the options torch does not know
    for group in plain["param_groups"]:
        for key in ("state_dtype", "stochastic_rounding", "kahan", "rounding_step"):
            group.pop(key, None)
    full.load_state_dict(plain)
    for step in range(3, 6):
        for a, b, g in zip(*twins, grads[step]):
            a.grad, b.grad = g.clone(), g.clone()
        theirs.step()
        full.step()
    for a, b in zip(*twins):
        torch.testing.assert_close(b.detach(), a.detach(), msg=lambda m: f"{name} seed {seed}: {m}")
