"""The built-in digits-cnn and charlm tasks, and what `torchstep compare` prints and draws:
--markdown, the single progress bar, the PNG's panels."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from matplotlib.image import imread

from torchstep import compare
from torchstep.cli import main
from torchstep.cli.compare import figure, plot
from torchstep.tasks import CHARLM_VOCAB, charlm_split, charlm_task, digits_cnn_task


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_digits_cnn_is_channels_last_and_learns():
    task = digits_cnn_task(epochs=3)
    model = task.model(0)
    kernels = [p for p in model.parameters() if p.ndim == 4]
    assert len(kernels) == 2 and all(k.is_contiguous(memory_format=torch.channels_last) for k in kernels)
    inputs, _ = next(iter(task.train_batches(0)))
    assert inputs.shape[1:] == (1, 8, 8) and inputs.is_contiguous(memory_format=torch.channels_last)
    result = compare(["adam"], task)
    metrics = result.setups[0].runs[0].metrics
    assert metrics["val_acc"] > 0.9 and metrics["val_loss"] < 0.4, metrics  # 10 classes: chance is 0.1 / 2.3


def test_charlm_split_is_fixed_and_clean():
    first, second = charlm_split(), charlm_split()
    assert torch.equal(first.train, second.train) and torch.equal(first.val, second.val)
    assert len(first.train) > 400_000 and 0.08 < len(first.val) / (len(first.train) + len(first.val)) < 0.12
    for ids in (first.train, first.val):
        assert ids.dtype == torch.long and 0 <= int(ids.min()) and int(ids.max()) < CHARLM_VOCAB
    assert first.val[0] != 0 and (first.val == 0).float().mean() > 0.01  # newlines present (id 0)
    task = charlm_task()
    a, b = list(task.train_batches(7)), list(task.train_batches(7))
    assert len(a) == 100 and all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
    x, y = a[0]
    assert x.shape == (16, 64) and torch.equal(x[:, 1:], y[:, :-1])  # targets: the next characters


def test_charlm_reaches_its_stated_bpc():
    # 200 steps of batch 16 (a quarter of the default budget): measured 3.17-3.20 bits/char over seeds
    # 0-2; the text's unigram entropy, what a model without context reaches, is 4.46
    split = charlm_split()
    counts = torch.bincount(split.train, minlength=CHARLM_VOCAB).double()
    probs = counts[counts > 0] / counts.sum()
    unigram_bits = float(-(probs * probs.log2()).sum())
    result = compare(["adamw-wsd"], charlm_task(epochs=2))
    bpc = result.setups[0].runs[0].metrics["val_bpc"]
    assert result.metric_names == ["val_loss", "val_bpc"]
    assert bpc == pytest.approx(result.setups[0].runs[0].metrics["val_loss"] / math.log(2))
    assert bpc < 3.4 and unigram_bits > 4.2, (bpc, unigram_bits)


def _small(seeds):
    return compare(["adam", "sgd-cosine"], digits_cnn_task(epochs=1, batch_size=256), seeds=seeds)


def test_png_has_the_panels(tmp_path):
    result = _small(2)
    fig = figure(result, "digits-cnn")
    step_ax, time_ax, lr_ax = fig.axes
    assert [ax.get_xlabel() for ax in fig.axes] == ["step", "training seconds", "step"]
    assert time_ax.get_title() == "loss vs wall-clock" and lr_ax.get_title() == "learning rate"
    assert "min-max over 2 seeds" in step_ax.get_title()
    for ax in (step_ax, time_ax):  # a line and a band per setup
        assert len(ax.get_lines()) == 2 and len(ax.collections) == 2
    assert [t.get_text() for t in lr_ax.get_legend().get_texts()] == ["adam", "sgd-cosine"]
    plot(result, tmp_path / "c.png", "digits-cnn")
    image = imread(tmp_path / "c.png")
    assert image.ndim == 3 and image.shape[1] > 2 * image.shape[0] > 600  # three panels side by side
    assert image[..., :3].std() > 0.05  # not blank
    assert len(figure(_small(1), "x").axes[0].collections) == 0  # one seed: no bands


def test_markdown_output_and_one_progress_bar(tmp_path, capsys):
    png = tmp_path / "c.png"
    assert main(["compare", "--task", "digits-cnn", "--epochs", "1", "--batch-size", "256", "--seeds", "2",
                 "--setup", "adam", "--setup", "sgd-cosine", "--markdown", "--plot", str(png),
                 "--json", str(tmp_path / "r.json")]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith("*digits CNN") and lines[0].endswith("*")
    assert lines[2].startswith("| setup") and lines[-1] == f"![compare]({png})"
    assert [line.split("|")[1].strip() for line in lines[4:6]] == ["adam", "sgd-cosine"]
    assert "wrote" not in captured.out and f"wrote {tmp_path / 'r.json'}" in captured.err
    if importlib.util.find_spec("tqdm"):  # 2 setups x 2 seeds x 6 steps on one bar; the last refresh shows it done
        last = captured.err.split("\r")[-1]
        assert "run 4/4 sgd-cosine seed 1: 100%|" in last and "24/24" in last, captured.err
