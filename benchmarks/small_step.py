"""Per-step time of a small model: one optimizer, one parameter of N float32 elements with a
gradient, one intra-op thread -- where the Python around the kernel is the whole cost.

    python benchmarks/small_step.py [--size 100] [--steps 3000] [--rounds 3]

Each round runs one fresh process per optimizer (torchstep's default path; torch's fused,
foreach and for-loop paths), alternating, so drift of this shared machine hits all alike; each
process times ``opt.step()`` alone (``time.perf_counter``) over ``--steps`` steps after 50 warm-up
steps and reports the 25th percentile and the median. Printed: the median of those over rounds,
and torchstep's median over torch fused's. Timing never happens in the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
which, size, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if which == "torchstep":
    import torchstep.optim as O
    kw = {}
else:
    O = torch.optim
    kw = {"fused": {"fused": True}, "foreach": {"foreach": True}, "forloop": {"foreach": False}}[which]
p = torch.zeros(size, requires_grad=True)
p.grad = torch.full((size,), 1e-3)
opt = O.Adam([p], lr=1e-3, **kw)
for _ in range(50):
    opt.step()
times = []
for _ in range(steps):
    t = time.perf_counter()
    opt.step()
    times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({"p25": times[len(times) // 4] * 1e6, "median": times[len(times) // 2] * 1e6}))
"""

WHICH = ("torchstep", "fused", "foreach", "forloop")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {w: [] for w in WHICH}
    for _ in range(args.rounds):
        for which in WHICH:
            out = subprocess.run([sys.executable, "-c", CHILD, which, str(args.size), str(args.steps)],
                                 capture_output=True, text=True, check=True)
            runs[which].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"Adam, one float32 parameter of {args.size} elements, 1 thread, {args.steps} steps, "
          f"median over {args.rounds} rounds")
    print("| optimizer | p25 us | median us |")
    print("|---|---|---|")
    med = {}
    for which in WHICH:
        label = "torchstep (default path)" if which == "torchstep" else f"torch {which}"
        p25 = statistics.median(r["p25"] for r in runs[which])
        med[which] = statistics.median(r["median"] for r in runs[which])
        print(f"| {label} | {p25:.1f} | {med[which]:.1f} |")
    print(f"\ntorchstep / torch fused (medians): {med['torchstep'] / med['fused']:.2f}")


if __name__ == "__main__":
    main()
