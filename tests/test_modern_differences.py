"""Where the modern algorithms deliberately differ from their references, each shown against the
reference and checked against the formula; and behaviour the references do not have (gradients
left untouched, ADOPT's clip function kept on the object)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import torchstep.optim as ts_optim
from torchstep.algorithms.ademamix import alpha_at, beta3_at

from helpers import grads_at, make_params, run_steps
from registry import TOLERANCE, adabelief_reference

F64 = TOLERANCE[torch.float64]

STEPS = 25


def test_gradients_are_left_untouched():
    """Adan's clipping, AdaBelief's L2 decay and maximize never write into ``p.grad`` (the
    authors' Adan and AdaBelief do)."""
    for cls, kwargs in [("Adan", dict(max_grad_norm=0.1, maximize=True)),
                        ("AdaBelief", dict(decoupled_weight_decay=False, weight_decay=0.5))]:
        params = make_params(torch.float64)
        opt = getattr(ts_optim, cls)(params, **kwargs)
        grads = grads_at(0, params, skipping=False)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for p, g in zip(params, grads):
            assert torch.equal(p.grad, g)


def test_adan_maximize_starts_from_a_zero_gradient_difference():
    """Deliberate difference: pytorch-optimizer's Adan seeds the previous gradient before negating
    for maximize, so its first difference is -2g. Ours is zero, as without maximize: maximizing
    with g is minimizing with -g."""
    import pytorch_optimizer

    g = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    p, q, r = (torch.ones(3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    theirs = pytorch_optimizer.Adan([p], maximize=True, foreach=False)
    ours, negated = ts_optim.Adan([q], maximize=True), pytorch_optimizer.Adan([r], foreach=False)
    p.grad, q.grad, r.grad = g.clone(), g.clone(), -g
    for opt in (theirs, ours, negated):
        opt.step()
    torch.testing.assert_close(theirs.state[p]["exp_avg_diff"], (1 - 0.92) * -2 * g)
    assert torch.equal(ours.state[q]["exp_avg_diff"], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(q, r, **F64)


def test_adabelief_amsgrad_with_rectification_divides_by_the_running_max():
    """Deliberate difference: adabelief-pytorch keeps max_exp_avg_var but its rectified step
    divides by exp_avg_var, so there amsgrad changes nothing while rectify=True."""
    results = {}
    for amsgrad in (False, True):
        theirs, mine = make_params(torch.float64), make_params(torch.float64)
        ref = adabelief_reference([{"params": theirs}], dict(amsgrad=amsgrad, lr=1e-2))
        ours = ts_optim.AdaBelief(mine, amsgrad=amsgrad, lr=1e-2)
        run_steps(ref, theirs, range(STEPS), skipping=False)
        run_steps(ours, mine, range(STEPS), skipping=False)
        results[amsgrad] = (theirs, mine, ours)
    for a, b in zip(results[False][0], results[True][0]):  # the package: amsgrad had no effect
        assert torch.equal(a, b)
    # ours: one more step from the saved state is the rectified step with max_exp_avg_var
    _, mine, ours = results[True]
    before = [(p.detach().clone(), {k: v.clone() for k, v in ours.state[p].items()}) for p in mine]
    run_steps(ours, mine, range(STEPS, STEPS + 1), skipping=False)
    beta1, beta2 = 0.9, 0.999
    t = STEPS + 1
    rho_inf = 2 / (1 - beta2) - 1
    rho = rho_inf - 2 * t * beta2**t / (1 - beta2**t)
    r = math.sqrt((1 - beta2**t) * (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
    for p, g, (p0, s0) in zip(mine, grads_at(STEPS, mine, skipping=False), before):
        m = beta1 * s0["exp_avg"] + (1 - beta1) * g
        var = beta2 * s0["exp_avg_var"] + (1 - beta2) * (g - m) ** 2 + 1e-16
        top = torch.maximum(s0["max_exp_avg_var"], var)
        expected = p0 - 1e-2 * r / (1 - beta1**t) * m / (top.sqrt() + 1e-16)
        torch.testing.assert_close(p.detach(), expected, **F64)
    assert any(not torch.equal(ours.state[p]["max_exp_avg_var"], ours.state[p]["exp_avg_var"]) for p in mine)


def test_ademamix_warmups_follow_the_paper():
    """alpha ramps linearly; beta3's half-life ln(1/2)/ln(beta) moves linearly from beta1's to
    beta3's. The authors' code computes the same with ln(beta + 1e-8): about 1e-6 apart."""
    beta1, beta3, warmup = 0.9, 0.9999, 100
    half_life = lambda b: math.log(0.5) / math.log(b)  # noqa: E731
    for t in (1, 25, 50, 99):
        a = t / warmup
        assert alpha_at(t, 8.0, warmup) == pytest.approx(8.0 * a, rel=1e-15)
        b3 = beta3_at(t, beta1, beta3, warmup)
        assert half_life(b3) == pytest.approx((1 - a) * half_life(beta1) + a * half_life(beta3), rel=1e-10)
        f = lambda b: math.log(0.5) / math.log(b + 1e-8) - 1  # noqa: E731
        authors = math.pow(0.5, 1 / ((1 - a) * f(beta1) + a * f(beta3) + 1))
        assert b3 != authors and b3 == pytest.approx(authors, rel=2e-6)
    assert beta3_at(warmup, beta1, beta3, warmup) == beta3 and alpha_at(warmup, 8.0, warmup) == 8.0
    assert beta3_at(5, beta1, beta3, None) == beta3 and alpha_at(5, 8.0, None) == 8.0
    assert beta3_at(5, 0.0, beta3, 10) == pytest.approx(beta3 ** 2)  # beta1 = 0: the limit of the formula


def test_adopt_first_step_only_seeds_the_second_moment():
    params = make_params(torch.float64)
    start = [p.detach().clone() for p in params]
    opt = ts_optim.ADOPT(params)
    run_steps(opt, params, range(1), skipping=False)
    for p, p0, g in zip(params, start, grads_at(0, params, skipping=False)):
        assert torch.equal(p.detach(), p0)
        assert torch.equal(opt.state[p]["exp_avg_sq"], g * g)
        assert torch.equal(opt.state[p]["exp_avg"], torch.zeros_like(p))


def test_adopt_clip_lambda_survives_load_state_dict_and_deepcopy():
    params = make_params(torch.float64)
    opt = ts_optim.ADOPT(params, clip_lambda=None)
    opt.load_state_dict(opt.state_dict())
    assert opt.clip_lambda is None and copy.deepcopy(opt).clip_lambda is None
    assert ts_optim.ADOPT(params).algorithm is type(opt).algorithm  # the default binds nothing
