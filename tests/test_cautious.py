"""The cautious stage (torchstep.backends.cautious) on any increment-type algorithm: against the
authors' formula written out for Adam/AdamW, AdEMAMix's whole-step mask (pytorch-optimizer masks
only the fast term), exact increments where the parameter's precision would round them away,
GradScaler, the gradient left as it was, and refusals."""

from __future__ import annotations

import pytest
import torch

import torchstep.optim as ts_optim
from torchstep.backends import use
from torchstep.backends.cautious import make_cautious

from helpers import grads_at, make_params

F64 = dict(rtol=1e-10, atol=1e-12)
BACKENDS = ["fused", "reference"]


def _grad(step: int, p: torch.Tensor) -> torch.Tensor:
    """``p``'s gradient at ``step``, from the shared gradient stream."""
    return grads_at(step, [p], skipping=False)[0]


def _cautious_adam_oracle(params, steps, lr, wd, decoupled, beta1=0.9, beta2=0.999, eps=1e-8):
    """Cautious Adam(W) as the paper's reference code writes it: mask the first moment by its
    agreement with the gradient, rescale by numel / (kept + 1)."""
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    for t in range(1, steps + 1):
        for p, (m, v) in zip(params, moments):
            g = _grad(t, p)
            if decoupled:
                p.mul_(1 - lr * wd)
            else:
                g = g + wd * p
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            keep = (m * g > 0).to(p.dtype)
            keep *= keep.numel() / (keep.sum() + 1)
            denom = v.sqrt() / (1 - beta2**t) ** 0.5 + eps
            p.addcdiv_(m * keep, denom, value=-lr / (1 - beta1**t))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls,decoupled", [("Adam", False), ("AdamW", True)])
def test_make_cautious_adam_matches_the_authors_formula(backend, cls, decoupled):
    expected = make_params(torch.float64)
    params = [p.detach().clone().requires_grad_() for p in expected]
    with torch.no_grad():
        _cautious_adam_oracle(expected, 15, lr=1e-2, wd=0.1, decoupled=decoupled)
    opt = make_cautious(getattr(ts_optim, cls)(params, lr=1e-2, weight_decay=0.1))
    with use(backend):
        for t in range(1, 16):
            for p in params:
                p.grad = _grad(t, p)
            opt.step()
    for p, q in zip(params, expected):
        torch.testing.assert_close(p.detach(), q, **F64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ademamix_masks_the_whole_step(backend):
    """Deliberate difference: the slow term is masked along with the fast one (pytorch-optimizer
    masks m / (1 - beta1^t) only, then adds alpha * slow unmasked)."""
    import pytorch_optimizer

    ours_p, theirs_p = make_params(torch.float64), make_params(torch.float64)
    ours = ts_optim.AdEMAMix(ours_p, lr=1e-2, alpha=5.0, betas=(0.9, 0.999, 0.99), cautious=True)
    theirs = pytorch_optimizer.AdEMAMix(theirs_p, lr=1e-2, alpha=5.0, betas=(0.9, 0.999, 0.99), cautious=True,
                                        foreach=False)
    for t in range(1, 9):
        before = [(p.detach().clone(), {k: v.clone() for k, v in ours.state[p].items()}) for p in ours_p]
        for p, q in zip(ours_p, theirs_p):
            p.grad, q.grad = _grad(t, p), _grad(t, q)
        with use(backend):
            ours.step()
        theirs.step()
        for p, (p0, s) in zip(ours_p, before):
            g = _grad(t, p)
            m = s.get("exp_avg", torch.zeros_like(p)).lerp(g, 0.1)
            v = s.get("exp_avg_sq", torch.zeros_like(p)) * 0.999 + 0.001 * g * g
            slow = s.get("exp_avg_slow", torch.zeros_like(p)).lerp(g, 0.01)
            mixed = m / (1 - 0.9**t) + 5.0 * slow
            keep = (mixed * g > 0).to(p.dtype)
            keep *= keep.numel() / (keep.sum() + 1)
            expected = p0 - 1e-2 * mixed * keep / (v.sqrt() / (1 - 0.999**t) ** 0.5 + 1e-8)
            torch.testing.assert_close(p.detach(), expected, **F64)
    assert any(not torch.allclose(p, q) for p, q in zip(ours_p, theirs_p))


@pytest.mark.parametrize("backend", BACKENDS)
def test_increments_too_small_for_the_parameter_still_count(backend):
    """The stage captures each increment exactly (the parameter is zeroed while the algorithm
    runs): a component that cannot move a large float32 weight still counts as agreeing, as in
    the formula, so the other components' rescaling is 2/3, not 2/2."""
    p = torch.tensor([1e4, 1e-3], requires_grad=True)
    opt = ts_optim.Lion([p], lr=1e-4, cautious=True)
    p.grad = torch.tensor([0.5, -0.5])
    with use(backend):
        opt.step()
    assert p[0].item() == 1e4
    torch.testing.assert_close(p[1], torch.tensor(1e-3 + 1e-4 * 2 / 3), rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls,kwargs", [("Lion", dict(lr=1e-3, weight_decay=0.1)),
                                        ("Adan", dict(lr=1e-2, weight_decay=0.05, max_grad_norm=1.0)),
                                        ("AdaBelief", dict(decoupled_weight_decay=False, weight_decay=0.1)),
                                        ("ADOPT", dict(maximize=True))])
def test_grad_scale_and_untouched_gradients(backend, cls, kwargs):
    """With GradScaler's grad_scale the step equals the unscaled one, and ``p.grad`` is the same
    tensor with the same values afterwards."""
    plain, scaled = make_params(torch.float64), make_params(torch.float64)
    a = getattr(ts_optim, cls)(plain, cautious=True, **kwargs)
    b = getattr(ts_optim, cls)(scaled, cautious=True, **kwargs)
    for t in range(1, 6):
        grads = [_grad(t, p) for p in plain]
        for p, q, g in zip(plain, scaled, grads):
            p.grad, q.grad = g.clone(), g * 1024.0
        held = [q.grad for q in scaled]
        b.grad_scale, b.found_inf = torch.tensor(1024.0), torch.tensor(0.0)
        with use(backend):
            a.step()
            b.step()
        assert all(q.grad is h for q, h in zip(scaled, held))
        for p, g in zip(plain, grads):
            assert torch.equal(p.grad, g)
    for p, q in zip(plain, scaled):
        torch.testing.assert_close(p, q, **F64)


def test_refusals():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(TypeError, match="make_cautious needs a torchstep optimizer.*LBFGS is not one"):
        make_cautious(ts_optim.LBFGS([p]))
    with pytest.raises(TypeError, match="ASGD is not one"):
        make_cautious(ts_optim.ASGD([p]))
    opt = ts_optim.ASGD([{"params": [p], "cautious": True}])
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="ASGD cannot take cautious updates"):
        opt.step()
    q = torch.zeros(3, requires_grad=True)
    opt = ts_optim.Adam([q], differentiable=True)
    make_cautious(opt)
    q.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="cautious updates do not support differentiable=True"):
        opt.step()
    e = torch.zeros(4, 2, requires_grad=True)
    e.grad = torch.sparse_coo_tensor([[0]], torch.ones(1, 2), (4, 2))
    with pytest.raises(RuntimeError, match="cautious updates need dense gradients"):
        make_cautious(ts_optim.SGD([e], lr=0.1)).step()


def test_cautious_survives_state_dict_and_later_groups():
    params = make_params(torch.float64)
    opt = make_cautious(ts_optim.SGD(params[:2], lr=0.1, momentum=0.9))
    opt.add_param_group({"params": params[2:]})
    assert all(group["cautious"] for group in opt.param_groups)
    fresh = ts_optim.SGD([{"params": params[:2]}, {"params": params[2:]}], lr=0.1, momentum=0.9)
    fresh.load_state_dict(opt.state_dict())
    assert all(group["cautious"] for group in fresh.param_groups)
