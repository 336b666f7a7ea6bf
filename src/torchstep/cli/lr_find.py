"""``torchstep lr-find``: the LR range test on the digits task or on a model of your own."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

import torch

from torchstep.comparison import TaskError, check_task
from torchstep.lr_finder import DIVERGE, RULES, check_sweep, lr_find
from torchstep.params import param_groups
from torchstep.tasks import digits_model

from ..setups import SetupError, parse_setup
from ..tables import markdown_table
from .errors import UserError
from .output import check_minimums, digits_data, load_task, require, writable


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lr-find",
        help="LR range test: sweep the lr exponentially, print the suggested lr, plot loss against lr",
        description="Runs torchstep.lr_find: trains for --steps steps while the lr grows exponentially from "
        "--start-lr to --end-lr (stopping early when the smoothed loss diverges), prints the suggested lr "
        "and the rule that chose it, and writes a PNG of loss against lr. By default on the digits MLP "
        "(scikit-learn's offline digits).",
        epilog="--model package.module:function names a function called with no arguments that returns "
        "either an nn.Module taking the digits task's input (64 features, 10 classes) or a tuple "
        "(model, loss_fn, batches) where batches is a list of (inputs, target) pairs. The current "
        "folder is importable.",
    )
    p.add_argument("--task", metavar="TASK", help="digits-mlp or package.module:factory returning a torchstep.Task: "
                   "sweeps over its model, loss and training batches (default: the digits MLP)")
    p.add_argument("--model", metavar="MODULE:FUNCTION", help="a model factory (default: the digits MLP)")
    p.add_argument("--optimizer", default="AdamW", metavar="SPEC",
                   help="the optimizer, e.g. 'SGD(momentum=0.9)' (its lr is replaced by the sweep; default AdamW)")
    p.add_argument("--start-lr", type=float, default=1e-6, help="first lr of the sweep (default 1e-6)")
    p.add_argument("--end-lr", type=float, default=10.0, help="last lr of the sweep (default 10)")
    p.add_argument("--steps", type=int, default=100, help="steps of the sweep (default 100)")
    p.add_argument("--batch-size", type=int, help="batch size on the digits task (default 64)")
    p.add_argument("--rule", default="steepest", choices=RULES,
                   help="steepest: where the smoothed loss falls fastest; min/10: a tenth of the lr at the lowest "
                   "smoothed loss (default steepest)")
    p.add_argument("--beta", type=float, default=0.8, help="loss smoothing coefficient (default 0.8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model and batch order (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--plot", default="lr_find.png", metavar="PNG", help="where to write the plot (default lr_find.png)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")


def load_factory(target: str) -> Any:
    """The function named by ``package.module:function`` (the current folder is importable)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"--model {target!r} is not package.module:function")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"--model {target!r}: cannot import {module_name!r} ({exc})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"--model {target!r}: {module_name} has no function {attr!r}")
    return factory


def _digits_batches(batch_size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = digits_data()
    order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))
    return [(data.x_train[order[i:i + batch_size]], data.y_train[order[i:i + batch_size]])
            for i in range(0, len(order), batch_size)]


def _problem(args: argparse.Namespace) -> tuple[torch.nn.Module, Any, list, str]:
    if args.task is not None:
        if args.model is not None:
            raise UserError("give --task or --model, not both")
        task = load_task(args.task, args.batch_size)
        try:
            check_task(task, args.seed)
        except TaskError as exc:
            raise UserError(f"--task {args.task!r}: {exc}") from None
        torch.manual_seed(args.seed)
        model = task.model(args.seed)
        torch.manual_seed(args.seed)
        return model, task.loss, list(task.train_batches(args.seed)), str(getattr(task, "name", args.task))
    if args.batch_size is None:
        args.batch_size = 64
    if args.model is None:
        return digits_model(seed=args.seed), torch.nn.functional.cross_entropy, \
            _digits_batches(args.batch_size, args.seed), "digits MLP"
    torch.manual_seed(args.seed)
    made = load_factory(args.model)()
    if isinstance(made, torch.nn.Module):
        return made, torch.nn.functional.cross_entropy, _digits_batches(args.batch_size, args.seed), args.model
    if isinstance(made, tuple) and len(made) == 3 and isinstance(made[0], torch.nn.Module):
        return (*made, args.model)
    raise UserError(f"--model {args.model!r} returned {type(made).__name__}; expected an nn.Module or "
                    "(model, loss_fn, batches)")


def run(args: argparse.Namespace) -> int:
    check_minimums(args, steps=2, batch_size=1, threads=1)
    png = None if args.no_plot else writable(args.plot, "plot")
    if png is not None:
        require("matplotlib", "torchstep lr-find's plot")
    torch.set_num_threads(args.threads)
    try:
        setup = parse_setup(args.optimizer if "(" in args.optimizer else args.optimizer + "()", args.steps)
        if setup.schedule is not None:
            raise SetupError(f"--optimizer {args.optimizer!r}: no schedule here (the sweep sets the lr)")
        check_sweep(args.start_lr, args.end_lr, args.steps, args.beta, DIVERGE, args.rule)
    except (SetupError, ValueError) as exc:
        raise UserError(" ".join(str(exc).split())) from None
    model, loss_fn, batches, title = _problem(args)
    try:
        optimizer = setup.make_optimizer(param_groups(model))
    except SetupError as exc:
        raise UserError(str(exc)) from None
    result = lr_find(model, optimizer, loss_fn, batches, start_lr=args.start_lr, end_lr=args.end_lr,
                     num_steps=args.steps, beta=args.beta, rule=args.rule)
    shown = sorted({round(i * (len(result.lrs) - 1) / 9) for i in range(10)}) if result.lrs else []
    print(markdown_table(["lr", "loss", "smoothed loss"],
                         [[f"{result.lrs[i]:.3g}", f"{result.losses[i]:.4f}", f"{result.smoothed[i]:.4f}"] for i in shown],
                         [True, True, True]))
    print(f"\n{len(result.lrs)} steps; stopped: {result.stop_reason}")
    if result.suggestion is None:
        print("no suggestion: too few steps were recorded, or the loss never fell (try a lower --start-lr)")
    else:
        print(f"suggested lr: {result.suggestion:.3g} (rule: {args.rule}, {setup.optimizer})")
    if png is not None:
        result.plot(png, title=f"LR range test: {setup.optimizer} on {title}")
        print(f"wrote {png}")
    return 0
