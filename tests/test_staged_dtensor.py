"""Algorithms that need the whole logical tensor (LAMB and LARS trust ratios, Adafactor's row and
column statistics, Prodigy's global sums, Muon's Newton--Schulz, LBFGS) on DTensor parameters:
FSDP2-sharded (dimension 0, unevenly), tensor-parallel (dimensions 0 and 1, and a replicated
bias) and mixed (some parameters plain) runs equal an unsharded run of the same optimizer.

One job of two gloo ranks on 127.0.0.1 runs every case (``staged_dtensor_worker.py``) for the
whole module; the tests read its records. A hung rank fails the fixture after ``TIMEOUT_S``.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.distributed as dist

import staged_dtensor_worker as job

TIMEOUT_S = 180
RTOL = 1e-5

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

MATCHING = [f"{case[0]}-{layout}" for case in job.CASES if case[0] != "prodigy-sliced" for layout in case[4]]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    import torch.multiprocessing as mp

    path = str(tmp_path_factory.mktemp("staged_dtensor") / "results.json")
    context = mp.start_processes(job.worker, args=(job.WORLD, job.free_port(), path), nprocs=job.WORLD,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"the two-rank job did not finish within {TIMEOUT_S} s (a hung rank?)")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    with open(path) as f:
        return json.load(f)


def _record(records: dict, key: str) -> dict:
    record = records[key]
    assert "error" not in record, f"{key} raised:\n{record.get('trace', record['error'])}"
    return record


@pytest.mark.parametrize("key", MATCHING)
def test_sharded_equals_unsharded(records, key):
    record = _record(records, key)
    assert record["moved"] > 1e-6, "the unsharded run did not move: the comparison would show nothing"
    for index, (ndim, err) in enumerate(record["params"]):
        assert err <= RTOL, f"parameter {index} ({ndim}-D, {record['placements'][index]}): relative error {err:.3g}"
    for name, err in record["state"].items():
        assert err <= RTOL, f"state {name!r}: relative error {err:.3g}"


@pytest.mark.parametrize("layout", ["fsdp", "tp", "mixed"])
def test_cases_have_dtensor_parameters(records, layout):
    """The layouts are what they claim: dimension 0 sharded under FSDP2, dimension 1 too under
    tensor parallel, plain parameters beside sharded ones in the mixed one."""
    placements = [pl for key in MATCHING if key.endswith(f"-{layout}") for pl in records[key].get("placements", [])]
    assert "(Shard(dim=0),)" in placements
    if layout == "tp":
        assert "(Shard(dim=1),)" in placements and "(Replicate(),)" in placements
    if layout == "mixed":
        assert "None" in placements


def test_adafactor_batched_matrices(records):
    """A 3-D parameter sharded along its batch dimension: both factors stay sharded with it."""
    record = _record(records, "adafactor-batched-fsdp")
    assert record["params"][0][0] == 3 and record["params"][0][1] <= RTOL
    assert record["state_placements"][0] == {"row_var": "(Shard(dim=0),)", "col_var": "(Shard(dim=0),)"}


@pytest.mark.parametrize("layout", ["fsdp", "tp"])
def test_adafactor_factored_and_vector(records, layout):
    """Matrices (factored: row and column statistics reduced over the sharded dimension) and
    vectors (a full second moment) both match; the factors keep the matrix's sharding along the
    dimension they do not reduce."""
    record = _record(records, f"adafactor-{layout}")
    assert {ndim for ndim, _ in record["params"]} == {1, 2}
    assert set(record["state"]) == {"row_var", "col_var", "variance"}
    for ndim, err in record["params"]:
        assert err <= RTOL, f"{ndim}-D parameter: relative error {err:.3g}"
    for placements, state in zip(record["placements"], record["state_placements"]):
        if "row_var" not in state:
            continue
        if placements == "(Shard(dim=0),)":  # rows sharded: each rank holds its rows' statistics
            assert (state["row_var"], state["col_var"]) == ("(Shard(dim=0),)", "(Replicate(),)")
        elif placements == "(Shard(dim=1),)":
            assert (state["row_var"], state["col_var"]) == ("(Replicate(),)", "(Shard(dim=1),)")


@pytest.mark.parametrize("layout", ["fsdp", "tp", "mixed"])
def test_prodigy_distance_estimate(records, layout):
    """Prodigy's d, a sum over every element of every tensor, equals the unsharded run's."""
    mine, reference = _record(records, f"prodigy-{layout}")["d"]
    assert reference > 1e-6, "d did not grow from d0: the comparison would show nothing"
    assert mine == pytest.approx(reference, rel=1e-9)


@pytest.mark.parametrize("key", [k for k in MATCHING if not k.startswith("lbfgs")])
def test_state_laid_out_as_parameter(records, key):
    """Parameter-shaped state is a DTensor with its parameter's placements (Adafactor's factors:
    ``test_adafactor_factored_and_vector``)."""
    record = _record(records, key)
    for placements, state in zip(record["placements"], record["state_placements"]):
        if placements == "None":
            assert state == {}
            continue
        shaped = {n: v for n, v in state.items() if n not in ("row_var", "col_var")}
        assert shaped or "row_var" in state, (placements, state)
        assert all(v == placements for v in shaped.values()), (placements, state)


def test_prodigy_sliced_refused(records):
    error = records["prodigy-sliced-fsdp"].get("error", "")
    assert error.startswith("ValueError") and "slice_p=2" in error and "DTensor" in error
