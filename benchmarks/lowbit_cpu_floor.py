"""Where the CPU time of an int8-state AdamW step goes: the step as built, and the same kernel
with the code-map look-ups replaced by free linear coding (wrong numbers, same memory traffic).

The int8 kernel reads one byte per moment and writes one back, so per element it moves 16 bytes
where torch's fused float32 AdamW moves 28; a memory-bound step would take 16/28 = 0.57x as long.
On a CPU the step is not memory-bound. This script measures, next to torch's fused AdamW:

- ``int8 (as built)``: decoding is a look-up in the 256-value dynamic code map (a vector gather),
  coding a look-up in a table keyed by the value's top bits plus one comparison (another gather);
- ``free decoding``: the load is ``code * scale / 127`` (no gather); coding as built;
- ``free coding``: decoding as built; the store is ``round(x / scale * 127)`` (no gather);
- ``free both``: neither -- the floor any code map could reach with this kernel, i.e. the cost of
  the AdamW arithmetic (a square root and two divisions per element, as torch computes it), the
  block maxima and the byte loads and stores.

The variants are made by editing the generated C source of the real kernel (so everything else --
chunks, threads, block loop -- is identical) and run through the optimizer's own step. Their
numbers are meaningless; only their time is measured. Median of ``--repeat`` steps after three
warm-up steps, alternating the variants round by round.

    python benchmarks/lowbit_cpu_floor.py [--threads 2] [--size 20000000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import torch

import torchstep
from torchstep.backends import cpu_kernel, fused, memo

_DECODE = re.compile(r"\(float\)\(CODE(\d+)\[x\1\[i\]\] \* sc\1\)")
_ENCODE = re.compile(r"code_of\(LUT(\d+), q\1\[j\] \* inv, (\d+)u\)")


def _free_decode(src: str) -> str:
    out, n = _DECODE.subn(r"((float)((int)x\1[i] - 127) * sc\1 * (1.0f / 127.0f))", src)
    assert n, "the generated kernel's decoding was not found: update this script's pattern"
    return out


def _free_encode(src: str) -> str:
    out, n = _ENCODE.subn(r"(uint8_t)(int)(q\1[j] * inv * 127.0f + 127.5f)", src)
    assert n, "the generated kernel's coding was not found: update this script's pattern"
    return out


VARIANTS = {
    "int8 (as built)": lambda s: s,
    "free decoding": _free_decode,
    "free coding": _free_encode,
    "free both": lambda s: _free_encode(_free_decode(s)),
}


def make_step(size: int, variant):
    """A closure taking one optimizer step; int8 AdamW whose kernel source is passed through
    ``variant`` (None: torch's fused float32 AdamW). Each variant keeps its own cache of built
    kernels (they are otherwise shared per update function), swapped in around its steps."""
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(size, generator=gen))
    p.grad = torch.randn(size, generator=gen) * 1e-3
    if variant is None:
        return torch.optim.AdamW([p], lr=1e-3, fused=True).step
    opt = torchstep.optim.AdamW([p], lr=1e-3, state_dtype="int8")
    real_generate, own = cpu_kernel.generate, memo.FunctionCache()

    def edited(*args, **kwargs):
        return variant(real_generate(*args, **kwargs))

    def step() -> None:
        shared = fused._programs
        cpu_kernel.generate, fused._programs = edited, own
        try:
            opt.step()
        finally:
            cpu_kernel.generate, fused._programs = real_generate, shared

    step.optimizer = opt
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=20_000_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = {"torch fused AdamW (float32 state)": make_step(args.size, None)}
    steps.update({name: make_step(args.size, fn) for name, fn in VARIANTS.items()})
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        for _ in range(3):
            step()
    for _ in range(args.repeat):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["torch fused AdamW (float32 state)"])
    print(f"{args.threads} thread(s), 1 x {args.size:,} float32 parameters, torch {torch.__version__}; "
          f"median of {args.repeat}\n")
    print("| step | ms | ns per parameter | / torch fused AdamW |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"| {name} | {t * 1e3:.1f} | {t / args.size * 1e9:.3f} | {t / base:.2f} |")


if __name__ == "__main__":
    main()
