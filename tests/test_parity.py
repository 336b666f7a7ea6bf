"""Parity with the oracle of every registry row (torch.optim 2.13, or the reference package for
the algorithms torch lacks): two groups, float32 and float64, 25 steps, fused and reference
backends; parameters and state compared after the last step."""

import inspect

import pytest
import torch

from helpers import assert_same_trajectory, clone_hyper, groups_for, make_params, run_steps, twin
from registry import ALGORITHMS, BACKENDS, CASES, IMPL_FLAGS, PARITY_ROWS, REPRESENTATIVE, TOLERANCE, oracle_for, tolerance
from torchstep.backends import use

STEPS = 25


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("row", PARITY_ROWS, ids=[c.id for c in PARITY_ROWS])
def test_matches_oracle(row, dtype, backend):
    algo = ALGORITHMS[row.algo]
    theirs = make_params(dtype, shapes=row.shapes)
    mine = twin(theirs)
    oracle = oracle_for(row)(groups_for(theirs, row.group2), clone_hyper(row.oracle_kwargs))
    ours = algo.cls(groups_for(mine, row.group2), **clone_hyper(row.kwargs))
    with use(backend):
        run_steps(ours, mine, range(STEPS), row.skipping)
    run_steps(oracle, theirs, range(STEPS), row.skipping)
    tol = tolerance(row.algo, dtype, backend, row)
    if algo.state_names is None:
        assert_same_trajectory(oracle, ours, theirs, mine, **tol)
        # the groups' options are the same, key for key (so state_dicts interchange)
        for tg, sg in zip(oracle.param_groups, ours.param_groups):
            assert set(tg) == set(sg)
        return
    for a, b in zip(mine, theirs):  # another package's state: the keys that correspond
        torch.testing.assert_close(a.detach(), b.detach(), **tol)
        for key, ref_key in algo.state_names.items():
            if key in ours.state[a]:
                torch.testing.assert_close(ours.state[a][key], oracle.state[b][ref_key], **tol)
        if "step" in ours.state[a] and "step" in oracle.state[b]:
            assert ours.state[a]["step"].item() == float(oracle.state[b]["step"])


@pytest.mark.parametrize("algo", list(REPRESENTATIVE))
def test_complex_params_match_torch(algo):
    gen = torch.Generator().manual_seed(3)
    ref = [torch.randn(4, 3, dtype=torch.complex64, generator=gen).requires_grad_()]
    mine = twin(ref)
    kwargs = REPRESENTATIVE[algo]
    torch_opt = ALGORITHMS[algo].oracle(ref, clone_hyper(kwargs))
    ts_opt = ALGORITHMS[algo].cls(mine, **clone_hyper(kwargs))
    for step in range(20):
        g = torch.randn(4, 3, dtype=torch.complex64, generator=gen)
        ref[0].grad, mine[0].grad = g.clone(), g.clone()
        torch_opt.step()
        ts_opt.step()
    assert_same_trajectory(torch_opt, ts_opt, ref, mine, **TOLERANCE[torch.float32])


def test_registry_covers_every_constructor_option():
    """Each keyword of each constructor appears in at least one parity row of its algorithm."""
    for name, algo in ALGORITHMS.items():
        if not algo.rows:
            continue
        names = set(inspect.signature(algo.cls).parameters) - {"params", "differentiable"} - set(algo.tested_elsewhere)
        covered = set().union(*(c.kwargs for c in algo.rows), *(c.group2 for c in algo.rows))
        # differentiable has its own test module (it needs non-leaf parameters)
        assert names <= covered, (name, names - covered)


def test_every_flag_value_has_a_row():
    """Rows differing only in foreach / fused / capturable run the same torchstep code, so each
    value the constructor accepts appears once per algorithm (proof that it is accepted and still
    matches torch), instead of being crossed with the whole grid."""
    for name, algo in ALGORITHMS.items():
        if not algo.rows:
            continue
        accepted = IMPL_FLAGS & set(inspect.signature(algo.cls).parameters)
        seen = {(k, c.kwargs[k]) for c in algo.rows for k in accepted if k in c.kwargs}
        assert {(k, True) for k in accepted} <= seen, (name, accepted, seen)
        assert ("foreach", False) in seen, name
        with_flags = [c for c in algo.rows if IMPL_FLAGS & set(c.kwargs)]
        assert len(with_flags) <= len(accepted) + 3, (name, len(with_flags))  # not crossed with the grid


def test_registry_lists_every_optimizer():
    import torchstep.optim as ts_optim

    public = {n for n in ts_optim.__all__ if isinstance(getattr(ts_optim, n), type)
              and issubclass(getattr(ts_optim, n), ts_optim.Optimizer) and n != "Optimizer"}
    assert public == set(ALGORITHMS)
    assert len(CASES) == sum(len(ALGORITHMS[c].rows) for c in {c.algo for c in CASES})
