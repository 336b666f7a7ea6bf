"""Random legal configurations of the low-bit options, fused kernel against the reference path.

Each seed draws an element-wise algorithm and its options, ``state_dtype``, parameter dtypes
(float32, float64, bfloat16 with stochastic rounding or Kahan compensation), shapes (empty, tiny,
around the 4096-element threshold, not a multiple of the 256-element block), two groups with their
own options, gradients that skip steps, and occasionally a non-finite gradient; then runs the same
steps on both backends. They must agree: parameters closely, int8 codes within one code, scales
and bfloat16 state closely -- and a non-finite value must reach both the same way."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

import torchstep.optim as O
from torchstep.backends import dispatch

from test_lowbit import ELEMENTWISE

SHAPES = [(0,), (1,), (7, 3), (4095,), (4096,), (4097,), (33, 129), (3, 2, 700)]
SEEDS = range(40)


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
    return dict(name=name, shapes=shapes, dtype=dtype, group=group, second=second, split=rng.randint(0, len(shapes)),
                steps=rng.randint(2, 5), skip=rng.random() < 0.3, nonfinite=rng.random() < 0.15, seed=seed)


def _run(case: dict, backend: str):
    gen = torch.Generator().manual_seed(case["seed"])
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(case["dtype"])) for s in case["shapes"]]
    k = case["split"]
    groups = [g for g in ({"params": params[:k], **case["second"]}, {"params": params[k:]}) if g["params"]]
    opt = getattr(O, case["name"])(groups, **ELEMENTWISE[case["name"]], **case["group"])
    if hasattr(opt, "train"):
        opt.train()
    with dispatch.use(backend), warnings.catch_warnings():
        warnings.simplefilter("error")  # a silent fallback would compare the reference with itself
        for step in range(case["steps"]):
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
            elif torch.is_tensor(value) and value.dim():
                torch.testing.assert_close(value.float(), other.float(), equal_nan=True, rtol=2e-2, atol=1e-5)
