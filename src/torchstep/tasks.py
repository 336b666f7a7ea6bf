"""Training tasks: the :class:`Task` protocol and the built-in tasks on real data that loads offline.

A :class:`Task` is what ``torchstep compare`` and ``torchstep lr-find`` train: a model factory,
one epoch of batches, a loss and (optionally) an evaluation. Bring your own with
``torchstep compare --task package.module:factory``, where ``factory()`` returns a Task.

``digits-mlp``: scikit-learn's copy of the UCI optical handwritten digits (1,797 8x8 images, 10
classes), shipped inside the scikit-learn package -- no download -- and a 64-64-10 MLP. Used by
the demo, the tests and ``torchstep compare`` by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

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


# name -> factory(epochs=..., batch_size=...) of the tasks ``--task NAME`` runs
BUILTIN_TASKS: dict[str, Callable[..., Task]] = {"digits-mlp": digits_mlp_task}
