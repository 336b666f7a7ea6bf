"""AdamW step on CPU tensors: torchstep against torch.optim's fused AdamW and DeepSpeed's CPUAdam.

    python benchmarks/cpu_adam.py [--threads 1] [--steps 20]

The parameters are one FSDP2 rank's half of the model in ``distributed_offload.py`` (about 4.2M
float32 parameters in six tensors), as plain tensors: DeepSpeed's ``DeepSpeedCPUAdam`` segfaults
on FSDP2's DTensor parameters (tried: torch 2.13, deepspeed 0.19.8), so this compares the three
on what each rank's offloaded step updates. Median of ``--steps`` timed ``opt.step()`` after 3
warm-up steps, one process, ``--threads`` intra-op threads.

DeepSpeed is optional and not a dependency. How it was installed here, without letting pip
replace torch (its build imports the installed torch; ops are compiled on first use, about 3
minutes):

    pip download deepspeed --no-deps -d /tmp/ds
    DS_BUILD_OPS=0 pip install --no-build-isolation --no-deps --target /tmp/dslib /tmp/ds/deepspeed-*.tar.gz \\
        hjson ninja psutil py-cpuinfo msgpack einops pydantic annotated-types pydantic-core typing-inspection
    PYTHONPATH=/tmp/dslib PATH=/tmp/dslib/bin:$PATH python benchmarks/cpu_adam.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

WIDTHS = (1024, 2048, 2048, 1024)


def _params() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shapes = []
    for a, b in zip(WIDTHS, WIDTHS[1:]):
        shapes += [(b // 2, a), (b // 2,)]  # rank 0's half of each weight and bias
    return [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in shapes]


def _time(make, steps: int) -> float:
    params = _params()
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = make(params)
    for _ in range(3):
        opt.step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import torchstep.optim as ts

    options = dict(lr=1e-3, weight_decay=0.01)
    rows = {
        "torchstep AdamW": lambda ps: ts.AdamW(ps, **options),
        "torch.optim AdamW fused=True": lambda ps: torch.optim.AdamW(ps, fused=True, **options),
        "torch.optim AdamW foreach=True": lambda ps: torch.optim.AdamW(ps, foreach=True, **options),
    }
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        rows["DeepSpeedCPUAdam (adamw_mode)"] = lambda ps: DeepSpeedCPUAdam(ps, adamw_mode=True, **options)
    except Exception as exc:  # noqa: BLE001 -- optional
        print(f"(DeepSpeed not available: {type(exc).__name__}: {exc})")
    n = sum(p.numel() for p in _params())
    print(f"AdamW, {n} float32 parameters in 6 tensors, {args.threads} thread(s), median of {args.steps} steps")
    print("| implementation | ms per step | / torchstep |")
    print("|---|---:|---:|")
    ours = None
    for label, make in rows.items():
        ms = _time(make, args.steps)
        ours = ours or ms
        print(f"| {label} | {ms:.2f} | {ms / ours:.2f} |")


if __name__ == "__main__":
    main()
