"""Parity with torch.optim 2.13: every registry row, two groups, float32 and float64, 25 steps."""

import pytest
import torch

from helpers import assert_same_trajectory, build, groups_for, make_params, set_grads, twin
from registry import CASES, TOLERANCE
from torchstep.backends import use

STEPS = 25


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_torch(case, dtype, backend):
    with use(backend):
        _run_against_torch(case, dtype)


def _run_against_torch(case, dtype):
    ref = make_params(dtype)
    mine = twin(ref)
    torch_opt = build(case.algo, groups_for(ref, case.group2), case.torch_kwargs or case.kwargs, "torch")
    ts_opt = build(case.algo, groups_for(mine, case.group2), case.kwargs, "torchstep")
    for step in range(STEPS):
        set_grads(step, list(zip(ref, mine)))
        torch_opt.step()
        ts_opt.step()
    assert_same_trajectory(torch_opt, ts_opt, ref, mine, **TOLERANCE[dtype])
    # the groups' options are the same, key for key (so state_dicts interchange)
    for tg, sg in zip(torch_opt.param_groups, ts_opt.param_groups):
        assert set(tg) == set(sg)


@pytest.mark.parametrize("algo", ["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "RMSprop", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop"])
def test_complex_params_match_torch(algo):
    from registry import REPRESENTATIVE

    gen = torch.Generator().manual_seed(3)
    ref = [torch.randn(4, 3, dtype=torch.complex64, generator=gen).requires_grad_()]
    mine = twin(ref)
    kwargs = REPRESENTATIVE[algo]
    torch_opt, ts_opt = build(algo, ref, kwargs, "torch"), build(algo, mine, kwargs, "torchstep")
    for step in range(20):
        g = torch.randn(4, 3, dtype=torch.complex64, generator=gen)
        ref[0].grad, mine[0].grad = g.clone(), g.clone()
        torch_opt.step()
        ts_opt.step()
    assert_same_trajectory(torch_opt, ts_opt, ref, mine, **TOLERANCE[torch.float32])


def test_registry_covers_every_constructor_option():
    """Each keyword of each torch constructor appears in at least one registry row."""
    import inspect

    for algo in ["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "RMSprop", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop"]:
        names = set(inspect.signature(getattr(torch.optim, algo)).parameters) - {"params", "differentiable"}
        covered = set().union(*(c.kwargs for c in CASES if c.algo == algo))
        # differentiable has its own test module (it needs non-leaf parameters)
        assert names <= covered, (algo, names - covered)
