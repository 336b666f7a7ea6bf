"""FSDP2 (``fully_shard``) on 2 ranks == the unsharded run, for every optimizer of the registry.

Setups (tests/distributed/jobs.py): ``fsdp`` (every Linear and the root sharded on a 1-D mesh),
``offload`` (the same with ``CPUOffloadPolicy(pin_memory=False)``), ``mixed`` (the root sharded
with the last Linear's parameters ignored: DTensor and plain parameters in one group). The model
(8 -> 16 -> 5 -> 1) shards unevenly (5 rows: 3 + 2) and leaves rank 1 an empty shard of the last
layer. Each case trains both runs for ``jobs.STEPS`` steps on the same batches; the sharded
parameters and state are gathered with ``full_tensor()``.
"""

from __future__ import annotations

import pytest

from .checks import assert_same_params, assert_same_state, layout_problems, lbfgs_refused_clearly, require_ok, tol_for
from .conftest import NAMES, NOT_RUN

SETUPS = ("fsdp", "offload", "mixed")
CASES = [(setup, name) for setup in SETUPS for name in NAMES]


def _case(two_ranks: dict, setup: str, name: str) -> dict | None:
    """The case, or None where the test has nothing more to check (LBFGS's clear error)."""
    if name in NOT_RUN.get(setup, {}):
        pytest.skip(NOT_RUN[setup][name])
    case = two_ranks["matrix"][(setup, name)]
    if name == "SparseAdam" and case["error"]:
        torch_case = two_ranks["matrix"][("fsdp", "torch.SparseAdam")]
        if torch_case["error"] and torch_case["error"].splitlines()[0] == case["error"].splitlines()[0]:
            pytest.skip("FSDP2 cannot reduce-scatter sparse gradients: torch.optim.SparseAdam fails the same way, "
                        f"before any optimizer runs: {torch_case['error'].splitlines()[0][:160]}")
    if name == "LBFGS" and lbfgs_refused_clearly(case, setup):
        return None
    require_ok(case, f"{name} on {setup}")
    return case


@pytest.mark.parametrize(("setup", "name"), CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_sharded_run_equals_unsharded(two_ranks, setup, name):
    case = _case(two_ranks, setup, name)
    if case is None:
        return
    assert_same_params(case["sharded"], case["ref"], tol_for(name), f"{name} on {setup}")


@pytest.mark.parametrize(("setup", "name"), CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_sharded_state_equals_unsharded(two_ranks, setup, name):
    case = _case(two_ranks, setup, name)
    if case is None:
        return
    assert_same_state(case["sharded"], case["ref"], tol_for(name), f"{name} on {setup}")


@pytest.mark.parametrize(("setup", "name"), CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_state_layout_follows_parameters(two_ranks, setup, name):
    case = _case(two_ranks, setup, name)
    if case is None:
        return
    problems = layout_problems(case["sharded"], case["ref"])
    assert not problems, f"{name} on {setup}:\n" + "\n".join(problems)


def test_torch_optim_keeps_the_layout_these_tests_expect(two_ranks):
    """The convention the layout test holds torchstep to is torch.optim's: Adam's moments are
    DTensors with the parameter's mesh and placements, its ``step`` a plain 0-d tensor; and the
    harness's comparison holds for torch itself."""
    case = two_ranks["matrix"][("fsdp", "torch.Adam")]
    require_ok(case, "torch.optim.Adam on fsdp")
    snap = case["sharded"]
    for name, state in snap["state_layout"].items():
        param = snap["param_layout"][name]
        assert param["kind"] == "DTensor"
        for key in ("exp_avg", "exp_avg_sq"):
            assert state[key]["kind"] == "DTensor" and state[key]["placements"] == param["placements"], (name, key)
        assert state["step"] == dict(kind="Tensor", shape=(), dtype="torch.float32"), (name, state["step"])
    assert layout_problems(snap, case["ref"]) == []
    assert_same_params(snap, case["ref"], tol_for("Adam"), "torch.optim.Adam on fsdp")


def test_offloaded_adamw_equals_torch_optim(two_ranks):
    """FSDP2 with CPU offload: torchstep's AdamW == torch.optim.AdamW on the same setup."""
    ours, theirs = two_ranks["matrix"][("offload", "AdamW")], two_ranks["matrix"][("offload", "torch.AdamW")]
    require_ok(ours, "torchstep AdamW on offload")
    require_ok(theirs, "torch.optim.AdamW on offload")
    assert ours["ref"]["params"].keys() == theirs["ref"]["params"].keys()
    assert_same_params(ours["sharded"], theirs["sharded"], tol_for("AdamW"), "AdamW (torchstep vs torch.optim) on offload")
    assert_same_state(ours["sharded"], theirs["sharded"], tol_for("AdamW"), "AdamW (torchstep vs torch.optim) on offload")
