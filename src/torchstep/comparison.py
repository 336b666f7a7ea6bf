"""``torchstep.compare``: train one :class:`~torchstep.tasks.Task` with several optimizer + schedule
setups, over several seeds, optionally tuning each setup's lr first, and return the results as data.

``torchstep compare`` (the command) is a thin layer over :func:`compare`: it parses options, shows
progress bars and prints :meth:`Comparison.table`.

What a run measures (per seed):

- ``train_loss``: the mean training loss over the last epoch; ``train_acc`` the accuracy over it
  when the outputs are ``(batch, classes)`` scores and the targets class indices;
- the task's ``evaluate(model)`` metrics after the last epoch (e.g. ``val_loss``, ``val_acc``);
- ``steps_to_target`` / ``seconds_to_target``: the first epoch end at which ``val_loss`` (or the
  epoch's training loss, for a task without ``val_loss``) is at or below ``target``, counted in
  optimizer steps and in training seconds (evaluation time excluded); ``None`` if never reached;
- ``state_bytes``: the bytes of the tensors in the optimizer's state after training;
- ``step_share``: the share of training time spent in ``optimizer.step()``.

LR tuning (``tune_lr=True``) is a small log-grid, not an LR range test: each setup is trained with
its lr (and its whole schedule) multiplied by each of :data:`TUNE_FACTORS` (0.1x to 10x, five points
half a decade apart) for ``tune_fraction`` of the epochs on the first seed, and keeps the factor with
the lowest final ``val_loss`` (training loss without one; a diverged run scores infinity). Every setup
gets the same tuning budget: ``len(TUNE_FACTORS)`` short runs. A grid was chosen over a range test
because it scores the lr by what the comparison measures (the loss after real training with the
setup's own schedule), where a range test reads the slope of a loss under a moving lr and tends to
suggest lrs that are good for a few steps, not for a run. The seeds are then all trained at the
chosen lr. Tuning scores on the task's validation metrics: there is no separate hold-out.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

import torch

from torchstep.params import param_groups
from torchstep.schedules import Scaled

from .optim.lr_scheduler import ScheduledLR
from .setups import PRESETS, SetupError, default_lr, parse_setup
from .tables import markdown_table
from .tasks import BUILTIN_TASKS, Task

TUNE_FACTORS = tuple(10.0 ** (k / 2) for k in range(-2, 3))  # 0.1, 0.316, 1, 3.16, 10
TUNE_FRACTION = 0.25


class TaskError(ValueError):
    """A task that does not follow the :class:`~torchstep.tasks.Task` protocol; the message is one line."""


@dataclass
class SeedRun:
    """One training run of one setup with one seed."""

    seed: int
    lr: float  # the optimizer's lr (group 0's base lr) for this run
    losses: list[float] = field(default_factory=list)  # training loss per step
    lrs: list[float] = field(default_factory=list)  # group 0's lr used at each step
    seconds: list[float] = field(default_factory=list)  # training seconds elapsed after each step
    epochs: list[dict[str, float]] = field(default_factory=list)  # per epoch: step, seconds, train_loss, metrics
    train_loss: float = float("nan")  # mean over the last epoch
    train_acc: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # evaluate() after the last epoch
    steps_to_target: int | None = None
    seconds_to_target: float | None = None
    state_bytes: int = 0
    wall_s: float = 0.0  # training time (evaluation excluded)
    step_s: float = 0.0  # of which in optimizer.step()

    @property
    def step_share(self) -> float:
        return self.step_s / self.wall_s if self.wall_s > 0 else float("nan")


@dataclass
class SetupResult:
    """One setup: its runs over the seeds, and the lr grid it was tuned on (if it was)."""

    label: str
    spec: str  # the setup written out with the run's values
    lr: float  # the lr the seeds ran with (the tuned one with tune_lr)
    runs: list[SeedRun] = field(default_factory=list)
    tuning: list[tuple[float, float]] | None = None  # (lr, score) per grid point

    def values(self, metric: str) -> list[float]:
        """``metric`` of every seed: a SeedRun field (``train_loss``, ``state_bytes``, ...), ``step_share``
        or a name from the task's evaluate(); None where a run has no value (e.g. target not reached)."""
        out = []
        for r in self.runs:
            value = r.metrics.get(metric) if metric in r.metrics else getattr(r, metric, None)
            out.append(None if value is None else float(value))
        return out

    def mean_std(self, metric: str) -> tuple[float | None, float | None]:
        """Mean and sample standard deviation over the seeds (std None for one seed); mean None
        when any seed has no value."""
        values = self.values(metric)
        if not values or any(v is None for v in values):
            return None, None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class Comparison:
    """What :func:`compare` returns."""

    task: str
    epochs: int
    steps: int  # optimizer steps per run
    seeds: list[int]
    target: float | None
    tuned: bool
    tune_epochs: int | None
    setups: list[SetupResult]
    metric_names: list[str]  # the keys of the task's evaluate(), in its order

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain data (what ``--json`` writes), every curve included."""
        return asdict(self)

    def table(self) -> str:
        """The results as a Markdown table (mean ± std over the seeds)."""

        columns: list[tuple[str, str, Callable[[float], str]]] = [
            ("lr (tuned)" if self.tuned else "lr", "lr", lambda v: f"{v:.3g}"),
            ("train loss", "train_loss", lambda v: f"{v:.4f}"),
        ]
        if any(r.train_acc is not None for s in self.setups for r in s.runs):
            columns.append(("train acc", "train_acc", lambda v: f"{v:.3f}"))
        for name in self.metric_names:
            fmt = (lambda v: f"{v:.3f}") if name.endswith(("acc", "accuracy")) else (lambda v: f"{v:.4f}")
            columns.append((name.replace("_", " "), name, fmt))
        if self.target is not None:
            columns += [(f"steps to {self.target:g}", "steps_to_target", lambda v: f"{v:.0f}"),
                        (f"s to {self.target:g}", "seconds_to_target", lambda v: f"{v:.2f}")]
        columns += [("state bytes", "state_bytes", lambda v: f"{v:.0f}"),
                    ("wall s", "wall_s", lambda v: f"{v:.2f}"),
                    ("optimizer.step share", "step_share", lambda v: f"{100 * v:.0f}%")]
        rows = []
        for s in self.setups:
            row = [s.label]
            for _, metric, fmt in columns:
                if metric == "lr":
                    row.append(fmt(s.lr))
                    continue
                mean, std = s.mean_std(metric)
                if mean is None:
                    reached = sum(v is not None for v in s.values(metric))
                    row.append("-" if reached == 0 else f"{reached}/{len(s.runs)} seeds")
                else:
                    row.append(fmt(mean) + ("" if std is None else f" ± {fmt(std)}"))
            rows.append(row)
        return markdown_table(["setup", *(c[0] for c in columns)], rows, [False] + [True] * len(columns))


# ---------------------------------------------------------------------------------------------
# the protocol check


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _call(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:  # the user's code: report it on one line
        raise TaskError(f"{what} raised {_one_line(exc)}") from None


@dataclass
class _Probe:
    batch: tuple[Any, Any]
    steps_per_epoch: int
    metric_names: list[str]


def check_task(task: Any, seed: int = 0) -> _Probe:
    """Check ``task`` against the :class:`~torchstep.tasks.Task` protocol by calling each part once;
    raise :class:`TaskError` naming what is missing or wrong."""
    required = ("model", "train_batches", "loss")
    missing = [name for name in required if not hasattr(task, name)]
    if missing:
        raise TaskError(f"the factory returned {type(task).__name__}, not a torchstep.Task: it has no "
                        f"{', '.join(missing)}")
    for name in (*required, "evaluate"):
        value = getattr(task, name, None)
        if (value is not None or name != "evaluate") and not callable(value):
            raise TaskError(f"task.{name} is {type(value).__name__}, not a callable")
    epochs = getattr(task, "epochs", 1)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise TaskError(f"task.epochs must be a positive int, got {epochs!r}")
    torch.manual_seed(seed)
    model = _call("task.model(seed)", task.model, seed)
    if not isinstance(model, torch.nn.Module):
        raise TaskError(f"task.model(seed) returned {type(model).__name__}, not an nn.Module")
    batches = _call("task.train_batches(seed)", task.train_batches, seed)
    try:
        iterator = iter(batches)
    except TypeError:
        raise TaskError(f"task.train_batches(seed) returned {type(batches).__name__}, not an iterable "
                        "of (inputs, targets)") from None
    items = _call("iterating task.train_batches(seed)", list, iterator)
    if not items:
        raise TaskError("task.train_batches(seed) yielded no batches")
    first = items[0]
    if not (isinstance(first, (tuple, list)) and len(first) == 2):
        raise TaskError("task.train_batches(seed) must yield (inputs, targets) pairs; its first item is "
                       f"{_describe(first)}")
    outputs = _call("model(inputs) on the first batch", model, first[0])
    loss = _call("task.loss(outputs, targets)", task.loss, outputs, first[1])
    if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.is_floating_point()):
        raise TaskError(f"task.loss(outputs, targets) returned {_describe(loss)}, not a scalar float tensor")
    if not loss.requires_grad:
        raise TaskError("task.loss(outputs, targets) does not depend on the model's parameters (no grad)")
    names: list[str] = []
    if getattr(task, "evaluate", None) is not None:
        metrics = _evaluate(task, model)
        names = list(metrics)
    return _Probe((first[0], first[1]), len(items), names)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {tuple(value.shape)} {str(value.dtype).replace('torch.', '')} tensor"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of length {len(value)}"
    return type(value).__name__


def _evaluate(task: Task, model: torch.nn.Module) -> dict[str, float]:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        metrics = _call("task.evaluate(model)", task.evaluate, model)
    model.train(was_training)
    if not isinstance(metrics, dict) or not metrics:
        raise TaskError(f"task.evaluate(model) returned {_describe(metrics)}, not a non-empty dict of named numbers")
    out = {}
    for key, value in metrics.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise TaskError(f"task.evaluate(model)[{key!r}] is {_describe(value)}, not a number") from None
    return out


# ---------------------------------------------------------------------------------------------
# training


def _mode(opt: Any, train: bool) -> None:
    """Schedule-Free optimizers keep two sets of weights: train mode for steps, eval mode for
    evaluating (their ``train()`` / ``eval()``); other optimizers have no such switch."""
    switch = getattr(opt, "train" if train else "eval", None)
    if callable(switch):
        switch()


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def _state_bytes(opt: Any) -> int:
    total = 0
    for state in opt.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total


def _accuracy(outputs: Any, targets: Any) -> tuple[int, int] | None:
    if (isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor) and outputs.ndim == 2
            and targets.ndim == 1 and len(targets) == len(outputs) and not targets.is_floating_point()):
        return int((outputs.argmax(1) == targets).sum()), len(targets)
    return None


def _train(task: Task, setup: Any, seed: int, epochs: int, steps_per_epoch: int, target: float | None,
           bar: Any) -> SeedRun:

    torch.manual_seed(seed)
    model = task.model(seed)
    model.train()
    opt = setup.make_optimizer(param_groups(model))
    scheduler = ScheduledLR(opt, setup.schedule) if setup.schedule is not None else None
    run = SeedRun(seed=seed, lr=float(opt.param_groups[0]["lr"]))
    _mode(opt, True)
    for epoch in range(epochs):
        epoch_seed = _epoch_seed(seed, epoch)
        torch.manual_seed(epoch_seed)
        total, count, correct, seen, steps = 0.0, 0, 0, 0, 0
        start = time.perf_counter()
        for inputs, targets in task.train_batches(epoch_seed):
            if steps == steps_per_epoch:
                raise TaskError(f"task.train_batches(seed) yielded more than the {steps_per_epoch} batches of "
                                "its first epoch: every epoch must have the same number")
            opt.zero_grad()
            outputs = model(inputs)
            loss = task.loss(outputs, targets)
            loss.backward()
            run.lrs.append(float(opt.param_groups[0]["lr"]))
            t = time.perf_counter()
            opt.step()
            run.step_s += time.perf_counter() - t
            if scheduler is not None:
                scheduler.step()
            value = loss.item()
            run.losses.append(value)
            total += value
            count += 1
            acc = _accuracy(outputs, targets) if epoch == epochs - 1 else None
            if acc is not None:
                correct, seen = correct + acc[0], seen + acc[1]
            steps += 1
            run.seconds.append(run.wall_s + time.perf_counter() - start)
            if bar is not None:
                bar.update()
        run.wall_s += time.perf_counter() - start
        if steps != steps_per_epoch:
            raise TaskError(f"task.train_batches(seed) yielded {steps} batches in epoch {epoch + 1} and "
                            f"{steps_per_epoch} in the first: every epoch must have the same number")
        record = {"step": float(len(run.losses)), "seconds": run.wall_s, "train_loss": total / count}
        if getattr(task, "evaluate", None) is not None:
            _mode(opt, False)
            record.update(_evaluate(task, model))
            _mode(opt, True)
        run.epochs.append(record)
        if target is not None and run.steps_to_target is None:
            watched = record.get("val_loss", record["train_loss"])
            if watched <= target:
                run.steps_to_target, run.seconds_to_target = len(run.losses), run.wall_s
        if bar is not None:
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    run.train_loss = run.epochs[-1]["train_loss"]
    run.train_acc = correct / seen if seen else None
    run.metrics = {k: v for k, v in run.epochs[-1].items() if k not in ("step", "seconds", "train_loss")}
    run.state_bytes = _state_bytes(opt)
    return run


def _scaled(setup: Any, factor: float) -> Any:
    """``setup`` with its lr and whole schedule multiplied by ``factor``."""

    kwargs = dict(setup.kwargs)
    kwargs["lr"] = float(kwargs.get("lr", default_lr(setup.optimizer))) * factor
    schedule = None if setup.schedule is None else Scaled(setup.schedule, factor)
    spec = None if setup.schedule_spec is None else f"{factor:.3g}*{setup.schedule_spec}"
    return replace(setup, kwargs=kwargs, schedule=schedule, schedule_spec=spec)


def _score(run: SeedRun) -> float:
    value = run.metrics.get("val_loss", run.train_loss)
    return value if math.isfinite(value) else math.inf


def resolve_task(task: Task | str) -> Task:
    """A :class:`Task` from a Task or a built-in task's name (``digits-mlp``)."""
    if isinstance(task, str):
        if task not in BUILTIN_TASKS:
            raise TaskError(f"unknown built-in task {task!r}; choose from {', '.join(BUILTIN_TASKS)}")
        return BUILTIN_TASKS[task]()
    return task


def compare(
    setups: Sequence[str] | None = None,
    task: Task | str = "digits-mlp",
    *,
    epochs: int | None = None,
    seeds: int | Iterable[int] = 1,
    tune_lr: bool = False,
    tune_fraction: float = TUNE_FRACTION,
    target: float | None = None,
    bar: Callable[..., Any] | None = None,
) -> Comparison:
    """Train ``task`` with each setup and return a :class:`Comparison`.

    ``setups``: preset names or ``Optimizer(...)+schedule(...)`` strings (see
    :mod:`torchstep.setups`); default all presets. ``task``: a :class:`~torchstep.tasks.Task` or a
    built-in task's name. ``epochs``: the budget per run (default ``task.epochs``). ``seeds``: a count
    (seeds 0..N-1) or the seeds themselves. ``tune_lr``: pick each setup's lr on a log-grid first
    (module docstring), each grid run lasting ``tune_fraction`` of the epochs (at least one).
    ``target``: the validation loss whose first crossing is timed. ``bar``: a tqdm-like class, or
    None for no progress: one bar, ``bar(total=..., desc=...)``, counts every training step of the
    comparison (tuning runs included), so its ETA is the whole comparison's; its description names
    the current run (``set_description``) and its postfix the last epoch's loss.

    Raises :class:`TaskError` for a task that does not follow the protocol and
    :class:`torchstep.setups.SetupError` for a setup that cannot be built.
    """

    task = resolve_task(task)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("seeds must name at least one seed")
    probe = check_task(task, seed_list[0])
    epochs = int(epochs if epochs is not None else getattr(task, "epochs", 1))
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not 0 < tune_fraction <= 1:
        raise ValueError(f"tune_fraction must be in (0, 1], got {tune_fraction}")
    steps = epochs * probe.steps_per_epoch
    texts = list(setups) if setups else list(PRESETS)
    parsed = [parse_setup(text, steps) for text in texts]
    for setup in parsed:
        _warm_up(task, setup, probe, seed_list[0])
    tune_epochs = max(1, round(epochs * tune_fraction)) if tune_lr else None
    tune_steps = 0 if tune_epochs is None else tune_epochs * probe.steps_per_epoch
    n_runs = len(parsed) * (len(seed_list) + (len(TUNE_FACTORS) if tune_lr else 0))
    total = len(parsed) * (len(seed_list) * steps + len(TUNE_FACTORS) * tune_steps)
    # one bar over the whole comparison (every tuning run and seed of every setup): its ETA is the rest's
    b = None if bar is None else bar(total=total, desc="compare")
    done = 0

    def started(what: str) -> None:
        nonlocal done
        done += 1
        if b is not None:
            b.set_description(f"run {done}/{n_runs} {what}", refresh=False)

    results = []
    for text, setup in zip(texts, parsed):
        tuning = None
        if tune_lr:
            short = parse_setup(text, tune_steps)
            tuning, best = [], (math.inf, 1.0)
            for factor in TUNE_FACTORS:
                candidate = _scaled(short, factor)
                started(f"{setup.label} tune lr={_lr_of(candidate):.3g}")
                run = _train(task, candidate, seed_list[0], tune_epochs, probe.steps_per_epoch, None, b)
                tuning.append((_lr_of(candidate), _score(run)))
                best = min(best, (_score(run), factor))
            setup = _scaled(setup, best[1])
        result = SetupResult(setup.label, setup.describe(), _lr_of(setup), tuning=tuning)
        for seed in seed_list:
            started(setup.label if len(seed_list) == 1 else f"{setup.label} seed {seed}")
            result.runs.append(_train(task, setup, seed, epochs, probe.steps_per_epoch, target, b))
        results.append(result)
    if b is not None:
        b.close()
    return Comparison(task=str(getattr(task, "name", "task")), epochs=epochs, steps=steps, seeds=seed_list, target=target, tuned=tune_lr,
                      tune_epochs=tune_epochs, setups=results, metric_names=probe.metric_names)


def _lr_of(setup: Any) -> float:

    return float(setup.kwargs.get("lr", default_lr(setup.optimizer)))


def _warm_up(task: Task, setup: Any, probe: _Probe, seed: int) -> None:
    """One step on a throwaway model: checks the optimizer's arguments before any run starts, and
    compiles (or loads) the fused kernel outside the timing."""

    torch.manual_seed(seed)
    model = task.model(seed)
    opt = setup.make_optimizer(param_groups(model))
    task.loss(model(probe.batch[0]), probe.batch[1]).backward()
    _mode(opt, True)
    try:
        opt.step()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SetupError(f"{setup.label}: {setup.optimizer}.step() failed: {' '.join(str(exc).split())}") from None
