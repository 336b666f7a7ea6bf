"""LAMB and LARS on the fused backend (two passes over memory: per-tensor sums of squares out,
per-tensor trust ratios in) against their literal per-tensor definition (the reference backend),
and the two kernel capabilities those passes use, on their own."""

import pytest
import torch

import torchstep.optim as ts_optim
from modern_helpers import assert_params_close, assert_state_close, set_grads, two_groups
from torchstep.backends import cpu_kernel, staged, use
from torchstep.backends.trace import Summed

DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
# a zero tensor (norm 0: ratio 1), a 0-d one, and one of several kernel chunks
SHAPES = [(4, 5), (3,), (), (2, cpu_kernel.CHUNK + 123), (6,)]
CONFIGS = [
    ("Lamb", dict(lr=1e-2, weight_decay=0.1)),
    ("Lamb", dict(lr=2e-2, weight_decay=0.05, decoupled_weight_decay=True, max_weight_norm=1.5, maximize=True)),
    ("Lamb", dict(lr=1e-2, bias_correction=False, max_weight_norm=None, betas=(0.5, 0.9), eps=1e-3)),
    ("LARS", dict(lr=0.5, weight_decay=0.01, nesterov=True, trust_coefficient=0.02)),
    ("LARS", dict(lr=0.5, momentum=0.5, dampening=0.3, maximize=True)),
    ("LARS", dict(lr=0.3, momentum=0.0, weight_decay=0.01)),
]


def run(backend, name, kwargs, dtype, shapes=SHAPES, steps=7, layout=lambda p: p):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    params[0].zero_()
    params = [layout(p).requires_grad_() for p in params]
    opt = getattr(ts_optim, name)(two_groups(params, dict(lr=3e-3, trust_ratio=False, weight_decay=0.0), 3), **kwargs)
    with use(backend):
        for step in range(steps):  # the last parameter skips every 5th step: steps differ per tensor
            set_grads(step, [(p, p) for p in params])
            opt.step()
    return opt, params


@DTYPES
@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_fused_matches_reference(name, kwargs, dtype, monkeypatch):
    reference, ref_params = run("reference", name, kwargs, dtype)
    per_tensor_calls = []
    cls = getattr(ts_optim, name)
    original = cls.update_group
    monkeypatch.setattr(cls, "update_group", lambda self, g, ps: per_tensor_calls.append(len(ps)) or original(self, g, ps))
    fused, fused_params = run("fused", name, kwargs, dtype)
    assert set(per_tensor_calls) == {0}  # every tensor took the fused passes
    assert_params_close(ref_params, fused_params, dtype)
    assert_state_close(reference, fused, ref_params, fused_params, dtype)
    assert fused.state_dict()["state"].keys() == reference.state_dict()["state"].keys()


@pytest.mark.parametrize("name,kwargs", [CONFIGS[0], CONFIGS[3]], ids=["Lamb", "LARS"])
def test_mixed_dtypes_and_strided_tensors(name, kwargs):
    """A float32/float64 group runs one kernel per dtype; a non-contiguous parameter takes the
    per-tensor path alongside."""
    odd = lambda p: p.t().contiguous().t() if p.dim() == 2 else p.to(torch.float32) if p.numel() == 7 else p  # noqa: E731
    shapes = [(4, 5), (3,), (7,), (2, 700), (6,)]
    _, a = run("reference", name, kwargs, torch.float64, shapes, layout=odd)
    _, b = run("auto", name, kwargs, torch.float64, shapes, layout=odd)
    assert not b[0].is_contiguous() and [p.dtype for p in b[1:3]] == [torch.float64, torch.float32]
    for x, y in zip(a, b):
        assert_params_close([x], [y], x.dtype)


def test_per_tensor_scalars_and_reductions():
    """A pass reading one scalar per tensor and returning sums of squares per tensor (over
    several chunks), checked against torch."""
    def shift(p, g, *, scale, alpha):
        p.add_(g * scale, alpha=alpha)
        return {"p": p, "pg": p * g}

    gen = torch.Generator().manual_seed(1)
    ps = [torch.randn(n, generator=gen, dtype=torch.float64) for n in (1, 7, 3 * cpu_kernel.CHUNK + 5)]
    gs = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in ps]
    scale = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    want = [p + 0.1 * (g * s) for p, g, s in zip(ps, gs, scale.tolist())]
    sums = staged.run_pass(shift, {"p": ps, "g": gs}, ("p",), dict(alpha=0.1), {"scale": scale})
    for p, w in zip(ps, want):
        torch.testing.assert_close(p, w, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(sums["p"], torch.stack([w.square().sum() for w in want]), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(sums["pg"], torch.stack([(w * g).square().sum() for w, g in zip(want, gs)]),
                               rtol=1e-12, atol=0.0)


def test_plain_sums_per_tensor():
    """A :class:`Summed` reduction gives the plain per-tensor sum (a dot product, an L1 norm)."""
    def inner(p, g):
        return {"dot": Summed(p * g), "l1": Summed(g.abs()), "sq": p}

    gen = torch.Generator().manual_seed(2)
    ps = [torch.randn(n, generator=gen, dtype=torch.float64) for n in (1, 9, 2 * cpu_kernel.CHUNK + 3)]
    gs = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in ps]
    sums = staged.run_pass(inner, {"p": ps, "g": gs}, (), {})
    torch.testing.assert_close(sums["dot"], torch.stack([torch.dot(p, g) for p, g in zip(ps, gs)]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sums["l1"], torch.stack([g.abs().sum() for g in gs]), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(sums["sq"], torch.stack([p.square().sum() for p in ps]), rtol=1e-12, atol=0.0)


def test_fused_multiply_adds_round_as_torch_does():
    """``add(x, alpha=a)`` and ``addcmul`` are one fused multiply-add in torch's CPU kernels; the
    traced kernel computes them the same way, bit for bit in float32 (a plain multiply then add,
    or the compiler contracting the other product, differs in a fraction of the elements)."""
    def update(v, s, g, *, beta, rate, value):
        s.mul_(beta).add_(g, alpha=rate)
        v.mul_(beta).addcmul_(g, g, value=value)

    gen = torch.Generator().manual_seed(3)
    v, s, g = (torch.randn(4099, generator=gen, dtype=torch.float64).float() for _ in range(3))
    want_s, want_v = s.clone(), v.clone()
    hyper = dict(beta=0.9995, rate=3.3333e-3, value=1.2345e-3)
    update(want_v, want_s, g, **hyper)
    staged.run_pass(update, {"v": [v], "s": [s], "g": [g]}, ("v", "s"), hyper)
    assert torch.equal(s, want_s) and torch.equal(v, want_v)


def test_reference_backend_keeps_the_per_tensor_path(monkeypatch):
    calls = []
    monkeypatch.setattr(staged, "run_pass", lambda *a, **k: calls.append(a))
    run("reference", "Lamb", CONFIGS[0][1], torch.float32)
    assert calls == []
