"""``torchstep bench``: step time, bound, first-step latency and peak memory vs torch.optim."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .. import bench_compile, bench_lowbit
from ..bench import ALGORITHMS, main
from .errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time optimizer steps against torch.optim and the memory-bandwidth bound",
        description="Times torchstep's default step and torch.optim's for-loop / foreach / fused steps for "
        "each algorithm on two layouts (1 x 20M and 2000 x 10k float32), next to the bound set by the "
        "memory bandwidth measured in the same run.",
    )
    p.add_argument("--algorithms", default="all", help=f"comma-separated subset of: {', '.join(ALGORITHMS)} (default: all)")
    p.add_argument("--layouts", default="1x20M,2000x10k",
                   help="comma-separated COUNTxSIZE layouts, e.g. 1x20M,2000x10k,100x1k (k/M suffixes allowed)")
    p.add_argument("--repeat", type=int, default=5, help="timed steps per path; the median is reported (default 5)")
    p.add_argument("--no-latency", action="store_true", help="skip the first-step latency measurement (subprocesses)")
    p.add_argument("--json", metavar="PATH", help="also write the raw figures as JSON")
    p.add_argument("--compile", action="store_true",
                   help="instead: a torch.compile'd training step (AdamW, tensor lr, ~1.3M-parameter MLP) with "
                   "torchstep vs torch.optim, side by side (--repeat: alternating rounds, median reported)")
    p.add_argument("--lowbit", action="store_true",
                   help="instead: AdamW, Adam, SGD-momentum and Lion with state_dtype float32 / bfloat16 / int8 "
                   "(state bytes, bytes moved, bound, step time against torch's fused float32 steps, peak memory); "
                   "--algorithms then picks from: " + ", ".join(bench_lowbit.ALGORITHMS))
    p.add_argument("--threads", type=int, default=None, help="with --compile: torch's intra-op threads for the run")


def _size(text: str) -> int:
    mult = {"k": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if text[-1] in "kM" else text) * mult)


def parse_layouts(spec: str) -> dict[str, tuple[int, int]]:
    layouts = {}
    for item in spec.split(","):
        try:
            count, size = item.strip().split("x")
            layouts[item.strip()] = (_size(count), _size(size))
        except ValueError:
            raise UserError(f"layout {item!r} is not COUNTxSIZE (e.g. 2000x10k)") from None
    return layouts


def run(args: argparse.Namespace) -> int:
    lowbit = getattr(args, "lowbit", False)
    known = bench_lowbit.ALGORITHMS if lowbit else ALGORITHMS
    names = list(known) if args.algorithms == "all" else [a.strip() for a in args.algorithms.split(",")]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown algorithm(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if args.repeat < 1:
        raise UserError(f"--repeat must be >= 1, got {args.repeat}")
    if args.compile:
        return _run_compiled(args)
    if lowbit:
        print(bench_lowbit.main(parse_layouts(args.layouts), args.repeat, names, args.json,
                                progress=lambda s: print(f"  ... {s}", file=sys.stderr, flush=True)))
        return 0
    table = main(names, parse_layouts(args.layouts), args.repeat, not args.no_latency, args.json,
                 progress=lambda s: print(f"  ... {s}", file=sys.stderr, flush=True))
    print(table)
    return 0


def _run_compiled(args: argparse.Namespace) -> int:
    """``--compile``: the compiled training step report of :mod:`torchstep.bench_compile`."""
    result = bench_compile.run(rounds=args.repeat, threads=args.threads, progress=lambda s: print(f"  ... {s}", file=sys.stderr, flush=True))
    print(bench_compile.format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dataclasses.asdict(result), f, indent=1)
    return 0
