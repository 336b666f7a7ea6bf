"""``torchstep.compare`` and ``torchstep compare --task``: a task defined here (not in the package),
re-runs repeat exactly, seeds give ± columns, --tune-lr lands in a measured good range, and every
way a task can be wrong gets a one-line error."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from matplotlib.image import imread

import torchstep
from torchstep import Task
from torchstep.cli import main

HERE = Path(__file__).parent
MODULE = Path(__file__).stem  # importable: pytest puts tests/ on sys.path, the subprocess gets PYTHONPATH


def regression_task():
    """Noisy linear regression through a small tanh net: 192 training rows in 6 batches, 64 validation rows."""
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(256, 4, generator=gen)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(256, 1, generator=gen)
    x_val, y_val, x_train, y_train = x[:64], y[:64], x[64:], y[64:]

    def model(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def batches(seed):
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))
        return [(x_train[order[i:i + 32]], y_train[order[i:i + 32]]) for i in range(0, len(x_train), 32)]

    def evaluate(model):
        return {"val_loss": torch.nn.functional.mse_loss(model(x_val), y_val).item()}

    return Task(model=model, train_batches=batches, loss=torch.nn.functional.mse_loss, evaluate=evaluate,
                epochs=3, name="test regression")


# factories that break the protocol, one way each
def task_as_dict():
    return {"model": None}


def task_without_loss():
    t = regression_task()
    return SimpleNamespace(model=t.model, train_batches=t.train_batches)


def factory_that_raises():
    raise RuntimeError("no data\nhere")


def model_not_a_module():
    t = regression_task()
    t.model = lambda seed: 3
    return t


def batches_not_pairs():
    t = regression_task()
    t.train_batches = lambda seed: [torch.zeros(4, 4)]
    return t


def loss_not_scalar():
    t = regression_task()
    t.loss = lambda out, target: (out - target) ** 2
    return t


def evaluate_not_a_dict():
    t = regression_task()
    t.evaluate = lambda model: 0.5
    return t


def zero_epochs():
    t = regression_task()
    t.epochs = 0
    return t


def uneven_epochs():
    t = regression_task()
    full = t.train_batches
    t.train_batches = lambda seed: full(seed)[:5] if seed % 100_003 else full(seed)  # epoch 2 is short
    return t


def _table(stdout):
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines() if line.startswith("|")]
    return rows[0], rows[2:]


def test_own_task_through_the_command(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "torchstep.cli", "compare", "--task", f"{MODULE}:regression_task", "--setup", "adam",
         "--setup", "SGD(lr=0.05, momentum=0.9)", "--seeds", "2", "--epochs", "2", "--no-progress",
         "--plot", "c.png", "--json", "c.json", "--target", "100"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("test regression: 2 epochs x 6 steps, 2 seed(s)")
    header, rows = _table(result.stdout)
    assert header == ["setup", "lr", "train loss", "val loss", "steps to 100", "s to 100", "state bytes", "wall s",
                      "optimizer.step share"]  # no accuracy: the outputs are not class scores
    assert [r[0] for r in rows] == ["adam", "SGD(lr=0.05,momentum=0.9)"]
    for row in rows:
        mean, std = row[3].split(" ± ")  # two seeds: mean ± std
        assert 0 < float(mean) < 50 and float(std) > 0
        assert row[4] == "6 ± 0"  # 100 is reached at the first epoch's end
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["seeds"] == [0, 1] and data["steps"] == 12
    assert all(len(r["losses"]) == 12 for s in data["setups"] for r in s["runs"])
    image = imread(tmp_path / "c.png")
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 200 and image[..., :3].std() > 0.05


def test_api_returns_data():
    result = torchstep.compare(["adam", "SGD(lr=0.1)"], regression_task(), epochs=2, seeds=2, target=100.0)
    assert isinstance(result, torchstep.Comparison)
    assert (result.task, result.epochs, result.steps, result.seeds) == ("test regression", 2, 12, [0, 1])
    assert result.metric_names == ["val_loss"] and not result.tuned
    adam, sgd = result.setups
    assert (adam.label, adam.spec, adam.lr) == ("adam", "Adam(lr=0.001)", 1e-3)
    for s in result.setups:
        assert [r.seed for r in s.runs] == [0, 1]
        for r in s.runs:
            assert len(r.losses) == len(r.lrs) == len(r.seconds) == 12 and len(r.epochs) == 2
            assert set(r.metrics) == {"val_loss"} and math.isfinite(r.metrics["val_loss"])
            assert r.train_loss == pytest.approx(sum(r.losses[6:]) / 6)
            assert r.train_acc is None  # regression
            assert (r.steps_to_target, r.seconds_to_target) == (6, r.epochs[0]["seconds"])
            assert 0 < r.step_s < r.wall_s and 0 < r.step_share < 1
    n_params = 4 * 8 + 8 + 8 + 1
    # exp_avg and exp_avg_sq in float32, and a float32 step count per tensor
    assert all(r.state_bytes == 2 * 4 * n_params + 4 * 4 for r in adam.runs)
    assert all(r.state_bytes == 0 for r in sgd.runs)  # plain SGD keeps no state
    mean, std = adam.mean_std("val_loss")
    assert mean == pytest.approx(sum(adam.values("val_loss")) / 2) and std > 0
    json.dumps(result.to_dict())  # plain data
    never = torchstep.compare(["adam"], regression_task(), epochs=1, target=1e-9)
    assert never.setups[0].runs[0].steps_to_target is None
    assert _table(never.table())[1][0][4:6] == ["-", "-"]  # target never reached


def test_same_seeds_same_numbers():
    def losses(seeds):
        result = torchstep.compare(["adamw-cosine"], regression_task(), epochs=2, seeds=seeds)
        return [(r.losses, r.metrics) for r in result.setups[0].runs]

    first = losses([0, 1])
    assert losses([0, 1]) == first  # exactly
    assert first[0][0] != first[1][0]  # and the seed matters
    assert losses([1]) == first[1:]  # a seed's run does not depend on the others


def test_seeds_show_spread_on_digits(capsys):
    assert main(["compare", "--setup", "adam", "--epochs", "1", "--batch-size", "128", "--seeds", "2",
                 "--no-progress", "--no-plot"]) == 0
    out = capsys.readouterr().out
    header, rows = _table(out)
    assert header[:6] == ["setup", "lr", "train loss", "train acc", "val loss", "val acc"]
    assert all(" ± " in cell for cell in rows[0][2:6]), rows


def test_tune_lr_lands_in_the_good_range_on_digits(capsys):
    """The known-good ranges were measured with a 25-point sweep (10^(k/4), 1e-5 .. 10) of 1-epoch,
    constant-lr runs on digits-mlp (batch 32, seeds 0 and 1): the lrs whose final validation loss
    is within 2x of the sweep's best (~0.17) on both seeds are Adam 5.6e-3 .. 3.2e-2 and SGD
    (no momentum) 0.32 .. 1.8. --tune-lr with 4 epochs tunes on 1-epoch runs, so those are the
    ranges it must land in; both starting lrs lie outside them (val loss 1.26 and 0.67)."""
    assert main(["compare", "--tune-lr", "--setup", "Adam(lr=1e-3)", "--setup", "SGD(lr=0.1)", "--epochs", "4",
                 "--no-progress", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "lr tuned per setup: x0.1, x0.316, x1, x3.16, x10 for 1 epoch(s) each" in out
    header, rows = _table(out)
    assert header[1] == "lr (tuned)"
    adam, sgd = (float(r[1]) for r in rows)
    assert 5.6e-3 <= adam <= 3.2e-2 and not 5.6e-3 <= 1e-3 <= 3.2e-2
    assert 0.32 <= sgd <= 1.8 and not 0.32 <= 0.1 <= 1.8


def test_tuning_record_and_budget():
    result = torchstep.compare(["SGD(lr=0.1)+warmup_cosine(warmup=0.1)"], regression_task(), epochs=4,
                               tune_lr=True)
    (setup,) = result.setups
    assert result.tune_epochs == 1
    assert [lr for lr, _ in setup.tuning] == pytest.approx([0.1 * f for f in torchstep.comparison.TUNE_FACTORS])
    best_lr, best_score = min(setup.tuning, key=lambda t: t[1])
    assert setup.lr == pytest.approx(best_lr) and max(setup.runs[0].lrs) == pytest.approx(best_lr, rel=1e-6)


BAD_TASKS = [
    ("no_colon_here", "is neither a built-in task (digits-mlp, digits-cnn, charlm) nor package.module:factory"),
    ("no_such_module_xyz:make", "cannot import 'no_such_module_xyz' (ModuleNotFoundError: No module named"),
    ("broken_task_module:make", "cannot import 'broken_task_module' (ZeroDivisionError: division by zero)"),
    (f"{MODULE}:no_such_factory", f"module '{MODULE}' has no 'no_such_factory'"),
    (f"{MODULE}:MODULE", f"{MODULE}.MODULE is str, not a factory function"),
    (f"{MODULE}:factory_that_raises", "the factory raised RuntimeError: no data here"),
    (f"{MODULE}:task_as_dict", "the factory returned dict, not a torchstep.Task: it has no model, train_batches, loss"),
    (f"{MODULE}:task_without_loss", "not a torchstep.Task: it has no loss"),
    (f"{MODULE}:model_not_a_module", "task.model(seed) returned int, not an nn.Module"),
    (f"{MODULE}:batches_not_pairs", "must yield (inputs, targets) pairs; its first item is a (4, 4) float32 tensor"),
    (f"{MODULE}:loss_not_scalar", "task.loss(outputs, targets) returned a (32, 1) float32 tensor, not a scalar"),
    (f"{MODULE}:evaluate_not_a_dict", "task.evaluate(model) returned float, not a non-empty dict"),
    (f"{MODULE}:zero_epochs", "task.epochs must be a positive int, got 0"),
    (f"{MODULE}:uneven_epochs", "yielded 5 batches in epoch 2 and 6 in the first"),
]


@pytest.mark.parametrize("command,target,message", [("compare", *case) for case in BAD_TASKS] + [
    ("lr-find", *case) for case in BAD_TASKS if "uneven" not in case[0]])  # lr-find sweeps one epoch's batches
def test_bad_tasks_get_one_line(command, target, message, tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_task_module.py").write_text("x = 1 / 0\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    argv = [command, "--task", target, "--no-plot"] + (["--no-progress", "--epochs", "2"] if command == "compare" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"torchstep {command}: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_lr_find_on_own_task(capsys):
    assert main(["lr-find", "--task", f"{MODULE}:regression_task", "--steps", "30", "--start-lr", "1e-4",
                 "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "suggested lr: " in out and "stopped: " in out


def test_duck_typed_task_without_the_optional_fields():
    """Anything with model, train_batches and loss is a task: no evaluate, epochs or name needed;
    without val_loss, --target watches the epoch's training loss."""
    t = regression_task()
    plain = SimpleNamespace(model=t.model, train_batches=t.train_batches, loss=t.loss)
    result = torchstep.compare(["adam"], plain, target=1e9)
    assert (result.task, result.epochs, result.metric_names) == ("task", 1, [])
    run = result.setups[0].runs[0]
    assert run.metrics == {} and run.steps_to_target == 6
    assert _table(result.table())[0] == ["setup", "lr", "train loss", "steps to 1e+09", "s to 1e+09", "state bytes",
                                         "wall s", "optimizer.step share"]
