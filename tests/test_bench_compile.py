"""``torchstep bench --compile``: the report and the command's wiring (the timing itself is a
benchmark, run by hand: it compiles two training steps)."""

import argparse

from torchstep import bench_compile
from torchstep.cli import bench as cli_bench


def _result() -> bench_compile.Result:
    return bench_compile.Result(1_320_202, 10, 3, {
        "torchstep compiled": [9.0, 10.0, 11.0], "torch.optim compiled": [10.0, 10.0, 10.0],
        "torchstep eager": [9.0, 9.0, 9.0], "torch.optim eager": [18.0, 18.0, 18.0]})


def test_report_gives_medians_and_ratios():
    text = bench_compile.format_report(_result())
    assert "| torchstep compiled | 10.000 |" in text and "| torch.optim compiled | 10.000 |" in text
    assert "torchstep / torch.optim (compiled): 1.00x" in text
    assert "torchstep / torch.optim (eager): 0.50x" in text
    assert "1,320,202 float32 parameters" in text


def test_command_runs_the_compiled_benchmark(monkeypatch, capsys, tmp_path):
    seen = {}

    def fake_run(rounds, threads, progress):
        seen.update(rounds=rounds, threads=threads)
        return _result()

    monkeypatch.setattr(bench_compile, "run", fake_run)
    args = argparse.Namespace(algorithms="all", layouts="1x20M", repeat=3, no_latency=False,
                              json=str(tmp_path / "c.json"), compile=True, threads=1)
    assert cli_bench.run(args) == 0
    assert seen == {"rounds": 3, "threads": 1}
    assert "torchstep / torch.optim (compiled)" in capsys.readouterr().out
    assert "times_ms" in (tmp_path / "c.json").read_text()


def test_model_has_about_1_3m_parameters():
    assert 1_200_000 < sum(p.numel() for p in bench_compile._model().parameters()) < 1_400_000
