"""Muon under FSDP2: what gathering each matrix for Newton-Schulz costs.

    python benchmarks/muon_fsdp2.py

Two gloo ranks on 127.0.0.1, one thread each, four 512x512 weight matrices. Per step: the
unsharded model (every rank the whole model, so the same Newton-Schulz work) against FSDP2, where
torchstep gathers each matrix (one all-gather per matrix per step), runs Newton-Schulz on every
rank and keeps its own shard of the result. Median of 6 steps after 2, the slowest rank's
``opt.step()``. Timing never happens in the test suite.
"""

from __future__ import annotations

import os
import socket
import statistics
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(512, 512, bias=False) for _ in range(4)])


def _rank(rank: int, world: int, port: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import torchstep.optim as ts

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    out = {}
    for label in ("unsharded", "fsdp2"):
        model = _model()
        if label == "fsdp2":
            for layer in model:
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
        opt = ts.Muon(model.parameters(), lr=0.02)
        times = []
        for i in range(8):
            opt.zero_grad()
            model(torch.randn(16, 512)).square().mean().backward()
            dist.barrier()
            start = time.perf_counter()
            opt.step()
            elapsed = torch.tensor([time.perf_counter() - start])
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            if i >= 2:
                times.append(elapsed.item())
        out[label] = statistics.median(times) * 1e3
    if rank == 0:
        print(f"Muon, 4 x 512x512, {world} ranks: unsharded (each rank the whole model) {out['unsharded']:.1f} ms, "
              f"FSDP2 {out['fsdp2']:.1f} ms per step")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    mp.spawn(_rank, args=(2, _free_port()), nprocs=2)
