"""The ``torchstep`` command: each subcommand as a subprocess on tiny settings; user errors; setup parsing."""

import importlib.util
import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
from matplotlib.image import imread

from torchstep.cli import main
from torchstep.schedules import preview, schedule_from_spec, warmup_cosine
from torchstep.setups import PRESETS, SetupError, parse_setup


def _run(*argv, cwd=None, stderr=None):
    result = subprocess.run([sys.executable, "-m", "torchstep.cli", *argv], capture_output=True, text=True,
                            timeout=300, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    if stderr is not None:
        stderr.append(result.stderr)
    return result.stdout


def _assert_png(path):
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert image[..., :3].std() > 0.05 and (image[..., :3] < 0.5).any()  # drawn on, not blank


def _table(stdout):
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines() if line.startswith("|")]
    return rows[0], rows[2:]


def test_console_script_is_installed():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "torchstep"]
    assert script.value == "torchstep.cli:main"


@pytest.mark.parametrize("command", ["compare", "lr-find", "schedule", "bench"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: torchstep {command}" in capsys.readouterr().out


def test_compare_runs_every_preset(tmp_path):
    png, raw = tmp_path / "curves.png", tmp_path / "runs.json"
    err = []
    out = _run("compare", "--epochs", "1", "--batch-size", "128", "--plot", str(png), "--json", str(raw), stderr=err)
    if importlib.util.find_spec("tqdm"):  # one bar over all six runs (12 steps each), finished on the last
        last = err[0].split("\r")[-1]
        assert f"run 6/6 {list(PRESETS)[-1]}: 100%|" in last and "72/72" in last, err[0]
    else:  # bars are optional: one hint, and the run goes on
        assert "no progress bars without tqdm (pip install 'torchstep[cli]')" in err[0]
    header, rows = _table(out)
    assert header == ["setup", "lr", "train loss", "train acc", "val loss", "val acc", "state bytes", "wall s",
                      "optimizer.step share"]
    assert [r[0] for r in rows] == list(PRESETS)
    for row in rows:
        assert 0 < float(row[2]) < 2.5 and 0 <= float(row[3]) <= 1 and 0 <= float(row[5]) <= 1
        assert int(row[6]) > 0 and float(row[7]) > 0
        assert row[8].endswith("%") and 0 < float(row[8][:-1]) < 100
    assert "±" not in out  # one seed: no spread to show
    _assert_png(png)
    result = json.loads(raw.read_text())
    assert [s["label"] for s in result["setups"]] == list(PRESETS)
    runs = [s["runs"][0] for s in result["setups"]]
    assert all(len(r["losses"]) == len(r["lrs"]) == len(r["seconds"]) == 12 for r in runs)  # ceil(1438 / 128) steps
    cosine = next(s["runs"][0] for s in result["setups"] if s["label"] == "adamw-cosine")
    assert cosine["lrs"] == pytest.approx(preview(warmup_cosine(3e-3, 1, 12), 12))  # warmup 0.05 x 12 -> 1 step


def test_compare_custom_setups(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "--epochs", "2", "--no-progress", "--no-plot", "--setup", "adam",
                 "--setup", "SGD(lr=0.1, momentum=0.9)+StepLR(step_size=5, gamma=0.5)"]) == 0
    _, rows = _table(capsys.readouterr().out)
    assert [r[0] for r in rows] == ["adam", "SGD(lr=0.1,momentum=0.9)+StepLR(step_size=5,gamma=0.5)"]
    assert not list(tmp_path.iterdir())  # --no-plot: nothing written


def test_compare_runs_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now fails
    assert main(["compare", "--epochs", "1", "--batch-size", "256", "--setup", "adam", "--no-plot"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "torchstep compare: no progress bars without tqdm (pip install 'torchstep[cli]')\n"
    assert _table(captured.out)[1][0][0] == "adam"


def test_lr_find_on_digits(tmp_path, capsys):
    assert main(["lr-find", "--steps", "40", "--start-lr", "1e-5", "--plot", str(tmp_path / "lr.png")]) == 0
    out = capsys.readouterr().out
    suggestion = [line for line in out.splitlines() if line.startswith("suggested lr: ")]
    assert len(suggestion) == 1 and "rule: steepest, AdamW" in suggestion[0]
    assert 1e-5 < float(suggestion[0].split()[2]) < 10
    _assert_png(tmp_path / "lr.png")


def test_lr_find_with_a_model_factory(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_models.py").write_text(
        "import torch\n"
        "def regression():\n"
        "    x = torch.randn(256, 4)\n"
        "    y = x @ torch.ones(4, 1)\n"
        "    return torch.nn.Linear(4, 1), torch.nn.functional.mse_loss, [(x[i:i+32], y[i:i+32]) for i in range(0, 256, 32)]\n"
        "def digits_net():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(64, 10))\n"
    )
    out = _run("lr-find", "--model", "my_models:regression", "--optimizer", "SGD(momentum=0.5)", "--steps", "30",
               "--start-lr", "1e-4", "--rule", "min/10", "--plot", "lr.png", cwd=tmp_path)
    assert "rule: min/10, SGD" in out and "stopped: " in out
    _assert_png(tmp_path / "lr.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert main(["lr-find", "--model", "my_models:digits_net", "--steps", "20", "--no-plot"]) == 0
    assert "suggested lr: " in capsys.readouterr().out


def test_schedule_values_and_plot(tmp_path):
    spec = "warmup_cosine(peak=1e-3, warmup=10, total=100, floor=1e-5)"
    out = _run("schedule", spec, "StepLR(step_size=30, gamma=0.5)", "--lr", "1e-3", "--steps", "100", "--every", "10",
               "--plot", str(tmp_path / "s.png"))
    header, rows = _table(out)
    assert header == ["step", spec, "StepLR(step_size=30, gamma=0.5)"]
    assert [int(r[0]) for r in rows] == [*range(0, 100, 10), 99]
    values = preview(schedule_from_spec(spec), 100)
    for step, cosine, step_lr in rows:
        assert float(cosine) == pytest.approx(values[int(step)], rel=1e-5)
        assert float(step_lr) == pytest.approx(1e-3 * 0.5 ** (int(step) // 30))
    _assert_png(tmp_path / "s.png")


@pytest.mark.parametrize("argv,message", [
    (["compare", "--setup", "Adamm(lr=1)"], "unknown optimizer 'Adamm'"),
    (["compare", "--setup", "__import__('os').system('true')"], "expected an optimizer call"),
    (["compare", "--setup", "SGD(lr=open('x'))"], "is not a literal"),
    (["compare", "--setup", "AdamW(lr=-1.0)"], "AdamW: Invalid learning rate: -1.0"),
    (["compare", "--setup", "AdamW(lr=1e-3)+nope(1)"], "unknown schedule 'nope'"),
    (["compare", "--setup", "SGD(0.1)"], "give optimizer arguments by name"),
    (["compare", "--setup", "Adam(lr=1e-3"], "is not Optimizer(...)+schedule(...)"),
    (["compare", "--setup", "Muon(lr=0.02)"], "Muon"),
    (["compare", "--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["compare", "--plot", "/no/such/folder/x.png"], "folder '/no/such/folder' does not exist"),
    (["lr-find", "--model", "no_such_module_xyz:f"], "cannot import 'no_such_module_xyz'"),
    (["lr-find", "--model", "torchstep"], "is not package.module:function"),
    (["lr-find", "--start-lr", "1", "--end-lr", "0.1"], "end_lr must be > start_lr"),
    (["lr-find", "--optimizer", "SGD()+StepLR(step_size=1)"], "no schedule here"),
    (["schedule", "bogus(1)", "--steps", "10"], "unknown schedule 'bogus'"),
    (["schedule", "warmup_cosine(peak=1, warmup=5, total=3)", "--steps", "10"], "Invalid total: 3"),
    (["schedule", "Cosine(1.0, 0.0, 10)", "--steps", "0"], "--steps must be >= 1, got 0"),
])
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv + ["--no-progress"] * (argv[0] == "compare")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"torchstep {argv[0]}: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_setup_fills_the_run_values():
    setup = parse_setup("AdamW(lr=2e-3)+warmup_cosine(warmup=0.1)", steps=200)
    assert setup.schedule_spec == "warmup_cosine(warmup=20, peak=0.002, total=200)"
    assert setup.schedule == warmup_cosine(2e-3, 20, 200)
    assert parse_setup("SGD(lr=0.1)+CosineAnnealingLR()", 50).schedule_spec == "CosineAnnealingLR(T_max=50)"
    one_cycle = parse_setup("RAdam()+OneCycleLR()", 80)
    assert one_cycle.schedule_spec == "OneCycleLR(max_lr=0.001, total_steps=80)"  # RAdam's default lr
    explicit = parse_setup("Adam(lr=1e-3)+warmup_cosine(peak=5e-4, warmup=3, total=40)", 999)
    assert explicit.schedule == warmup_cosine(5e-4, 3, 40)
    assert parse_setup("Adam(lr=1e-3)", 10).schedule is None
    assert parse_setup("adam", 10).describe() == "Adam(lr=0.001)"


def test_every_preset_parses():
    for name in PRESETS:
        setup = parse_setup(name, steps=100)
        assert setup.label == name and setup.describe().startswith(setup.optimizer)


def test_setup_errors_name_the_problem():
    with pytest.raises(SetupError, match=r"\*args and \*\*kwargs"):
        parse_setup("Adam(**{'lr': 1})", 10)
    with pytest.raises(SetupError, match="warmup_cosine"):
        parse_setup("Adam()+warmup_cosine(warmup=5, total=3)", 10)


def test_every_modern_preset_builds_and_steps():
    """Each extra preset (the modern algorithms) parses, builds its optimizer and takes steps,
    Schedule-Free ones in train mode."""
    import torch

    from torchstep.cli.compare import _mode
    from torchstep.setups import EXTRA_PRESETS, parse_setup
    from torchstep.tasks import digits_model

    for name in EXTRA_PRESETS:
        setup = parse_setup(name, steps=20)
        model = digits_model()
        opt = setup.make_optimizer(model.parameters())
        _mode(opt, True)
        before = [p.detach().clone() for p in model.parameters()]
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(4, 64)).pow(2).mean().backward()
            opt.step()
        _mode(opt, False)
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters())), name


def test_compare_runs_a_schedule_free_setup(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "torchstep.cli", "compare", "--setup", "schedulefree-adamw", "--epochs", "1",
         "--no-progress", "--no-plot"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| schedulefree-adamw" in result.stdout
