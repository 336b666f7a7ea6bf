"""``torchstep compare``: train the digits MLP with several optimizer + schedule setups; table and PNG."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from torchstep.lr_finder import ema
from torchstep.optim.lr_scheduler import ScheduledLR
from torchstep.params import param_groups
from torchstep.tasks import digits_model

from .errors import UserError
from .output import check_minimums, digits_data, markdown_table, progress_bars, require, writable
from .setups import EXTRA_PRESETS, PRESETS, SetupError, parse_setup


DEFAULT_EPOCHS = 30
DEFAULT_BATCH = 32


@dataclass
class Run:
    label: str
    spec: str
    losses: list[float] = field(default_factory=list)  # per step
    lrs: list[float] = field(default_factory=list)  # group 0's lr used at each step
    final_loss: float = float("nan")  # mean over the last epoch
    val_loss: float = float("nan")
    val_accuracy: float = float("nan")
    wall_s: float = 0.0
    step_s: float = 0.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    presets = "\n".join(f"  {name:<19} {spec}" for name, spec in PRESETS.items())
    presets += "\nMore presets (by name): " + ", ".join(EXTRA_PRESETS)
    p = sub.add_parser(
        "compare",
        help="train a small model on digits with several optimizer + schedule setups; table and plot",
        description="Trains the same MLP (64-64-10) on scikit-learn's digits (1,797 8x8 images shipped with "
        "scikit-learn, no download; 80/20 train/validation split) once per setup, then prints the final "
        "train loss (mean of the last epoch), validation loss and accuracy, wall time and the share of it "
        "spent in optimizer.step, and writes a PNG of the loss and lr curves. "
        "Parameters are grouped with torchstep.param_groups (no weight decay on biases).",
        epilog="A setup is a preset name or Optimizer(args)[+schedule(args)], e.g.\n"
        "  --setup 'AdamW(lr=3e-3, weight_decay=0.05)+warmup_cosine(warmup=0.1)'\n"
        "Schedules count optimizer steps; peak/max_lr default to the optimizer's lr, total/T_max/"
        "total_steps to the run's steps, and warmup < 1 is a fraction of the run.\n"
        f"Presets (the default runs all):\n{presets}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--setup", action="append", metavar="SETUP",
                   help="a preset name or Optimizer(...)+schedule(...); repeat for several (default: all presets)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"epochs per setup (default {DEFAULT_EPOCHS})")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help=f"batch size (default {DEFAULT_BATCH})")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and batch order (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads; the model is tiny, so 1 is fastest (default 1)")
    p.add_argument("--plot", default="compare.png", metavar="PNG", help="where to write the curves (default compare.png)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument("--json", metavar="PATH", help="also write every run's per-step losses and lrs as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _mode(opt, train: bool) -> None:
    """Schedule-Free optimizers keep two sets of weights: train mode for steps, eval mode for
    evaluating (their ``train()`` / ``eval()``); other optimizers have no such switch."""
    switch = getattr(opt, "train" if train else "eval", None)
    if callable(switch):
        switch()


def _warm_up(setup, data) -> None:
    """One step on a throwaway model: checks the optimizer's arguments before any run starts, and
    compiles (or loads) the fused kernel outside the timing."""
    model = digits_model()
    opt = setup.make_optimizer(param_groups(model))
    torch.nn.functional.cross_entropy(model(data.x_train[:8]), data.y_train[:8]).backward()
    _mode(opt, True)
    try:
        opt.step()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SetupError(f"{setup.label}: {setup.optimizer}.step() failed: {' '.join(str(exc).split())}") from None


def _train(setup, data, args, tqdm) -> Run:
    run = Run(setup.label, setup.describe())
    model = digits_model(seed=args.seed)
    opt = setup.make_optimizer(param_groups(model))
    scheduler = ScheduledLR(opt, setup.schedule) if setup.schedule is not None else None
    gen = torch.Generator().manual_seed(args.seed)
    n = len(data.x_train)
    per_epoch = -(-n // args.batch_size)
    bar = tqdm(total=args.epochs * per_epoch, desc=setup.label, unit="step", file=sys.stderr,
               disable=args.no_progress, mininterval=0.25, leave=True)
    start = time.perf_counter()
    _mode(opt, True)
    for _ in range(args.epochs):
        order = torch.randperm(n, generator=gen)
        for first in range(0, n, args.batch_size):
            idx = order[first:first + args.batch_size]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            loss.backward()
            run.lrs.append(float(opt.param_groups[0]["lr"]))
            t = time.perf_counter()
            opt.step()
            run.step_s += time.perf_counter() - t
            if scheduler is not None:
                scheduler.step()
            run.losses.append(loss.item())
            bar.update()
        bar.set_postfix(loss=f"{sum(run.losses[-per_epoch:]) / per_epoch:.4f}", refresh=False)
    run.wall_s = time.perf_counter() - start
    bar.close()
    run.final_loss = sum(run.losses[-per_epoch:]) / per_epoch
    _mode(opt, False)
    with torch.no_grad():
        logits = model(data.x_val)
    run.val_loss = torch.nn.functional.cross_entropy(logits, data.y_val).item()
    run.val_accuracy = (logits.argmax(1) == data.y_val).float().mean().item()
    return run


def table(runs: list[Run]) -> str:
    rows = [[r.label, f"{r.final_loss:.4f}", f"{r.val_loss:.4f}", f"{r.val_accuracy:.3f}", f"{r.wall_s:.2f}",
             f"{100 * r.step_s / r.wall_s:.0f}%"] for r in runs]
    return markdown_table(["setup", "final train loss", "val loss", "val acc", "wall s", "optimizer.step share"], rows,
                          [False, True, True, True, True, True])


def plot(runs: list[Run], path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    loss_ax, lr_ax = figure.subplots(1, 2)
    for i, r in enumerate(runs):
        loss_ax.plot(ema(r.losses, 0.9), label=r.label, color=f"C{i % 10}", linewidth=1.4)
        lr_ax.plot(r.lrs, label=r.label, color=f"C{i % 10}", linewidth=1.4)
    loss_ax.set(yscale="log", xlabel="step", ylabel="training loss (EMA, beta 0.9)", title=title)
    peaks = [max(r.lrs) for r in runs if r.lrs and max(r.lrs) > 0]
    lr_ax.set(yscale="log", xlabel="step", ylabel="learning rate (group 0)", title="learning rate")
    if peaks:  # decays to 0 would stretch a log axis down to 1e-9: show three decades below the lowest peak
        lr_ax.set_ylim(bottom=min(peaks) / 1e3, top=max(peaks) * 2)
    for ax in (loss_ax, lr_ax):
        ax.grid(True, alpha=0.3, which="both")
    lr_ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    figure.savefig(path, format="png", bbox_inches="tight")


def run(args: argparse.Namespace) -> int:
    check_minimums(args, epochs=1, batch_size=1, threads=1)
    tqdm = progress_bars("compare", not args.no_progress)
    png = None if args.no_plot else writable(args.plot, "plot")
    if png is not None:
        require("matplotlib", "torchstep compare's plot")
    out_json = writable(args.json, "JSON")
    torch.set_num_threads(args.threads)
    data = digits_data()
    steps = args.epochs * -(-len(data.x_train) // args.batch_size)
    try:
        setups = [parse_setup(text, steps) for text in (args.setup or list(PRESETS))]
        for setup in setups:
            _warm_up(setup, data)
        runs = [_train(s, data, args, tqdm) for s in setups]
    except SetupError as exc:
        raise UserError(str(exc)) from None
    print(f"digits: {len(data.x_train)} train / {len(data.x_val)} validation images, MLP 64-64-10, "
          f"{args.epochs} epochs x {steps // args.epochs} steps, batch {args.batch_size}, {args.threads} thread(s)\n")
    print(table(runs))
    if png is not None:
        plot(runs, png, f"digits MLP, {args.epochs} epochs")
        print(f"\nwrote {png}")
    if out_json is not None:
        out_json.write_text(json.dumps([asdict(r) for r in runs]))
        print(f"wrote {out_json}")
    return 0
