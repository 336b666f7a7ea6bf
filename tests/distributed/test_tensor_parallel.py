"""Tensor parallel == the unsharded run, for every optimizer of the registry.

``tp``: ``parallelize_module`` with ``ColwiseParallel`` then ``RowwiseParallel`` on an
8 -> 16 -> 5 MLP, a 1-D mesh of 2 ranks (placements Shard(0), Shard(1) and Replicate: the
rowwise bias). torch's plans need even shards here (an 8 -> 15 -> 5 MLP fails in torch's own
forward), so this model is even.

``fsdp_tp``: 4 ranks, a 2 x 2 ("dp", "tp") mesh: the first two Linears tensor-parallel on "tp"
and FSDP2-sharded on "dp" (2-D placements, a _StridedShard among them), the last Linear (5 -> 1)
FSDP2-only: DTensors on the 1-D "dp" mesh in the same parameter group, one of them an empty
shard.
"""

from __future__ import annotations

import pytest

from .checks import assert_same_params, assert_same_state, layout_problems, lbfgs_refused_clearly, require_ok, tol_for
from .conftest import NAMES, NOT_RUN

TP = list(NAMES)


def _case(results: dict, setup: str, name: str) -> dict | None:
    """The case, or None where the test has nothing more to check (LBFGS's clear error)."""
    if name in NOT_RUN.get(setup, {}):
        pytest.skip(NOT_RUN[setup][name])
    case = results[(setup, name)]
    if name == "LBFGS" and lbfgs_refused_clearly(case, setup):
        return None
    require_ok(case, f"{name} on {setup}")
    return case


@pytest.fixture(params=["tp", "fsdp_tp"])
def setup_results(request, two_ranks):
    if request.param == "tp":
        return "tp", two_ranks["matrix"]
    return "fsdp_tp", request.getfixturevalue("four_ranks")


@pytest.mark.parametrize("name", TP)
def test_parallel_run_equals_unsharded(setup_results, name):
    setup, results = setup_results
    case = _case(results, setup, name)
    if case is not None:
        assert_same_params(case["sharded"], case["ref"], tol_for(name), f"{name} on {setup}")


# Tensor parallel sums the forward's products in another order than one device does, so the
# gradients differ from the unsharded run's in the last bits (FSDP2's do not). Centered RMSprop's
# momentum divides by sqrt(E[g^2] - E[g]^2), which turns those bits into ~4e-6 absolute on this
# model -- on the reference path as on the fused one -- while its parameters stay within the table.
_TP_STATE_ATOL = {"RMSprop": 1e-5}


@pytest.mark.parametrize("name", TP)
def test_parallel_state_equals_unsharded(setup_results, name):
    setup, results = setup_results
    case = _case(results, setup, name)
    if case is not None:
        tol = dict(tol_for(name))
        tol["atol"] = max(tol["atol"], _TP_STATE_ATOL.get(name, 0.0))
        assert_same_state(case["sharded"], case["ref"], tol, f"{name} on {setup}")


@pytest.mark.parametrize("name", TP)
def test_parallel_state_layout_follows_parameters(setup_results, name):
    setup, results = setup_results
    case = _case(results, setup, name)
    if case is None:
        return
    problems = layout_problems(case["sharded"], case["ref"])
    assert not problems, f"{name} on {setup}:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_torch_optim_on_the_same_plans(setup_results, name):
    """The plans themselves are exact: torch.optim on them == unsharded, state laid out as the
    parameters (so a torchstep failure here is torchstep's)."""
    setup, results = setup_results
    case = _case(results, setup, f"torch.{name}")
    assert_same_params(case["sharded"], case["ref"], tol_for(name), f"torch.optim.{name} on {setup}")
    assert layout_problems(case["sharded"], case["ref"]) == []
    placements = {p["placements"] for p in case["sharded"]["param_layout"].values()}
    assert len(placements) >= 3, placements  # the plans shard more than one way


def test_fsdp_tp_mixes_meshes_in_one_group(four_ranks):
    """The 2-D setup really puts DTensors of two meshes in one parameter group."""
    case = four_ranks[("fsdp_tp", "torch.Adam")]
    require_ok(case, "torch.optim.Adam on fsdp_tp")
    meshes = {p["mesh"] for p in case["sharded"]["param_layout"].values()}
    assert {m[1] for m in meshes} == {(2, 2), (2,)}, meshes
