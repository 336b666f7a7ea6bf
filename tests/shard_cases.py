"""Cases for the fused kernel on DTensor shards, run on 2 ranks (gloo, loopback) by
``tests/test_fused_shards.py`` in a process of their own: ``python tests/shard_cases.py PORT OUT``.
Each rank runs every case and rank 0 writes a JSON dict {case: result} to OUT. A result records
what the tests assert: the largest difference from torch.optim on the same sharded model (or from
an unsharded run), the fused kernel launches per step, and the warnings."""

from __future__ import annotations

import json
import os
import sys
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Partial, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import torchstep.optim as ts
from torchstep.backends import fused


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def _train(model, opt, steps: int = 4, mutate=None) -> None:
    gen = torch.Generator().manual_seed(1)
    for i in range(steps):
        x = torch.randn(6, 8, generator=gen)
        opt.zero_grad()
        model(x).square().mean().backward()
        if mutate is not None:
            mutate(i, model)
        opt.step()


def _full(p):
    return p.full_tensor() if isinstance(p, DTensor) else p


def _diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((_full(p) - _full(q)).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def _counted(fn):
    """(fn's result, kernel launches per step, warnings)"""
    launches = []
    original = fused.CKernel.run_prepared

    def counting(self, launch, *args, **kwargs):
        launches.append(len(launch.sizes))
        return original(self, launch, *args, **kwargs)

    fused.CKernel.run_prepared = counting
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = fn()
    finally:
        fused.CKernel.run_prepared = original
    return out, launches, sorted({str(w.message)[:120] for w in caught})


def fsdp_vs_torch(mesh, name: str, kwargs: dict, shard_all: bool = True, mutate=None) -> dict:
    """torchstep and torch.optim on the same FSDP2 model (both see the same DTensors): equal."""
    results = {}
    models = {}
    for label, module in (("torch", torch.optim), ("ours", ts)):
        model = _mlp()
        if shard_all:
            for m in model:
                if isinstance(m, torch.nn.Linear):
                    fully_shard(m, mesh=mesh)
            fully_shard(model, mesh=mesh)
        else:  # only the first layer sharded: its parameters are DTensors, the last layer's plain
            fully_shard(model[0], mesh=mesh)
        opt = getattr(module, name)(model.parameters(), **kwargs)
        if label == "ours":
            _, launches, caught = _counted(lambda: _train(model, opt, mutate=mutate))
            results.update(launches=launches, warnings=caught,
                           state_types=sorted({type(v).__name__ for s in opt.state.values() for v in s.values()}))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _train(model, opt, mutate=mutate)
        models[label] = model
    results["diff"] = _diff(models["torch"], models["ours"])
    return results


def tp_vs_unsharded(mesh, name: str, kwargs: dict) -> dict:
    model, ref = _mlp(), _mlp()
    parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    opt = getattr(ts, name)(model.parameters(), **kwargs)
    ref_opt = getattr(ts, name)(ref.parameters(), **kwargs)
    _, launches, caught = _counted(lambda: _train(model, opt))
    _train(ref, ref_opt)
    placements = sorted({str(p.placements) for p in model.parameters()})
    return dict(diff=_diff(model, ref), launches=launches, warnings=caught, placements=placements)


def partial_gradient(mesh) -> dict:
    """A gradient whose placement is Partial: no element-wise operand -- the reference path,
    with a warning, and torch.optim's result."""
    out = {}
    for label, module in (("torch", torch.optim), ("ours", ts)):
        local = torch.arange(8.0).reshape(4, 2) / 10
        p = torch.nn.Parameter(DTensor.from_local(local, mesh, [Shard(0)], run_check=False))
        opt = module.Adam([p], lr=0.1)

        def run(p=p, opt=opt):
            for _ in range(3):
                g_local = torch.ones(8, 2) * (dist.get_rank() + 1)
                p.grad = DTensor.from_local(g_local, mesh, [Partial()], run_check=False).redistribute(
                    mesh, [Partial()])
                opt.step()
            return p.full_tensor()

        if label == "ours":
            out["value"], out["launches"], out["warnings"] = _counted(run)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out["torch_value"] = run()
    out["diff"] = (out.pop("value") - out.pop("torch_value")).abs().max().item()
    return out


def lamb_collectives(mesh) -> dict:
    """LAMB (per-tensor trust ratios) on an FSDP2 model: the norms of all its shards are
    completed together, so a step makes a fixed number of reductions whatever the number of
    tensors; the result equals an unsharded run."""
    model, ref = _mlp(), _mlp()
    for m in model:
        if isinstance(m, torch.nn.Linear):
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt, ref_opt = ts.Lamb(model.parameters(), lr=1e-2), ts.Lamb(ref.parameters(), lr=1e-2)
    _train(model, opt, steps=1)
    _train(ref, ref_opt, steps=1)
    calls = []
    original = DTensor.full_tensor

    def counting(self, *args, **kwargs):
        calls.append(tuple(self.shape))
        return original(self, *args, **kwargs)

    DTensor.full_tensor = counting
    try:
        gen = torch.Generator().manual_seed(7)
        x = torch.randn(6, 8, generator=gen)
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            m(x).square().mean().backward()
            if m is model:
                calls.clear()
            o.step()
            if m is model:
                step_calls = list(calls)
    finally:
        DTensor.full_tensor = original
    return dict(tensors=len(list(model.parameters())), reductions=len(step_calls), diff=_diff(model, ref))


def _swap_local(i: int, model) -> None:
    """From the third step on, give the first parameter's DTensor a new shard (same values,
    new memory), as a re-sharding framework may."""
    if i == 2:
        p = next(model.parameters())
        p._local_tensor = p._local_tensor.clone()


def run(rank: int, world: int, port: int, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    results = {
        "adam": fsdp_vs_torch(mesh, "Adam", dict(lr=1e-2)),
        "sgd_momentum": fsdp_vs_torch(mesh, "SGD", dict(lr=1e-2, momentum=0.9)),
        "adamw_mixed": fsdp_vs_torch(mesh, "AdamW", dict(lr=1e-2, weight_decay=0.1), shard_all=False),
        "adam_swapped_shard": fsdp_vs_torch(mesh, "Adam", dict(lr=1e-2), mutate=_swap_local),
        "tp_adam": tp_vs_unsharded(mesh, "Adam", dict(lr=1e-2)),
        "partial_gradient": partial_gradient(mesh),
        "lamb_collectives": lamb_collectives(mesh),
    }
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(2, int(sys.argv[1]), sys.argv[2]), nprocs=2, join=True)
