"""A/B step time of torchstep's default path between two source trees (e.g. a commit before a
change, checked out with ``git worktree add /tmp/before <rev>``, and the working tree).

    python benchmarks/ab_step.py /tmp/before/src src --rounds 5 --json benchmarks/results/ab.json

Each round runs one fresh process per tree, alternating (A, B, A, B, ...), so drift of this shared
machine's memory bandwidth hits both alike; each process reports the median of 25 steps per
layout after 3 warm-up steps. Reported: the median over rounds per tree and the ratio B / A.
Timing never happens in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch
import torchstep.optim as ts
torch.set_num_threads(int(sys.argv[1]))
out = {}
for spec in sys.argv[2].split(","):
    algo, layout = spec.split(":")
    count, size = (int(x) for x in layout.split("x"))
    params = [torch.zeros(size, requires_grad=True) for _ in range(count)]
    for p in params:
        p.grad = torch.full((size,), 1e-3)
    opt = {"adam": lambda: ts.Adam(params, lr=1e-3), "adamw": lambda: ts.AdamW(params, lr=1e-3),
           "sgd_momentum": lambda: ts.SGD(params, lr=1e-3, momentum=0.9)}[algo]()
    for _ in range(3):
        opt.step()
    times = []
    for _ in range(25):
        t = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t)
    out[spec] = sorted(times)[len(times) // 2] * 1e3
print(json.dumps(out))
"""

DEFAULT = "adam:2000x10000,adam:1x20000000,sgd_momentum:2000x10000,adam:100x1000,adam:1x100"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="source folder A (holds the torchstep package)")
    ap.add_argument("b", help="source folder B")
    ap.add_argument("--cases", default=DEFAULT, help=f"algo:COUNTxSIZE,... (default {DEFAULT})")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the raw figures here")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"A": [], "B": []}
    for _ in range(args.rounds):
        for tag, src in (("A", args.a), ("B", args.b)):
            env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
            out = subprocess.run([sys.executable, "-c", CHILD, str(args.threads), args.cases], env=env,
                                 capture_output=True, text=True, check=True)
            runs[tag].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"| case | A ms | B ms | B / A |  (median over {args.rounds} alternating rounds)")
    print("|---|---|---|---|")
    table = {}
    for case in args.cases.split(","):
        a = statistics.median(r[case] for r in runs["A"])
        b = statistics.median(r[case] for r in runs["B"])
        table[case] = {"A_ms": a, "B_ms": b, "ratio": b / a}
        print(f"| {case} | {a:.3f} | {b:.3f} | {b / a:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"a": args.a, "b": args.b, "rounds": runs, "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
