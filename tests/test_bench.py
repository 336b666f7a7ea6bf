"""``torchstep bench`` runs end to end on tiny layouts and reports every path and ratio."""

import json
import subprocess
import sys

import pytest
import torch

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


def test_bench_lowbit_rows(tmp_path):
    """``torchstep bench --lowbit``: a row per algorithm and state dtype, with the state bytes
    measured from the optimizer (int8 AdamW: 2 bytes of codes + 8/256 of scales per parameter)."""
    out = tmp_path / "lowbit.json"
    result = subprocess.run(
        [sys.executable, "-m", "torchstep.cli", "bench", "--lowbit", "--algorithms", "adamw,lion", "--layouts", "1x64k",
         "--repeat", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| adamw | int8 | 1x64k |" in result.stdout and "| lion | bfloat16 | 1x64k |" in result.stdout
    rows = {(r["algorithm"], r["state_dtype"]): r for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == 6
    assert rows[("adamw", "float32")]["state_bytes_per_param"] == 8
    assert rows[("adamw", "bfloat16")]["state_bytes_per_param"] == 4
    assert rows[("adamw", "int8")]["state_bytes_per_param"] == pytest.approx(2 + 8 / 256)
    assert rows[("lion", "int8")]["state_bytes_per_param"] == pytest.approx(1 + 4 / 256)
    assert rows[("adamw", "int8")]["bytes_per_element"] == pytest.approx(12 + 4 * (1 + 4 / 256))
    assert rows[("lion", "int8")]["torch_fused_ms"] != rows[("lion", "int8")]["torch_fused_ms"]  # torch has no Lion


def test_bench_lowbit_refuses_other_algorithms():
    result = subprocess.run([sys.executable, "-m", "torchstep.cli", "bench", "--lowbit", "--algorithms", "rprop"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "unknown algorithm(s) rprop; choose from adamw, adam, sgd_momentum, lion" in result.stderr


def test_lowbit_cpu_floor_script_edits_the_real_kernel():
    """benchmarks/lowbit_cpu_floor.py finds the look-ups in the generated int8 kernel (it asserts
    so) and its variants really run: their states differ from the kernel as built."""
    import os

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    try:
        import lowbit_cpu_floor as floor
    finally:
        sys.path.pop(0)
    steps = {name: floor.make_step(5000, fn) for name, fn in floor.VARIANTS.items()}
    for _ in range(3):
        for step in steps.values():
            step()
    codes = {name: next(iter(step.optimizer.state.values()))["exp_avg"] for name, step in steps.items()}
    built = codes["int8 (as built)"]
    assert built.dtype == torch.uint8
    for name in ("free decoding", "free coding", "free both"):
        assert not torch.equal(codes[name], built), name
