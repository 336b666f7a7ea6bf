"""Optimizer step time under FSDP2 with CPU offload: torchstep against torch.optim.

    python benchmarks/distributed_offload.py [--world 2] [--steps 10] [--warmup 3] [--json out.json]

``--world`` local ranks (gloo on 127.0.0.1; ``--device cuda``: NCCL, one GPU per rank, the
parameters on the GPUs and torchstep's Triton kernels, no offload) shard a model of about 8.4M float32 parameters
(Linear 1024 -> 2048 -> 2048 -> 1024, biases included) with ``fully_shard(...,
offload_policy=CPUOffloadPolicy(pin_memory=False))`` on every Linear and the root, so each rank
steps its half of every parameter, on the CPU. Per optimizer and implementation: ``--warmup``
untimed steps, then ``--steps`` timed ones; each timed step is ``opt.step()`` alone, between two
barriers (forward and backward run before the first), and the step's time is the slowest rank's
(an all-reduce of max). Reported: the median over the timed steps, and torch's time / torchstep's
for the same algorithm (> 1: torchstep faster).

Rows: AdamW in torchstep's default path and torch's ``fused=True``, ``foreach=True`` and
``foreach=False``; Adam, SGD (momentum 0.9), NAdam, RAdam, Adagrad, RMSprop in torchstep's default
path and torch's default; Lion and Adan in torchstep only (torch has no such class). Threads per
rank: ``--threads`` (default: the CPU count divided by the ranks, at least 1).

All implementations run in one process group; a rank that dies (a crash in a step) is reported
for that row and the remaining rows run in fresh processes. Timing never happens in the test
suite. On a machine without an accelerator the offloaded parameters are CPU tensors already; the
policy still decides where FSDP2 keeps the sharded parameters, gradients and optimizer state.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time

# (row id, algorithm, library, implementation label, constructor options)
ADAMW = dict(lr=1e-3, weight_decay=0.01)
ROWS = [
    ("AdamW/torchstep", "AdamW", "torchstep", "default", ADAMW),
    ("AdamW/torch-fused", "AdamW", "torch", "fused=True", {**ADAMW, "fused": True}),
    ("AdamW/torch-foreach", "AdamW", "torch", "foreach=True", {**ADAMW, "foreach": True}),
    ("AdamW/torch-forloop", "AdamW", "torch", "foreach=False", {**ADAMW, "foreach": False}),
]
for _algo, _kw in [("Adam", dict(lr=1e-3)), ("SGD", dict(lr=1e-2, momentum=0.9)), ("Lion", dict(lr=1e-4)),
                   ("Adan", dict(lr=1e-3)), ("NAdam", dict(lr=1e-3)), ("RAdam", dict(lr=1e-3)),
                   ("Adagrad", dict(lr=1e-2)), ("RMSprop", dict(lr=1e-3))]:
    ROWS.append((f"{_algo}/torchstep", _algo, "torchstep", "default", _kw))
    if _algo not in ("Lion", "Adan"):
        ROWS.append((f"{_algo}/torch-default", _algo, "torch", "default", _kw))

WIDTHS = (1024, 2048, 2048, 1024)


def _model():
    import torch

    torch.manual_seed(0)
    layers = [torch.nn.Linear(a, b) for a, b in zip(WIDTHS, WIDTHS[1:])]
    return torch.nn.Sequential(*[m for layer in layers for m in (layer, torch.nn.ReLU())][:-1])


def _rank(rank: int, world: int, port: int, rows: list, steps: int, warmup: int, threads: int, outdir: str,
          device: str = "cpu", offload: bool = True) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import warnings

    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    import torchstep.optim as ts_optim

    torch.set_num_threads(threads)
    if device == "cuda":  # one GPU per rank, NCCL; the parameters stay on the GPU unless --offload
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    mesh = init_device_mesh(device, (world,))
    policy = dict(offload_policy=CPUOffloadPolicy(pin_memory=device == "cuda")) if offload else {}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    progress = os.path.join(outdir, f"progress{rank}")
    results = os.path.join(outdir, f"results{rank}.jsonl")
    for row_id, algo, lib, _label, kwargs in rows:
        with open(progress, "w") as f:
            f.write(row_id)
        model = _model().to(device)
        for m in model:
            if isinstance(m, torch.nn.Linear):
                fully_shard(m, mesh=mesh, **policy)
        fully_shard(model, mesh=mesh, **policy)
        n_params = sum(p.numel() for p in model.parameters())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt = getattr(torch.optim if lib == "torch" else ts_optim, algo)(model.parameters(), **kwargs)
            gen = torch.Generator().manual_seed(rank)
            times = []
            for i in range(warmup + steps):
                x = torch.randn(8, WIDTHS[0], generator=gen).to(device)
                opt.zero_grad()
                model(x).square().mean().backward()
                sync()
                dist.barrier()
                t = time.perf_counter()
                opt.step()
                sync()
                elapsed = torch.tensor([time.perf_counter() - t], dtype=torch.float64, device=device)
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
                if i >= warmup:
                    times.append(elapsed.item())
        notes = sorted({str(w.message)[:120] for w in caught if "step" in str(w.message)})
        with open(results, "a") as f:
            f.write(json.dumps(dict(row=row_id, times=times, params=n_params, warnings=notes)) + "\n")
        del opt, model
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(rows: list, world: int, steps: int, warmup: int, threads: int, timeout: float, device: str = "cpu",
        offload: bool = True) -> dict:
    """row id -> {times, params, warnings} or {error}; a crashed row is reported and skipped."""
    out: dict = {}
    ctx = multiprocessing.get_context("spawn")
    remaining = list(rows)
    while remaining:
        with tempfile.TemporaryDirectory() as outdir:
            port = _free_port()
            procs = [ctx.Process(target=_rank, args=(r, world, port, remaining, steps, warmup, threads, outdir,
                                                         device, offload))
                     for r in range(world)]
            for p in procs:
                p.start()
            deadline = time.monotonic() + timeout
            while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
                if any(p.exitcode not in (None, 0) for p in procs):
                    time.sleep(2)
                    break
                time.sleep(0.1)
            for p in procs:
                if p.is_alive():
                    p.kill()
                p.join()
            done = []
            path = os.path.join(outdir, "results0.jsonl")
            if os.path.exists(path):
                with open(path) as f:
                    for line in f:
                        rec = json.loads(line)
                        out[rec.pop("row")] = rec
                        done.append(rec)
            finished = {row_id for row_id in out}
            remaining = [r for r in remaining if r[0] not in finished]
            if remaining and all(p.exitcode == 0 for p in procs):
                break  # cannot happen unless a rank exits early without a crash
            if remaining:
                notes = []
                for r in range(world):
                    try:
                        with open(os.path.join(outdir, f"progress{r}")) as f:
                            notes.append(f.read())
                    except OSError:
                        notes.append("")
                bad = remaining[0][0]
                codes = [p.exitcode for p in procs]
                out[bad] = dict(error=f"ranks exited with {codes} during this row (progress: {notes})")
                print(f"# {bad}: ranks exited with {codes}; continuing with the next rows", file=sys.stderr)
                remaining = remaining[1:]
    return out


def table(rows: list, results: dict) -> str:
    medians = {rid: statistics.median(r["times"]) for rid, r in results.items() if "times" in r}
    lines = ["| optimizer | implementation | median step (ms) | torch / torchstep |", "|---|---|---:|---:|"]
    for row_id, algo, lib, label, _ in rows:
        impl = f"{'torchstep' if lib == 'torchstep' else 'torch.optim'} {label}"
        if row_id not in medians:
            lines.append(f"| {algo} | {impl} | {results.get(row_id, {}).get('error', 'not run')} | |")
            continue
        ours = medians.get(f"{algo}/torchstep")
        ratio = "1.00" if lib == "torchstep" else (f"{medians[row_id] / ours:.2f}" if ours else "")
        lines.append(f"| {algo} | {impl} | {medians[row_id] * 1e3:.1f} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads per rank (0: CPUs / ranks)")
    parser.add_argument("--only", default="", help="comma-separated algorithms (default: all rows)")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--json", default="", help="write the raw step times here")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: one GPU per rank, NCCL, parameters on the GPUs (the Triton kernels)")
    parser.add_argument("--no-offload", action="store_true", help="no CPUOffloadPolicy (the default on --device cuda)")
    args = parser.parse_args()
    offload = args.device == "cpu" and not args.no_offload
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.world)
    rows = [r for r in ROWS if not args.only or r[1] in args.only.split(",")]
    results = run(rows, args.world, args.steps, args.warmup, threads, args.timeout, args.device, offload)
    import torch

    params = next((r["params"] for r in results.values() if "params" in r), None)
    setup = "FSDP2 + CPUOffloadPolicy(pin_memory=False)" if offload else f"FSDP2 on {args.device}"
    backend = "nccl" if args.device == "cuda" else "gloo"
    print(f"{setup}, {args.world} ranks ({backend}), {threads} thread(s) per rank, "
          f"{params} parameters, torch {torch.__version__}; median of {args.steps} steps after {args.warmup} warm-up")
    print()
    print(table(rows, results))
    print()
    notes = sorted({w for r in results.values() for w in r.get("warnings", [])})
    for note in notes:
        print(f"- warning seen: {note}")
    print(f"\ncommand: python {' '.join(sys.argv)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(command=sys.argv, world=args.world, threads=threads, steps=args.steps, warmup=args.warmup,
                           torch=torch.__version__, results=results), f, indent=1)


if __name__ == "__main__":
    main()
