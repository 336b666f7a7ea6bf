"""The fused kernel on DTensor shards (FSDP2, tensor parallel): element-wise math on a
parameter's shard, its gradient's and its state's is the math on the whole tensor, so the kernel
runs on each rank's shards. Two ranks (gloo, loopback) run ``shard_cases.py`` once, in a process
of their own with a timeout; each test reads its case."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "results.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(HERE / "shard_cases.py"), str(_free_port()), str(out)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", ["adam", "sgd_momentum"])
def test_fsdp2_runs_one_fused_launch_per_step_and_matches_torch(results, case):
    r = results[case]
    assert r["diff"] <= 1e-6, r
    assert r["warnings"] == [], r
    assert r["launches"] == [4] * 4, r  # one call per step (4 steps), over rank 0's 4 shards


def test_state_is_dtensors_beside_a_plain_step_count(results):
    assert results["adam"]["state_types"] == ["DTensor", "Tensor"]


def test_dtensor_and_plain_parameters_never_share_a_launch(results):
    r = results["adamw_mixed"]
    assert r["diff"] <= 1e-6, r
    assert r["warnings"] == [], r
    assert len(r["launches"]) == 8, r  # two calls per step: the sharded layer's, the plain layer's


def test_a_swapped_shard_rebuilds_the_plan(results):
    r = results["adam_swapped_shard"]
    assert r["diff"] <= 1e-6, r
    assert r["warnings"] == [], r


def test_tensor_parallel_placements_each_get_their_launch(results):
    r = results["tp_adam"]
    assert r["diff"] <= 1e-5, r
    assert r["warnings"] == [], r
    assert len(r["placements"]) >= 2, r
    assert len(r["launches"]) >= 4 * 2, r


def test_partial_gradient_takes_the_reference_path(results):
    r = results["partial_gradient"]
    assert r["diff"] <= 1e-6, r
    assert r["launches"] == [], r
    assert any("DTensor" in w for w in r["warnings"]), r


def test_lamb_norms_of_all_shards_are_reduced_together(results):
    """LAMB needs two whole-tensor norms per parameter: with 4 DTensor parameters that is 8
    reductions one by one; completed together they are one per kind and layout."""
    r = results["lamb_collectives"]
    assert r["diff"] <= 1e-6, r
    assert r["tensors"] == 4, r
    assert 1 <= r["reductions"] <= 2, r
