"""torch.distributed.checkpoint: save FSDP2 model + optimizer state on 2 ranks, load it on 2 ranks
and on 1 (an unsharded model in this test process, DCP without a process group), continue ==
the uninterrupted run.

State goes through ``get_state_dict`` / ``set_state_dict`` (which first build the optimizer's
state with a zero-gradient, zero-lr step) and ``dcp.save`` / ``dcp.load``. The sharded run saves
after ``jobs.SAVE_AT`` steps; both reloaded copies start from other initial weights.
"""

from __future__ import annotations

import os

import pytest

from . import jobs
from .checks import assert_same_params, assert_same_state, layout_problems, require_ok, tol_for
from .conftest import DCP_NAMES, spec


def _case(two_ranks: dict, name: str) -> dict:
    case = two_ranks["dcp"][name]
    require_ok(case, f"{name}: FSDP2 + DCP on 2 ranks")
    return case


@pytest.mark.parametrize("name", DCP_NAMES)
def test_load_on_two_ranks_restores_the_saved_state(two_ranks, name):
    case = _case(two_ranks, name)
    tol = tol_for(name)
    assert_same_params(case["loaded"], case["saved"], tol, f"{name} loaded on 2 ranks")
    assert_same_state(case["loaded"], case["saved"], tol, f"{name} loaded on 2 ranks")
    problems = layout_problems(case["loaded"], case["saved"])
    assert not problems, f"{name} loaded on 2 ranks:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", DCP_NAMES)
def test_resume_on_two_ranks_equals_uninterrupted(two_ranks, name):
    case = _case(two_ranks, name)
    tol = tol_for(name)
    assert_same_params(case["resumed"], case["uninterrupted"], tol, f"{name} resumed on 2 ranks")
    assert_same_state(case["resumed"], case["uninterrupted"], tol, f"{name} resumed on 2 ranks")


@pytest.mark.parametrize("name", DCP_NAMES)
def test_resume_on_one_process_equals_uninterrupted(two_ranks, ckpt_root, name):
    case = _case(two_ranks, name)
    tol = tol_for(name)
    one = jobs.load_on_one_process(spec(name), os.path.join(ckpt_root, name))
    # loaded unsharded: the saved values, as plain tensors
    assert_same_params(one["loaded"], case["saved"], tol, f"{name} loaded on 1 process")
    assert_same_state(one["loaded"], case["saved"], tol, f"{name} loaded on 1 process")
    kinds = {v["kind"] for st in one["loaded"]["state_layout"].values() for v in st.values()}
    assert "DTensor" not in kinds
    assert_same_params(one["resumed"], case["uninterrupted"], tol, f"{name} resumed on 1 process")
    assert_same_state(one["resumed"], case["uninterrupted"], tol, f"{name} resumed on 1 process")
