"""``torchstep bench`` runs end to end on tiny layouts and reports every path and ratio."""

import json
import subprocess
import sys

import pytest

from torchstep.bench import ALGORITHMS, bytes_per_element


def test_bytes_per_element():
    assert bytes_per_element(2) == 28  # Adam: p rw, g r, exp_avg rw, exp_avg_sq rw
    assert bytes_per_element(0) == 12


def test_bench_command_tiny(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "torchstep.cli", "bench", "--algorithms", "adam,rmsprop", "--layouts", "2x50k,20x1k",
         "--repeat", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| adam | 2x50k |" in result.stdout and "| rmsprop | 20x1k |" in result.stdout
    data = json.loads(out.read_text())
    assert data["bandwidth_bytes_per_s"] > 1e8
    row = data["rows"][0]
    assert set(row["times_ms"]) == {"torchstep", "torch for-loop", "torch foreach", "torch fused"}
    assert set(data["first_step_s"]) == {"adam", "rmsprop"}
    assert all(v[0] > 0 and v[1] > 0 for v in data["first_step_s"].values())


@pytest.mark.parametrize("argv,message", [
    (["--algorithms", "adamz"], "unknown algorithm(s) adamz"),
    (["--layouts", "20M"], "layout '20M' is not COUNTxSIZE"),
    (["--repeat", "0"], "--repeat must be >= 1, got 0"),
])
def test_bench_user_errors(argv, message):
    result = subprocess.run([sys.executable, "-m", "torchstep.cli", "bench", *argv], capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_every_elementwise_algorithm_is_benchmarked():
    import torchstep.optim as optim

    classes = {cls for cls, *_ in ALGORITHMS.values()}
    for name in ["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "RMSprop", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop"]:
        assert name in classes and hasattr(optim, name)
