"""``torchstep schedule SPEC --steps N``: a schedule's values (and a PNG) without an optimizer."""

from __future__ import annotations

import argparse

from torchstep.schedules import plot, preview, schedule_from_spec
from torchstep.schedules.spec import SPEC_NAMES

from ..tables import markdown_table
from .errors import UserError
from .output import check_minimums, require, writable


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "schedule",
        help="preview a schedule (modern or torch-shaped) as values and a plot",
        description="Prints the values of one or more schedules over --steps steps and optionally plots "
        "them. A SPEC is one call: a modern schedule with absolute values, e.g. "
        "'warmup_cosine(peak=1e-3, warmup=100, total=1000, floor=1e-5)', or one of torch's scheduler "
        "classes with its arguments, e.g. 'StepLR(step_size=30, gamma=0.1)', which scales --lr "
        "(or lr=... in the spec). Only literal arguments are accepted; nothing is evaluated.",
        epilog=f"Known names: {', '.join(SPEC_NAMES)}",
    )
    p.add_argument("spec", nargs="+", metavar="SPEC", help="a schedule call; several are shown side by side")
    p.add_argument("--steps", type=int, required=True, help="number of steps to preview")
    p.add_argument("--lr", type=float, default=1.0, help="base lr for torch-shaped schedulers (default 1.0: values read as factors)")
    p.add_argument("--plot", metavar="PNG", help="also write a PNG of the schedules")
    p.add_argument("--log", action="store_true", help="log-scale y axis in the plot")
    p.add_argument("--every", type=int, default=None,
                   help="print every K-th step (default: about 20 rows, always including the first and last step)")


def _rows(steps: int, every: int | None) -> list[int]:
    every = every or max(1, -(-steps // 20))
    shown = list(range(0, steps, every))
    return shown + ([steps - 1] if steps and shown[-1] != steps - 1 else [])


def run(args: argparse.Namespace) -> int:
    check_minimums(args, steps=1, every=1)
    png = writable(args.plot, "plot")
    series = {}
    for spec in args.spec:
        try:
            series[spec] = preview(schedule_from_spec(spec, lr=args.lr), args.steps)
        except (TypeError, ValueError, ZeroDivisionError) as exc:
            raise UserError(" ".join(str(exc).split())) from None
    rows = [[str(t), *(f"{values[t]:.6g}" for values in series.values())] for t in _rows(args.steps, args.every)]
    print(markdown_table(["step", *series], rows, [True] * (len(series) + 1)))
    if png is not None:
        require("matplotlib", "torchstep schedule --plot")
        plot(series, args.steps, png, log_scale=args.log)
        print(f"\nwrote {png}")
    return 0

