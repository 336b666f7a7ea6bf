"""Lion, Adan, AdaBelief, ADOPT, AdEMAMix beyond the registry's parity rows (tests/test_parity.py,
both backends) and argument errors (tests/test_errors.py): state_dict round trips (and
interchange with the authors' packages where layouts agree), maximize, the authors' defaults,
sparse and complex tensors, bench coverage."""

from __future__ import annotations

import io

import pytest
import torch

import torchstep.optim as ts_optim

from helpers import clone_hyper, grads_at, groups_for, make_params, run_steps
from registry import ROWS, TOLERANCE, adabelief_reference, lion_reference

F64 = TOLERANCE[torch.float64]


def _ours(row, params):
    return getattr(ts_optim, row.algo)(groups_for(params, row.group2), **clone_hyper(row.kwargs))


@pytest.mark.parametrize("row", ROWS[::3], ids=lambda r: r.id)
def test_state_dict_round_trip_mid_training(row):
    """Save after 10 steps (through torch.save), load into a fresh optimizer, continue: the same
    trajectory as never stopping."""
    straight = make_params(torch.float64)
    opt = _ours(row, straight)
    run_steps(opt, straight, range(20), skipping=True)

    resumed = make_params(torch.float64)
    first = _ours(row, resumed)
    run_steps(first, resumed, range(10), skipping=True)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = _ours(row, resumed)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    assert second.state_dict()["param_groups"] == first.state_dict()["param_groups"]
    run_steps(second, resumed, range(10, 20), skipping=True)
    for a, b in zip(straight, resumed):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        for key, value in opt.state[a].items():
            torch.testing.assert_close(second.state[b][key], value, rtol=0, atol=0)


def _interchange(build_ours, build_theirs, dtype=torch.float64, both_ways=True):
    """Train 8 steps on one side, move the state_dict across, train 8 more: the same as training
    16 steps on the receiving side alone (theirs to ours, and ours to theirs if ``both_ways``)."""
    for first, second in ((build_theirs, build_ours), (build_ours, build_theirs))[:2 if both_ways else 1]:
        straight = make_params(dtype)
        whole = second(straight)
        run_steps(whole, straight, range(16), skipping=False)
        moved = make_params(dtype)
        a = first(moved)
        run_steps(a, moved, range(8), skipping=False)
        b = second(moved)
        b.load_state_dict(a.state_dict())
        run_steps(b, moved, range(8, 16), skipping=False)
        for x, y in zip(straight, moved):
            torch.testing.assert_close(y, x, **F64)


def test_lion_state_dict_interchanges_with_lion_pytorch():
    kwargs = dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    _interchange(lambda ps: ts_optim.Lion(ps, **kwargs), lambda ps: lion_reference([{"params": ps}], kwargs))


def test_adabelief_loads_the_authors_checkpoints():
    """One way only: adabelief-pytorch needs a cache of its own (``buffer``) in every param group,
    which a checkpoint from elsewhere lacks."""
    kwargs = dict(lr=1e-2, weight_decay=0.1)
    _interchange(lambda ps: ts_optim.AdaBelief(ps, **kwargs), lambda ps: adabelief_reference([{"params": ps}], kwargs),
                 both_ways=False)


def test_adan_loads_a_checkpoint_that_counts_steps_per_group():
    """The authors' Adan keeps ``step`` in the param group; loading gives it to each parameter."""
    params = make_params(torch.float64)
    opt = ts_optim.Adan(params, lr=1e-2)
    run_steps(opt, params, range(6), skipping=False)
    saved = opt.state_dict()
    for state in saved["state"].values():
        del state["step"]
    saved["param_groups"][0]["step"] = 6
    fresh = ts_optim.Adan(params, lr=1e-2)
    fresh.load_state_dict(saved)
    assert all(fresh.state[p]["step"].item() == 6.0 for p in params)


@pytest.mark.parametrize("cls,kwargs", [
    ("Lion", dict(lr=1e-3, weight_decay=0.1)), ("Adan", dict(lr=1e-2, weight_decay=0.05)),
    ("AdaBelief", dict(lr=1e-2, decoupled_weight_decay=False, weight_decay=0.1)),
    ("ADOPT", dict(weight_decay=0.1)), ("AdEMAMix", dict(weight_decay=0.1)),
])
def test_maximize_is_minimizing_the_negated_objective(cls, kwargs):
    up, down = make_params(torch.float64), make_params(torch.float64)
    a = getattr(ts_optim, cls)(up, maximize=True, **kwargs)
    b = getattr(ts_optim, cls)(down, **kwargs)
    for step in range(12):
        for p, q, g in zip(up, down, grads_at(step, up, skipping=False)):
            p.grad, q.grad = g.clone(), -g
        a.step()
        b.step()
    for p, q in zip(up, down):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_defaults_are_the_authors():
    import inspect

    expected = {
        "Lion": dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0),
        "Adan": dict(lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.0, max_grad_norm=0.0, no_prox=False),
        "AdaBelief": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0, amsgrad=False,
                          decoupled_weight_decay=True, rectify=True, degenerated_to_sgd=True),
        "ADOPT": dict(lr=1e-3, betas=(0.9, 0.9999), eps=1e-6, weight_decay=0.0, decoupled_weight_decay=False),
        "AdEMAMix": dict(lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=2.0, beta3_warmup=None, alpha_warmup=None,
                         eps=1e-8, weight_decay=0.0),
    }
    for cls, defaults in expected.items():
        signature = inspect.signature(getattr(ts_optim, cls))
        assert {k: signature.parameters[k].default for k in defaults} == defaults, cls
        assert signature.parameters["cautious"].default is False


@pytest.mark.parametrize("cls", ["Lion", "Adan", "AdaBelief", "ADOPT", "AdEMAMix"])
def test_sparse_gradients_are_rejected(cls):
    p = torch.zeros(4, 2, requires_grad=True)
    p.grad = torch.sparse_coo_tensor([[0]], torch.ones(1, 2), (4, 2))
    with pytest.raises(RuntimeError, match=f"{cls} does not support sparse gradients"):
        getattr(ts_optim, cls)([p]).step()


def test_complex_parameters_move_as_pairs_of_reals():
    for cls in ["Lion", "Adan", "AdaBelief", "ADOPT", "AdEMAMix"]:
        z = torch.randn(3, 2, dtype=torch.complex128, requires_grad=True)
        r = torch.view_as_real(z.detach()).clone().requires_grad_()
        a, b = getattr(ts_optim, cls)([z], lr=1e-2), getattr(ts_optim, cls)([r], lr=1e-2)
        for step in range(6):
            g = torch.randn(3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
            z.grad, r.grad = torch.view_as_complex(g.clone()), g.clone()
            a.step()
            b.step()
        torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), **F64)


def test_bench_covers_the_modern_algorithms():
    """``torchstep bench`` times them; torch.optim has none, so its columns read "-"."""
    from torchstep.bench import ALGORITHMS, format_table, run_steps, set_bounds

    assert {"Lion", "Adan", "AdaBelief", "ADOPT", "AdEMAMix"} <= {cls for cls, *_ in ALGORITHMS.values()}
    samples = []
    rows = run_steps(["lion_cautious", "adam"], {"2x1k": (2, 1000)}, samples, repeat=1)
    assert len(samples) == 2 and all(s > 0 for s in samples)
    set_bounds(rows, 1e10)
    assert set(rows[0].times_ms) == {"torchstep"} and "torch for-loop" in rows[1].times_ms
    table = format_table(rows, 1e10, {})
    assert "| lion_cautious | 2x1k |" in table and "| - | - | - |" in table
