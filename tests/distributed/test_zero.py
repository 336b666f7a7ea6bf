"""ZeroRedundancyOptimizer (DDP, plain tensors, 2 ranks) wrapping a torchstep class == the
unsharded optimizer; its consolidated state_dict continues an unsharded run exactly.

ZeRO gives each rank whole parameters, so per-tensor algorithms (Lamb's trust ratio, Adafactor's
factors, Muon's orthogonalisation) stay exact; algorithms with statistics over the whole group
(Prodigy's sums, Adan's ``max_grad_norm`` clipping) would see one rank's share and are not run.
"""

from __future__ import annotations

import pytest

from .checks import assert_tensors_close, require_ok, tol_for
from .conftest import ZERO_NAMES


@pytest.mark.parametrize("name", ZERO_NAMES)
def test_zero_equals_unsharded(two_ranks, name):
    case = two_ranks["zero"][name]
    require_ok(case, f"ZeroRedundancyOptimizer({name})")
    tol = tol_for(name)
    assert_tensors_close(case["params"], case["ref"]["params"], tol, f"ZeRO({name}) params")


@pytest.mark.parametrize("name", ZERO_NAMES)
def test_zero_consolidated_state_continues_unsharded(two_ranks, name):
    case = two_ranks["zero"][name]
    require_ok(case, f"ZeroRedundancyOptimizer({name})")
    tol = tol_for(name)
    ours, ref = case["consolidated"], case["ref_state_dict"]
    assert sorted(ours["state"]) == sorted(ref["state"])
    for i in ref["state"]:
        assert_tensors_close(ours["state"][i], ref["state"][i], tol, f"ZeRO({name}) consolidated state[{i}]")
    assert_tensors_close(case["continued"], case["ref_continued"], tol, f"ZeRO({name}) continued unsharded")
