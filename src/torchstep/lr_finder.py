"""The learning-rate range test (Smith, "Cyclical Learning Rates for Training Neural Networks",
arXiv:1506.01186, sec. 3.3): train for a few steps while the lr grows exponentially, watch the loss.

At step :math:`i` of :math:`n` (``num_steps``) the lr is

.. math::
    \\eta_i = \\eta_{start} \\, (\\eta_{end} / \\eta_{start})^{i / (n - 1)}

(``start_lr``, ``end_lr``), for group 0; other groups keep their lr ratio to group 0. The
recorded loss is smoothed by a bias-corrected exponential moving average with coefficient
``beta``:

.. math::
    a_i = \\beta a_{i-1} + (1 - \\beta) \\ell_i \\qquad s_i = a_i / (1 - \\beta^{i+1})

The sweep stops early when :math:`s_i > ` ``diverge`` :math:`\\times \\min_{j \\le i} s_j`, or
when a loss is not finite. That average lags the loss by about :math:`\\beta / (1 - \\beta)` steps,
so once the sweep is over the same average is also run backwards over :math:`s` (zero-phase
smoothing, no lag): those are the ``smoothed`` losses the suggestion and the plot use. The
suggestion follows ``rule``:

* ``"steepest"`` -- the lr where the smoothed loss falls fastest against :math:`\\log \\eta`
  (the most negative central difference), ignoring the first ``skip_start`` points and the
  points after the minimum of the smoothed loss;
* ``"min/10"`` -- a tenth of the lr at the minimum of the smoothed loss.

Afterwards the model (parameters, buffers, gradients, train/eval mode), the optimizer (its
state_dict, lr included) and the random number generators are as they were before.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from .core import check

__all__ = ["lr_find", "LRFindResult", "RULES", "DIVERGE", "check_sweep", "suggest", "ema"]

RULES = ("steepest", "min/10")
DIVERGE = 4.0  # stop once the smoothed loss exceeds this many times its minimum


@dataclass
class LRFindResult:
    """What the sweep saw: ``lrs``, raw ``losses`` and ``smoothed`` losses (equal lengths), the
    ``suggestion`` (``None`` when too few points were recorded, or, for ``"steepest"``, when the
    loss never fell), the ``rule`` that chose it, and
    why the sweep stopped (``stop_reason``)."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggestion: float | None = None
    rule: str = "steepest"
    stop_reason: str = "reached end_lr"

    def plot(self, path: Any, *, title: str | None = None) -> Any:
        """Save a PNG of loss against lr (log scale), with the suggestion marked; returns ``path``."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as err:
            raise ImportError("plotting needs matplotlib: pip install 'torchstep[plot]'") from err
        figure = Figure(figsize=(7, 4.5), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.plot(self.lrs, self.losses, color="0.7", linewidth=1, label="loss")
        axes.plot(self.lrs, self.smoothed, color="C0", linewidth=1.8, label="smoothed loss")
        if self.suggestion is not None:
            axes.axvline(self.suggestion, color="C3", linestyle="--",
                         label=f"suggested lr {self.suggestion:.3g} ({self.rule})")
        axes.set_xscale("log")
        axes.set_xlabel("learning rate")
        axes.set_ylabel("loss")
        if self.smoothed:  # from the lowest loss to a little above the first: the divergent tail is cut
            low, high = min(self.smoothed), self.smoothed[0]
            span = max(high - low, 0.05 * abs(high), 1e-12)
            axes.set_ylim(low - 0.1 * span, high + 0.5 * span)
        axes.set_title(title or "LR range test")
        axes.grid(True, alpha=0.3, which="both")
        axes.legend(fontsize="small")
        figure.savefig(path, format="png", bbox_inches="tight")
        return path


def suggest(lrs: list[float], smoothed: list[float], rule: str, skip_start: int) -> float | None:
    """The suggested lr from a sweep's smoothed losses under ``rule`` (see the module docstring)."""
    if rule not in RULES:
        raise ValueError(f"Invalid rule: {rule!r} (rule must be one of {RULES})")
    if len(smoothed) < 3:
        return None
    best = min(range(len(smoothed)), key=smoothed.__getitem__)
    if rule == "min/10":
        return lrs[best] / 10
    if best < 2:
        return None  # the loss never fell: there is no descent to measure
    slope = {i: (smoothed[i + 1] - smoothed[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1]))
             for i in range(max(1, min(skip_start, best - 1)), best)}
    return lrs[min(slope, key=slope.__getitem__)]


def _batches(data: Iterable[Any]) -> Iterable[Any]:
    """Batches from ``data`` for as long as asked, starting it again when it runs out."""
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty or iter(data) is data:  # nothing at all, or a one-shot iterator: done
            return


def ema(values: list[float], beta: float) -> list[float]:
    """The bias-corrected exponential moving average of ``values`` (see the module docstring)."""
    out, average = [], 0.0
    for i, v in enumerate(values):
        average = beta * average + (1 - beta) * v
        out.append(average / (1 - beta ** (i + 1)))
    return out


def _set_lrs(optimizer: Any, lr: float, ratios: list[float]) -> None:
    for group, ratio in zip(optimizer.param_groups, ratios):
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr * ratio)
        else:
            group["lr"] = lr * ratio


def _sweep(model, optimizer, loss_fn, data, lrs, beta, diverge, result) -> None:
    ratios = [float(g["lr"]) / float(optimizer.param_groups[0]["lr"]) if float(optimizer.param_groups[0]["lr"])
              else 1.0 for g in optimizer.param_groups]
    model.train()
    average, best = 0.0, math.inf
    batches = iter(_batches(data))
    for i, lr in enumerate(lrs):
        batch = next(batches, None)
        if batch is None:
            result.stop_reason = "data ran out"
            return
        inputs, target = batch
        _set_lrs(optimizer, lr, ratios)
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), target)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            result.stop_reason = f"loss not finite at lr {lr:.3g}"
            return
        average = beta * average + (1 - beta) * value
        smooth = average / (1 - beta ** (i + 1))
        result.lrs.append(lr)
        result.losses.append(value)
        best = min(best, smooth)
        if smooth > diverge * best:
            result.stop_reason = f"diverged at lr {lr:.3g} (smoothed loss > {diverge:g} x its minimum)"
            return


def check_sweep(start_lr: float, end_lr: float, num_steps: int, beta: float, diverge: float, rule: str) -> None:
    """Raise ValueError for sweep settings :func:`lr_find` cannot use."""
    check.positive(start_lr, "start_lr", "start_lr value")
    if not end_lr > start_lr:
        raise ValueError(f"Invalid end_lr: {end_lr} (end_lr must be > start_lr={start_lr})")
    if not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"Invalid num_steps: {num_steps} (num_steps must be an int >= 2)")
    check.in_range(beta, "beta", "beta value", 0.0, 1.0, high_open=True)
    if not diverge > 1:
        raise ValueError(f"Invalid diverge: {diverge} (diverge must be > 1: a factor over the best loss)")
    if rule not in RULES:
        raise ValueError(f"Invalid rule: {rule!r} (rule must be one of {RULES})")


def lr_find(
    model: torch.nn.Module,
    optimizer: Any,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    data: Iterable[Any],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    beta: float = 0.8,
    diverge: float = DIVERGE,
    rule: str = "steepest",
    skip_start: int = 5,
    plot: Any = None,
) -> LRFindResult:
    """Run the LR range test and return an :class:`LRFindResult` (see the module docstring).

    ``data`` yields ``(inputs, target)`` batches; the loss of a batch is
    ``loss_fn(model(inputs), target)``. A re-iterable ``data`` (a list, a ``DataLoader``) starts
    again when it runs out; a one-shot iterator ends the sweep. ``plot`` is a path to save the
    loss-against-lr PNG to. Model, optimizer and RNG state are restored afterwards, also when the
    sweep raises.
    """
    check_sweep(start_lr, end_lr, num_steps, beta, diverge, rule)
    lrs = [start_lr * (end_lr / start_lr) ** (i / (num_steps - 1)) for i in range(num_steps)]
    result = LRFindResult(rule=rule)

    model_state = copy.deepcopy(model.state_dict())
    grads = [(p, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()]
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    was_training = model.training
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):
            _sweep(model, optimizer, loss_fn, data, lrs, beta, diverge, result)
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        for p, grad in grads:
            p.grad = grad
        model.train(was_training)
    result.smoothed = ema(ema(result.losses, beta)[::-1], beta)[::-1]
    result.suggestion = suggest(result.lrs, result.smoothed, rule, skip_start)
    if plot is not None:
        result.plot(plot)
    return result
