"""int8 ``state_dtype`` against bitsandbytes' 8-bit AdamW (block-wise, 256 elements, dynamic maps),
run on the same CPU tensors: after N steps, the states agree within the quantization error, and
torchstep's trajectory is as close to float32 AdamW as bitsandbytes' is.

bitsandbytes' CPU quantizer is not exactly round-to-nearest (tiny values land on neighbouring
codes) and its signed map lacks -1, so codes are not compared one for one."""

from __future__ import annotations

import logging

import torch

import torchstep.optim as O
from torchstep.core import lowbit

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
import bitsandbytes as bnb  # noqa: E402
import bitsandbytes.functional as bnb_functional  # noqa: E402

STEPS = 20


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(128, 256)  # weight: 32768 elements (8-bit state), bias: 256 (32-bit)


def _run(make, seed: int = 0):
    model = _model(seed)
    opt = make(model.parameters())
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(STEPS):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g) * 0.1
        opt.step()
    return model, opt


def _bnb_moments(opt, p):
    st = opt.state[p]
    m = bnb_functional.dequantize_blockwise(st["state1"], absmax=st["absmax1"], code=st["qmap1"], blocksize=256)
    v = bnb_functional.dequantize_blockwise(st["state2"], absmax=st["absmax2"], code=st["qmap2"], blocksize=256)
    return m.view(p.shape), v.view(p.shape)


def test_int8_adamw_agrees_with_bitsandbytes_8bit_adamw():
    kwargs = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    ours, ours_opt = _run(lambda ps: O.AdamW(ps, state_dtype="int8", **kwargs))
    theirs, theirs_opt = _run(lambda ps: bnb.optim.AdamW8bit(ps, **kwargs))
    exact, exact_opt = _run(lambda ps: torch.optim.AdamW(ps, **kwargs))
    m_bnb, v_bnb = _bnb_moments(theirs_opt, theirs.weight)
    algo, held = ours_opt.algorithm, ours_opt.state[ours.weight]
    m = lowbit.full_value(algo, held, "exp_avg", ours.weight)
    v = lowbit.full_value(algo, held, "exp_avg_sq", ours.weight)
    w, w_bnb, w_exact = ours.weight.detach(), theirs.weight.detach(), exact.weight.detach()
    # the quantized state: each moment within a few code gaps of its block's scale
    for ours_t, bnb_t, name in ((m, m_bnb, "exp_avg"), (v, v_bnb, "exp_avg_sq")):
        scale = held[name + lowbit.ABSMAX].repeat_interleave(256).view(w.shape)
        assert float(((ours_t - bnb_t).abs() / scale).max()) < 0.05, name
    # the weights: both 8-bit runs end near each other and near float32 AdamW, ours no farther
    assert float((w - w_bnb).abs().max()) < 1e-3
    ours_err = float((w - w_exact).abs().max())
    bnb_err = float((w_bnb - w_exact).abs().max())
    assert ours_err <= 1.5 * bnb_err + 1e-5, (ours_err, bnb_err)
    # the small bias keeps 32-bit state in both
    assert ours_opt.state[ours.bias]["exp_avg"].dtype == torch.float32
    torch.testing.assert_close(ours.bias.detach(), exact.bias.detach(), rtol=1e-5, atol=1e-6)
