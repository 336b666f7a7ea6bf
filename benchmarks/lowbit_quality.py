"""Training quality of low-bit optimizer state and bfloat16 weights, against float32.

What it measures, on the built-in ``torchstep compare`` tasks (digits-mlp, digits-cnn, charlm),
with the same seeds, data order and step budget for every variant (``torchstep.compare`` runs
them all; only the setup string or the model's dtype changes):

1. *Optimizer state*: AdamW with float32 state (the baseline), ``state_dtype="int8"`` (block-wise
   8-bit) and ``state_dtype=torch.bfloat16``, all on float32 weights. Reported: the final
   validation loss per seed, their mean, and the relative difference of each mean from the
   baseline's, and per seed from the same seed's baseline run (target: within 2 %).
2. *bfloat16 weights*: the model converted with ``.to(torch.bfloat16)`` (floating inputs cast to
   bfloat16 on the way in, outputs cast back to float32 for the loss and the evaluation), trained
   by AdamW writing the weights rounded to nearest, with ``stochastic_rounding=True`` (which also
   rounds the bfloat16 state stochastically), with ``kahan=True``, and with each of those two and
   ``state_dtype='float32'``; compared with the same AdamW on float32 weights. The lr is small
   (``--bf16-lr``, default 1e-4) so that most updates are below half a bfloat16 step of the
   weights and round-to-nearest stalls. Reported: the final validation losses, the relative
   differences from float32 weights and the validation-loss curve (every epoch). One more row,
   *float32 weights, evaluated in bf16*, is the float32-weight run's model copied to bfloat16 and
   evaluated that way: the part of a gap that bfloat16 arithmetic alone accounts for. And
   *float32 weights, bfloat16 state* is part 1's bfloat16-state run at this lr: the part of a gap
   that bfloat16 state alone accounts for (a bfloat16 parameter's state is bfloat16 unless
   ``state_dtype='float32'``).

The digits tasks run their default budget (digits-mlp 30 epochs = 1350 steps, digits-cnn 15 =
675); charlm runs half of its default (8 epochs of 50 steps = 400 steps instead of 8 x 100) to fit
in 2 CPU cores: ``--charlm-steps-per-epoch 100`` restores it. Seeds 0, 1, 2 (``--seeds``).
Run (about 12 minutes on 2 CPU cores)::

    python benchmarks/lowbit_quality.py --json benchmarks/results/lowbit_quality.json \
        > benchmarks/results/lowbit_quality.md

``--tasks digits-mlp`` and ``--seeds 0`` make a quick check.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time

import torch

import torchstep
from torchstep.tasks import BUILTIN_TASKS, Task, charlm_task

BASE = "AdamW(lr={lr:g}, weight_decay=0.01{extra})"
STATE_VARIANTS = {"float32 state": "", "int8 state": ", state_dtype='int8'",
                  "bfloat16 state": ", state_dtype='bfloat16'"}
BF16_VARIANTS = {"bf16 weights, round to nearest": "", "bf16 weights, stochastic rounding":
                 ", stochastic_rounding=True", "bf16 weights, Kahan": ", kahan=True",
                 "bf16 weights, stochastic rounding, float32 state": ", stochastic_rounding=True, state_dtype='float32'",
                 "bf16 weights, Kahan, float32 state": ", kahan=True, state_dtype='float32'"}
FP32_WEIGHTS = "float32 weights"


class BF16Model(torch.nn.Module):
    """``inner`` in bfloat16: floating inputs are cast to bfloat16, outputs back to float32."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(torch.bfloat16) if x.is_floating_point() else x).float()


def bf16_task(task: Task) -> Task:
    return Task(model=lambda seed: BF16Model(task.model(seed)), train_batches=task.train_batches,
                loss=task.loss, evaluate=task.evaluate, epochs=task.epochs, name=task.name + ", bf16 weights")


def make_task(name: str, args: argparse.Namespace) -> Task:
    if name == "charlm":
        return charlm_task(epochs=args.charlm_epochs, steps_per_epoch=args.charlm_steps_per_epoch)
    return BUILTIN_TASKS[name]()


def with_bf16_eval(task: Task) -> Task:
    """``task`` whose evaluation also reports ``val_loss_bf16``: the validation loss of a bfloat16
    copy of the (float32) model -- how much of a gap is bfloat16 arithmetic alone."""

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        low = BF16Model(copy.deepcopy(model))
        return {**task.evaluate(model), "val_loss_bf16": task.evaluate(low)["val_loss"]}

    return Task(model=task.model, train_batches=task.train_batches, loss=task.loss, evaluate=evaluate,
                epochs=task.epochs, name=task.name)


def entry(spec: str, runs: list, metric: str) -> dict:
    finals = [r.metrics[metric] for r in runs]
    curve = [[int(runs[0].epochs[i]["step"]), [r.epochs[i][metric] for r in runs]] for i in range(len(runs[0].epochs))]
    return {"setup": spec, "val_loss": finals, "mean": statistics.fmean(finals), "curve": curve,
            "state_bytes": runs[0].state_bytes}


def run(task: Task, setups: dict[str, str], seeds: list[int]) -> tuple[dict, int]:
    """label -> {setup, val_loss per seed, mean, curve [(step, val_loss per seed)], state_bytes}; and
    the step count. A ``val_loss_bf16`` metric becomes one more entry, ``<label>, evaluated in bf16``."""
    comparison = torchstep.compare(list(setups.values()), task, seeds=seeds)
    out = {}
    for label, result in zip(setups, comparison.setups):
        out[label] = entry(result.spec, result.runs, "val_loss")
        if "val_loss_bf16" in result.runs[0].metrics:
            out[label + ", evaluated in bf16"] = entry(result.spec, result.runs, "val_loss_bf16")
    return out, comparison.steps


def add_relative(results: dict, baseline: str) -> None:
    """Relative difference of each mean from the baseline's, and of each seed from the same seed's."""
    base = results[baseline]
    for e in results.values():
        e["rel_diff"] = (e["mean"] - base["mean"]) / base["mean"]
        e["rel_diff_per_seed"] = [(v - b) / b for v, b in zip(e["val_loss"], base["val_loss"])]


def fmt(v: float) -> str:
    return f"{v:.4f}" if math.isfinite(v) else str(v)


def final_table(results: dict, seeds: list[int], state_bytes: bool) -> list[str]:
    head = ["variant", *(f"seed {s}" for s in seeds), "mean", "vs baseline (mean)", "vs baseline (per seed)"]
    head += ["state bytes"] if state_bytes else []
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for label, e in results.items():
        row = [label, *(fmt(v) for v in e["val_loss"]), fmt(e["mean"]), f"{100 * e['rel_diff']:+.2f} %",
               ", ".join(f"{100 * d:+.1f}" for d in e["rel_diff_per_seed"]) + " %"]
        lines.append("| " + " | ".join(row + ([str(e["state_bytes"])] if state_bytes else [])) + " |")
    return lines


def curve_table(results: dict, points: int = 8) -> list[str]:
    """Mean validation loss over the seeds at about ``points`` evenly spaced epoch ends."""
    n = len(next(iter(results.values()))["curve"])
    picks = sorted({round(i * (n - 1) / (points - 1)) for i in range(points)}) if n > points else range(n)
    labels = list(results)
    lines = ["| step | " + " | ".join(labels) + " |", "|---:" * (len(labels) + 1) + "|"]
    for i in picks:
        step = results[labels[0]]["curve"][i][0]
        lines.append(f"| {step} | " + " | ".join(fmt(statistics.fmean(results[k]["curve"][i][1])) for k in labels) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["digits-mlp", "digits-cnn", "charlm"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW lr of part 1 (state dtypes)")
    parser.add_argument("--bf16-lr", type=float, default=1e-4, help="AdamW lr of part 2 (bf16 weights)")
    parser.add_argument("--charlm-epochs", type=int, default=8, help="the task's default: 8")
    parser.add_argument("--charlm-steps-per-epoch", type=int, default=50, help="the task's default: 100")
    parser.add_argument("--json", help="also write every number and curve here")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    report = {"command": "python " + " ".join(sys.argv), "torch": torch.__version__, "seeds": args.seeds,
              "lr": args.lr, "bf16_lr": args.bf16_lr, "tasks": {}}
    md = ["# Low-bit optimizer state and bfloat16 weights: validation loss against float32", "",
          f"Command: `{report['command']}` (torch {torch.__version__}, {torch.get_num_threads()} threads).",
          "", "Final validation loss of `torchstep.compare` runs (same seeds, data order and steps for every "
          "variant); *vs baseline* is the relative difference of the mean over the seeds.", ""]
    for name in args.tasks:
        task = make_task(name, args)
        t0 = time.time()
        state, steps = run(task, {k: BASE.format(lr=args.lr, extra=v) for k, v in STATE_VARIANTS.items()}, args.seeds)
        add_relative(state, "float32 state")
        print(f"[{name}] part 1 done in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        t0 = time.time()
        weights, _ = run(with_bf16_eval(task), {FP32_WEIGHTS: BASE.format(lr=args.bf16_lr, extra="")}, args.seeds)
        control, _ = run(task, {FP32_WEIGHTS + ", bfloat16 state": BASE.format(lr=args.bf16_lr, extra=STATE_VARIANTS[
            "bfloat16 state"])}, args.seeds)
        weights.update(control)
        low, _ = run(bf16_task(task), {k: BASE.format(lr=args.bf16_lr, extra=v) for k, v in BF16_VARIANTS.items()},
                     args.seeds)
        weights.update(low)
        add_relative(weights, FP32_WEIGHTS)
        print(f"[{name}] part 2 done in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        report["tasks"][name] = {"task": task.name, "steps": steps, "state_dtype": state, "bf16_weights": weights}
        md += [f"## {name}", "", f"{task.name}; {steps} steps per run.", "",
               f"### 1. Optimizer state (float32 weights), `{BASE.format(lr=args.lr, extra='')}`", "",
               *final_table(state, args.seeds, True), "",
               f"### 2. bfloat16 weights, `{BASE.format(lr=args.bf16_lr, extra='')}`", "",
               *final_table(weights, args.seeds, False), "",
               "Validation loss (mean over the seeds) during training:", "", *curve_table(weights), ""]
    print("\n".join(md))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
