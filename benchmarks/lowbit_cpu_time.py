"""CPU time per parameter of an AdamW step with float32, bfloat16 and int8 state, next to torch's
fused float32 AdamW, on one thread (``--threads``): thread CPU time moves less than wall time on
a shared machine. Median of ``--repeat`` steps after three warm-up steps, per layout.

    python benchmarks/lowbit_cpu_time.py [--threads 1] [--repeat 9]
"""

from __future__ import annotations

import argparse
import time

import torch

import torchstep

LAYOUTS = {"1x4M": (1, 4_000_000), "400x10k": (400, 10_000)}
STATES = {"float32 state": None, "bfloat16 state": torch.bfloat16, "int8 state": "int8"}


def per_element_ns(make, count: int, size: int, repeat: int) -> tuple[float, float]:
    """(wall, thread CPU) nanoseconds per parameter element of one step, medians."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(size, generator=gen)) for _ in range(count)]
    for p in params:
        p.grad = torch.randn(size, generator=gen) * 1e-3
    opt = make(params)
    for _ in range(3):
        opt.step()
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.thread_time()
        opt.step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    n = count * size * 1e-9
    return sorted(wall)[repeat // 2] / n, sorted(cpu)[repeat // 2] / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), torch {torch.__version__}; ns per parameter (wall / thread CPU)\n")
    print("| layout | torch fused AdamW | " + " | ".join(f"torchstep AdamW, {s}" for s in STATES) + " |")
    print("|---|" + "---:|" * (1 + len(STATES)))
    for layout, (count, size) in LAYOUTS.items():
        cells = [per_element_ns(lambda ps: torch.optim.AdamW(ps, fused=True), count, size, args.repeat)]
        cells += [per_element_ns(lambda ps, sd=sd: torchstep.optim.AdamW(ps, state_dtype=sd), count, size, args.repeat)
                  for sd in STATES.values()]
        print(f"| {layout} | " + " | ".join(f"{w:.2f} / {c:.2f}" for w, c in cells) + " |")


if __name__ == "__main__":
    main()
