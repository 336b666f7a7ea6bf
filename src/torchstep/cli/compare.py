"""``torchstep compare``: train a task (the digits MLP, or yours with ``--task``) with several optimizer +
schedule setups, over seeds, optionally tuning each lr; table and PNG. A thin layer over
:func:`torchstep.compare`."""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys

import torch

from torchstep.comparison import (  # noqa: F401
    TUNE_FACTORS,
    TUNE_FRACTION,
    Comparison,
    TaskError,
    _mode,
    compare,
)
from torchstep.lr_finder import ema

from ..setups import EXTRA_PRESETS, PRESETS, SetupError
from .errors import UserError
from .output import check_minimums, load_task, progress_bars, require, writable


def add_parser(sub: argparse._SubParsersAction) -> None:
    presets = "\n".join(f"  {name:<19} {spec}" for name, spec in PRESETS.items())
    presets += "\nMore presets (by name): " + ", ".join(EXTRA_PRESETS)
    p = sub.add_parser(
        "compare",
        help="train a model (digits MLP, or your --task) with several optimizer + schedule setups; table and plot",
        description="Trains a task once per setup and seed -- by default the MLP 64-64-10 on scikit-learn's "
        "digits (1,797 8x8 images shipped with scikit-learn, no download; 80/20 train/validation split), or "
        "your own with --task package.module:factory (a function of no arguments returning a torchstep.Task) "
        "-- then prints, as mean ± std over the seeds: the lr, the final train loss (mean of the last epoch) "
        "and accuracy, the task's validation metrics, steps and seconds to reach --target, the optimizer "
        "state's bytes, the training time and the share of it spent in optimizer.step; and writes a PNG of "
        "the loss (against steps and seconds, bands over seeds) and lr curves. "
        "Parameters are grouped with torchstep.param_groups (no weight decay on biases). "
        f"--tune-lr first trains each setup with its lr (and schedule) scaled by "
        f"{', '.join(f'{f:.3g}' for f in TUNE_FACTORS)} for {TUNE_FRACTION:g} of the epochs on the first seed, "
        "and keeps the one with the lowest final val_loss: the same tuning budget for every setup.",
        epilog="A setup is a preset name or Optimizer(args)[+schedule(args)], e.g.\n"
        "  --setup 'AdamW(lr=3e-3, weight_decay=0.05)+warmup_cosine(warmup=0.1)'\n"
        "Schedules count optimizer steps; peak/max_lr default to the optimizer's lr, total/T_max/"
        "total_steps to the run's steps, and warmup < 1 is a fraction of the run.\n"
        f"Presets (the default runs all):\n{presets}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", default="digits-mlp", metavar="TASK",
                   help="a built-in task -- digits-mlp (the default), digits-cnn (a small conv net, channels_last), "
                   "charlm (a character-level transformer on the standard library's source; reports val bpc) -- "
                   "or package.module:factory returning a torchstep.Task")
    p.add_argument("--setup", action="append", metavar="SETUP",
                   help="a preset name or Optimizer(...)+schedule(...); repeat for several (default: all presets)")
    p.add_argument("--epochs", type=int, help="epochs per run (default: the task's: 30 for digits-mlp, 15 for "
                   "digits-cnn, 8 of 100 steps for charlm)")
    p.add_argument("--batch-size", type=int, help="batch size of a built-in task (default 32; 16 for charlm)")
    p.add_argument("--seeds", type=int, default=1, help="runs per setup, seeds --seed ... --seed+N-1; the table "
                   "shows mean ± std (default 1)")
    p.add_argument("--seed", type=int, default=0, help="the first seed (initial weights and batch order; default 0)")
    p.add_argument("--tune-lr", action="store_true", help="pick each setup's lr on a small log-grid first")
    p.add_argument("--target", type=float, metavar="LOSS",
                   help="report the steps and seconds each run takes to reach this validation loss")
    p.add_argument("--threads", type=int, default=1, help="torch threads; the model is tiny, so 1 is fastest (default 1)")
    p.add_argument("--plot", default="compare.png", metavar="PNG", help="where to write the curves (default compare.png)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument("--json", metavar="PATH", help="also write every run's curves and metrics as JSON")
    p.add_argument("--markdown", action="store_true", help="print only Markdown on stdout, for pasting: the run's "
                   "summary, the table and a link to the PNG (progress and notes go to stderr)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one bar over the whole comparison, "
                   "with its ETA)")


def table(comparison: Comparison) -> str:
    return comparison.table()


def _band(curves: list[list[float]]) -> tuple[list[float], list[float], list[float]]:
    mean = [sum(c[i] for c in curves) / len(curves) for i in range(len(curves[0]))]
    return mean, [min(c[i] for c in curves) for i in range(len(mean))], [max(c[i] for c in curves) for i in range(len(mean))]


def figure(comparison: Comparison, title: str):
    """The comparison's figure: loss vs step, loss vs training seconds (min-max bands over the seeds
    when there are several) and the lr curves, three panels in one row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    step_ax, time_ax, lr_ax = fig.subplots(1, 3)
    for i, s in enumerate(comparison.setups):
        color = f"C{i % 10}"
        smooth = [[v if math.isfinite(v) else float("nan") for v in ema(r.losses, 0.9)] for r in s.runs]
        mean, low, high = _band(smooth)
        seconds = _band([r.seconds for r in s.runs])[0]
        steps = range(1, len(mean) + 1)
        step_ax.plot(steps, mean, label=s.label, color=color, linewidth=1.4)
        time_ax.plot(seconds, mean, color=color, linewidth=1.4)
        if len(s.runs) > 1:  # the spread over seeds
            step_ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
            time_ax.fill_between(seconds, low, high, color=color, alpha=0.2, linewidth=0)
        lr_ax.plot(steps, s.runs[0].lrs, label=s.label, color=color, linewidth=1.4)
    band = f"; band: min-max over {len(comparison.seeds)} seeds" if len(comparison.seeds) > 1 else ""
    step_ax.set(yscale="log", xlabel="step", ylabel="training loss (EMA, beta 0.9)", title=title + band)
    time_ax.set(yscale="log", xlabel="training seconds", ylabel="training loss (EMA, beta 0.9)", title="loss vs wall-clock")
    peaks = [max(s.runs[0].lrs) for s in comparison.setups if s.runs[0].lrs and max(s.runs[0].lrs) > 0]
    lr_ax.set(yscale="log", xlabel="step", ylabel="learning rate (group 0)", title="learning rate")
    if peaks:  # decays to 0 would stretch a log axis down to 1e-9: show three decades below the lowest peak
        lr_ax.set_ylim(bottom=min(peaks) / 1e3, top=max(peaks) * 2)
    for ax in (step_ax, time_ax, lr_ax):
        ax.grid(True, alpha=0.3, which="both")
    lr_ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def plot(comparison: Comparison, path, title: str) -> None:
    figure(comparison, title).savefig(path, format="png", bbox_inches="tight")


def run(args: argparse.Namespace) -> int:
    check_minimums(args, epochs=1, batch_size=1, threads=1, seeds=1)
    tqdm = progress_bars("compare", not args.no_progress)
    png = None if args.no_plot else writable(args.plot, "plot")
    if png is not None:
        require("matplotlib", "torchstep compare's plot")
    out_json = writable(args.json, "JSON")
    torch.set_num_threads(args.threads)
    task = load_task(args.task, args.batch_size)
    bar = functools.partial(tqdm, unit="step", file=sys.stderr, disable=args.no_progress, mininterval=0.25,
                            leave=True, dynamic_ncols=True)
    try:
        result = compare(args.setup, task, epochs=args.epochs, seeds=range(args.seed, args.seed + args.seeds),
                         tune_lr=args.tune_lr, target=args.target, bar=bar)
    except SetupError as exc:
        raise UserError(str(exc)) from None
    except TaskError as exc:
        raise UserError(f"--task {args.task!r}: {exc}") from None
    tuned = f"; lr tuned per setup: x{', x'.join(f'{f:.3g}' for f in TUNE_FACTORS)} for {result.tune_epochs} " \
            "epoch(s) each on the first seed" if result.tuned else ""
    summary = (f"{result.task}: {result.epochs} epochs x {result.steps // result.epochs} steps, "
               f"{len(result.seeds)} seed(s), {args.threads} thread(s){tuned}")
    notes = sys.stderr if args.markdown else sys.stdout
    print(f"*{summary}*\n" if args.markdown else f"{summary}\n")
    print(result.table())
    if png is not None:
        plot(result, png, f"{args.task}, {result.epochs} epochs")
        print(f"\n![compare]({png})" if args.markdown else f"\nwrote {png}")
    if out_json is not None:
        out_json.write_text(json.dumps(result.to_dict()))
        print(f"wrote {out_json}", file=notes)
    return 0
