"""Training tasks: the :class:`Task` protocol and the built-in tasks on real data that loads offline.

A :class:`Task` is what ``torchstep compare`` and ``torchstep lr-find`` train: a model factory,
one epoch of batches, a loss and (optionally) an evaluation. Bring your own with
``torchstep compare --task package.module:factory``, where ``factory()`` returns a Task.

``digits-mlp``: scikit-learn's copy of the UCI optical handwritten digits (1,797 8x8 images, 10
classes), shipped inside the scikit-learn package -- no download -- and a 64-64-10 MLP. Used by
the demo, the tests and ``torchstep compare`` by default.

``digits-cnn``: the same images and split as 8x8 one-channel pictures through a small conv net
(two 3x3 convolutions, 16 and 32 channels, max-pooling, a linear head), kept in channels_last
memory format: many small parameter tensors of several shapes (4-d kernels, biases).

``charlm``: a character-level transformer language model (2 pre-norm layers, width 64, 4 heads,
context 64) on text that ships with every Python installation: the source files of a fixed list
of standard-library modules (:data:`CHARLM_MODULES`), read from ``sysconfig.get_paths()["stdlib"]``.
Characters outside printable ASCII become ``?`` (vocabulary: 95 printable characters and newline).
Each file is split once: its first 90% (to a line start) trains, the rest validates. Reports ``val_loss`` (nats per character) and ``val_bpc`` (bits per character).
The text, and so the numbers, depend on the Python version's copy of those files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import math
import sysconfig
from pathlib import Path

import torch


# one option-rich setup per classic algorithm: the demo and the training test run each with
# torch.optim and with torchstep.optim and expect the same losses
DROP_IN_SETUPS = {
    "SGD": dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "Adam": dict(lr=3e-3),
    "AdamW": dict(lr=3e-3, weight_decay=0.05, amsgrad=True),
    "Adagrad": dict(lr=0.05, lr_decay=1e-3),
    "Adadelta": dict(lr=1.0),
    "RMSprop": dict(lr=1e-3, centered=True, momentum=0.5),
    "Adamax": dict(lr=2e-3, weight_decay=1e-4),
    "NAdam": dict(lr=2e-3, weight_decay=1e-2, decoupled_weight_decay=True),
    "RAdam": dict(lr=1e-2, betas=(0.9, 0.99)),
    "ASGD": dict(lr=0.05, t0=100),
    "Rprop": dict(lr=1e-3),
}


@dataclass
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def load_digits(dtype: torch.dtype = torch.float32, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """The digits data set, standardised, split into train/validation by a seeded permutation."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits task needs scikit-learn (it ships the data set): pip install scikit-learn"
        ) from exc
    data = sk_load_digits()
    x = torch.tensor(data.data, dtype=dtype)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return Split(x[train], y[train], x[val], y[val])


def digits_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A small MLP (64 -> 64 -> 10) with deterministic initial weights."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10)).to(dtype)


@dataclass
class RunResult:
    losses: list[float]  # mean training loss per epoch
    val_accuracy: float


def train(
    model: torch.nn.Module,
    make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
    data: Split,
    epochs: int = 20,
    batch_size: int = 128,
    seed: int = 0,
) -> RunResult:
    """Plain mini-batch training with cross-entropy; batches are drawn in a seeded order."""
    opt = make_optimizer(model)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(data.x_train), generator=gen)
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(data.x_train[idx]), data.y_train[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        losses.append(total / count)
    with torch.no_grad():
        accuracy = (model(data.x_val).argmax(1) == data.y_val).float().mean().item()
    return RunResult(losses, accuracy)


@dataclass
class Task:
    """A training problem for ``torchstep compare`` / ``torchstep lr-find`` / :func:`torchstep.compare`.

    Fields:

    ``model(seed) -> nn.Module``
        A fresh model. Every run calls it once; build the weights from ``seed`` (the comparison
        also seeds torch's global generator with it just before the call, so a factory that
        ignores ``seed`` is still deterministic).
    ``train_batches(seed) -> iterable of (inputs, targets)``
        One epoch of training batches (a list, a generator, a ``DataLoader``...). It is called once
        per epoch with a seed derived from the run's seed and the epoch number (torch's global
        generator is seeded with it too), so each epoch may shuffle differently while a re-run
        repeats exactly. Every epoch must have the same number of batches: schedules are laid out
        over the whole run in advance.
    ``loss(outputs, targets) -> scalar tensor``
        The training loss of a batch, with ``outputs = model(inputs)``.
    ``evaluate(model) -> dict`` (optional)
        Named metrics of a trained model, e.g. ``{"val_loss": 0.08, "val_acc": 0.98}``; called
        in eval mode under ``torch.no_grad()`` at the end of every epoch. ``val_loss`` is what
        ``--target`` and ``--tune-lr`` look at; without it they use the training loss.
    ``epochs`` (optional, default 1)
        The default training budget in epochs (``--epochs`` overrides it).
    ``name`` (optional)
        Shown in the output's title.

    When ``outputs`` are ``(batch, classes)`` scores and ``targets`` class indices, the
    comparison also reports the training accuracy.
    """

    model: Callable[[int], torch.nn.Module]
    train_batches: Callable[[int], Iterable[tuple[Any, Any]]]
    loss: Callable[[Any, Any], torch.Tensor]
    evaluate: Callable[[torch.nn.Module], Mapping[str, float]] | None = None
    epochs: int = 1
    name: str = "task"


def digits_mlp_task(epochs: int = 30, batch_size: int = 32) -> Task:
    """The built-in ``digits-mlp`` task: the 64-64-10 MLP on the digits (80/20 split), cross-entropy,
    validation loss and accuracy."""
    data = load_digits()
    loss = torch.nn.functional.cross_entropy

    def batches(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))
        return [(data.x_train[order[i:i + batch_size]], data.y_train[order[i:i + batch_size]])
                for i in range(0, len(order), batch_size)]

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        logits = model(data.x_val)
        return {"val_loss": loss(logits, data.y_val).item(),
                "val_acc": (logits.argmax(1) == data.y_val).float().mean().item()}

    return Task(model=digits_model, train_batches=batches, loss=loss, evaluate=evaluate, epochs=epochs,
                name=f"digits MLP 64-64-10 ({len(data.x_train)} train / {len(data.x_val)} validation images, "
                     f"batch {batch_size})")


class DigitsCNN(torch.nn.Module):
    """conv3x3(1->16) -> ReLU -> conv3x3(16->32) -> ReLU -> maxpool 2 -> linear(512 -> 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
        self.head = torch.nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def digits_cnn_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return DigitsCNN().to(memory_format=torch.channels_last)


def digits_cnn_task(epochs: int = 15, batch_size: int = 32) -> Task:
    """The built-in ``digits-cnn`` task: :class:`DigitsCNN` in channels_last on the digits as 1x8x8
    images (the ``digits-mlp`` split), cross-entropy, validation loss and accuracy."""
    data = load_digits()

    def images(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, 1, 8, 8).contiguous(memory_format=torch.channels_last)

    x_train, x_val = images(data.x_train), images(data.x_val)
    loss = torch.nn.functional.cross_entropy

    def batches(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))
        return [(x_train[order[i:i + batch_size]], data.y_train[order[i:i + batch_size]])
                for i in range(0, len(order), batch_size)]

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        logits = model(x_val)
        return {"val_loss": loss(logits, data.y_val).item(),
                "val_acc": (logits.argmax(1) == data.y_val).float().mean().item()}

    return Task(model=digits_cnn_model, train_batches=batches, loss=loss, evaluate=evaluate, epochs=epochs,
                name=f"digits CNN, channels_last ({len(x_train)} train / {len(x_val)} validation 8x8 images, "
                     f"batch {batch_size})")


# the standard-library sources charlm reads, in this order; all present in CPython 3.10 and later
CHARLM_MODULES = ("argparse.py", "dataclasses.py", "functools.py", "inspect.py", "textwrap.py",
                  "string.py", "fractions.py", "heapq.py", "bisect.py", "shlex.py", "pprint.py",
                  "tokenize.py", "ast.py", "difflib.py", "calendar.py", "random.py")
CHARLM_VOCAB = 96  # printable ASCII (32..126) and newline


def _charlm_ids(raw: bytes) -> torch.Tensor:
    codes = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    codes = torch.where(codes == 10, torch.tensor(31), codes)  # newline -> id 0
    codes = torch.where((codes < 31) | (codes > 126), torch.tensor(ord("?")), codes)
    return codes - 31


@dataclass
class CharSplit:
    train: torch.Tensor  # character ids
    val: torch.Tensor


def charlm_split(modules: Iterable[str] = CHARLM_MODULES, val_fraction: float = 0.1) -> CharSplit:
    """The fixed charlm split, as character ids (0 newline, 1..95 printable ASCII; any other
    character reads as ``?``): of each listed standard-library file, the first ``1 - val_fraction``
    (cut at a line start) goes to training and the rest to validation, each side concatenated in
    the list's order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train, val = [], []
    for name in modules:
        raw = (root / name).read_bytes()
        cut = raw.rfind(b"\n", 0, int(len(raw) * (1 - val_fraction))) + 1
        train.append(_charlm_ids(raw[:cut]))
        val.append(_charlm_ids(raw[cut:]))
    return CharSplit(torch.cat(train), torch.cat(val))


class CharTransformer(torch.nn.Module):
    """A small decoder-only transformer: token + learned position embeddings, pre-norm blocks of
    causal self-attention and a 4x GELU MLP, a final LayerNorm and a linear head."""

    def __init__(self, vocab: int = CHARLM_VOCAB, context: int = 64, width: int = 64, layers: int = 2,
                 heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.tokens = torch.nn.Embedding(vocab, width)
        self.positions = torch.nn.Parameter(torch.randn(context, width) * 0.02)
        self.blocks = torch.nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(torch.nn.ModuleDict({
                "norm1": torch.nn.LayerNorm(width), "qkv": torch.nn.Linear(width, 3 * width),
                "proj": torch.nn.Linear(width, width), "norm2": torch.nn.LayerNorm(width),
                "mlp": torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(),
                                           torch.nn.Linear(4 * width, width))}))
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        batch, length = ids.shape
        x = self.tokens(ids) + self.positions[:length]
        for block in self.blocks:
            q, k, v = block["qkv"](block["norm1"](x)).split(x.shape[-1], dim=-1)
            q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
            attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + block["proj"](attended.transpose(1, 2).reshape(batch, length, -1))
            x = x + block["mlp"](block["norm2"](x))
        return self.head(self.norm(x))


def charlm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-character cross-entropy in nats."""
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def charlm_task(epochs: int = 8, batch_size: int = 16, steps_per_epoch: int = 100, context: int = 64,
                val_windows: int = 256) -> Task:
    """The built-in ``charlm`` task: :class:`CharTransformer` on :func:`charlm_split`. An epoch is
    ``steps_per_epoch`` batches of ``batch_size`` windows of ``context`` characters at seeded random
    offsets in the training text; evaluation reads ``val_windows`` fixed, evenly spaced windows of
    the validation text."""
    split = charlm_split()
    offsets = torch.linspace(0, len(split.val) - context - 2, val_windows).long()
    val_x = torch.stack([split.val[o:o + context] for o in offsets.tolist()])
    val_y = torch.stack([split.val[o + 1:o + context + 1] for o in offsets.tolist()])

    def batches(seed: int):
        gen = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, len(split.train) - context - 1, (steps_per_epoch, batch_size), generator=gen)
        window = torch.arange(context)
        for row in starts:
            idx = row[:, None] + window
            yield split.train[idx], split.train[idx + 1]

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        nats = charlm_loss(model(val_x), val_y).item()
        return {"val_loss": nats, "val_bpc": nats / math.log(2)}

    def model(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return CharTransformer(context=context)

    return Task(model=model, train_batches=batches, loss=charlm_loss, evaluate=evaluate, epochs=epochs,
                name=f"charlm: 2-layer char transformer, width 64, context {context} ({len(split.train):,} train / "
                     f"{len(split.val):,} validation characters of stdlib source, batch {batch_size})")


# name -> factory(epochs=..., batch_size=...) of the tasks ``--task NAME`` runs
BUILTIN_TASKS: dict[str, Callable[..., Task]] = {"digits-mlp": digits_mlp_task, "digits-cnn": digits_cnn_task,
                                                 "charlm": charlm_task}
