"""The two-rank job of ``test_staged_dtensor.py``: every staged algorithm (and LBFGS) run on
DTensor parameters -- FSDP2 (``fully_shard``: dimension 0 sharded, unevenly here) and tensor
parallel (``parallelize_module``, colwise then rowwise: dimensions 0 and 1 sharded, a bias
replicated) -- beside an unsharded copy of the same model and optimizer fed the same gradients.

Each rank runs every case; rank 0 writes one record per case to a JSON file. Run it as a script
to print the records: ``PYTHONPATH=src python tests/staged_dtensor_worker.py``; with ``--2d``
it runs 4 ranks on a 2 x 2 mesh, FSDP2 over tensor parallel (``fsdp-tp``: a dimension sharded
twice), which the test (2 ranks) does not.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import traceback
import warnings

import torch
import torch.distributed as dist

WORLD = 2
STEPS = 4
IN, OUT = 6, 5
# FSDP2: 15 and 5 rows, uneven dimension-0 shards (8 + 7, 3 + 2); tensor parallel needs the
# hidden size divisible by the ranks (its colwise output is a shard of dimension 1)
HIDDEN = {"fsdp": 15, "tp": 16, "mixed": 15, "fsdp-tp": 16}

# (case id, optimizer class, keyword arguments, model: "mlp" (weights and biases), "matrices"
# (2-D only) or "batched" (a 3-D parameter: a batch of matrices), layouts)
BOTH, ALL = ("fsdp", "tp"), ("fsdp", "tp", "mixed")
CASES = [
    ("lamb", "Lamb", dict(lr=1e-2, weight_decay=0.01), "mlp", ALL),
    ("lamb-decoupled", "Lamb", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, max_weight_norm=None), "mlp", BOTH),
    ("lars", "LARS", dict(lr=0.5, weight_decay=1e-3, trust_coefficient=0.02), "mlp", BOTH),
    ("adafactor", "Adafactor", dict(lr=1e-2, weight_decay=0.01), "mlp", BOTH),
    ("adafactor-batched", "Adafactor", dict(lr=1e-2), "batched", ("fsdp",)),
    ("prodigy", "Prodigy", dict(lr=1.0, weight_decay=0.01), "mlp", ALL),
    ("prodigy-coupled", "Prodigy", dict(lr=1.0, weight_decay=0.01, decouple=False, betas=(0.0, 0.99)), "mlp", BOTH),
    ("muon", "Muon", dict(lr=2e-2), "matrices", BOTH),
    ("muon-plain-momentum", "Muon", dict(lr=2e-2, nesterov=False, adjust_lr_fn="match_rms_adamw"), "matrices", BOTH),
    ("lbfgs", "LBFGS", dict(lr=0.5, max_iter=4, history_size=3), "mlp", ALL),
    ("lbfgs-wolfe", "LBFGS", dict(lr=1, max_iter=4, line_search_fn="strong_wolfe"), "mlp", BOTH),
    # refused: a clear error instead of a wrong step
    ("prodigy-sliced", "Prodigy", dict(lr=1.0, slice_p=2), "mlp", ("fsdp",)),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Batched(torch.nn.Module):
    """A batch of 5 matrices (FSDP2 shards the batch dimension: 3 + 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(5, IN, OUT) / IN**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.einsum("bi,kio->bko", x, self.weight)).sum(1)


def make_model(kind: str, layout: str) -> torch.nn.Sequential:
    if kind == "batched":
        return torch.nn.Sequential(Batched())
    bias, hidden = kind == "mlp", HIDDEN[layout]
    return torch.nn.Sequential(torch.nn.Linear(IN, hidden, bias=bias), torch.nn.Tanh(), torch.nn.Linear(hidden, OUT, bias=bias))


def shard(model: torch.nn.Module, layout: str, mesh) -> None:
    """``fsdp``: every linear layer and the root through ``fully_shard``; ``mixed``: only the
    first layer (the last one's parameters stay plain tensors, the same on every rank); ``tp``:
    colwise then rowwise."""
    if layout == "fsdp-tp":  # a 2-D mesh: tensor parallel on "tp", then FSDP2 on "dp"
        shard(model, "tp", mesh["tp"])
        shard(model, "fsdp", mesh["dp"])
        return
    if layout in ("fsdp", "mixed"):
        from torch.distributed.fsdp import fully_shard

        fully_shard(model[0], mesh=mesh)
        if layout == "fsdp":
            for m in model[1:]:
                if any(True for _ in m.parameters()):
                    fully_shard(m, mesh=mesh)
            fully_shard(model, mesh=mesh)
    else:
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})


def whole(t):
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    if a.shape != b.shape:
        return math.inf
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item() if b.numel() else 0.0


def run_case(case: tuple, layout: str, mesh) -> dict:
    import torchstep.optim as ts
    from torch.distributed.tensor import DTensor, distribute_tensor

    _, cls_name, kwargs, kind, _ = case
    torch.manual_seed(0)
    model, ref = make_model(kind, layout), make_model(kind, layout)
    ref.load_state_dict(model.state_dict())
    initial = [p.detach().clone() for p in ref.parameters()]
    shard(model, layout, mesh)
    params, ref_params = list(model.parameters()), list(ref.parameters())
    opt, ref_opt = getattr(ts, cls_name)(params, **kwargs), getattr(ts, cls_name)(ref_params, **kwargs)
    gen = torch.Generator().manual_seed(1)

    def sharded_loss(x):
        """The sharded model's loss with its gradients. Under tensor parallel, computed from the
        gathered parameters by the unsharded model's code and scattered back, so that both runs
        see the same gradients at the same point (the sharded forward rounds differently)."""
        if layout not in ("tp", "fsdp-tp"):
            loss = model(x).square().mean()
            loss.backward()
            return loss
        full = {n: whole(p.detach()).requires_grad_() for n, p in model.named_parameters()}
        loss = torch.func.functional_call(ref, full, (x,)).square().mean()
        for p, g in zip(params, torch.autograd.grad(loss, list(full.values()))):
            p.grad = distribute_tensor(g, p.device_mesh, p.placements, src_data_rank=None)
        return loss.detach()

    for _ in range(STEPS):
        x = torch.randn(7, IN, generator=gen)  # the same batch on every rank
        if cls_name == "LBFGS":
            def closure():
                opt.zero_grad()
                return sharded_loss(x)

            def ref_closure():
                ref_opt.zero_grad()
                loss = ref(x).square().mean()
                loss.backward()
                return loss

            opt.step(closure)
            ref_opt.step(ref_closure)
            continue
        # the unsharded copy takes the sharded run's gradients, gathered
        opt.zero_grad()
        model(x).square().mean().backward()
        for p, q in zip(params, ref_params):
            q.grad = whole(p.grad).clone()
        opt.step()
        ref_opt.step()
    record = {
        "params": [[q.dim(), rel_err(whole(p.detach()), q.detach())] for p, q in zip(params, ref_params)],
        "moved": min(rel_err(q.detach(), q0) for q, q0 in zip(ref_params, initial)),
        "dtensor": [type(p).__name__ for p in params],
        "placements": [str(getattr(p, "placements", None)) for p in params],
        "state": {},
        "state_placements": [{n: str(v.placements) for n, v in opt.state[p].items() if isinstance(v, DTensor)} for p in params],
    }
    for p, q in zip(params, ref_params):
        for name, value in ref_opt.state[q].items():
            if torch.is_tensor(value) and value.dim() > 0:
                mine = whole(opt.state[p][name])
                record["state"][name] = max(record["state"].get(name, 0.0), rel_err(mine, value))
    if cls_name == "Prodigy":
        record["d"] = [opt.param_groups[0]["d"], ref_opt.param_groups[0]["d"]]
    return record


def worker(rank: int, world: int, port: int, path: str, two_d: bool = False) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh

    if two_d:
        mesh = init_device_mesh("cpu", (world // 2, 2), mesh_dim_names=("dp", "tp"))
    else:
        mesh = init_device_mesh("cpu", (world,))
    results = {}
    try:
        for case in CASES:
            for layout in (("fsdp-tp",) if "tp" in case[4] else ()) if two_d else case[4]:
                key = f"{case[0]}-{layout}"
                try:
                    results[key] = run_case(case, layout, mesh)
                except Exception as e:  # recorded; the test for the case reports it
                    results[key] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
                dist.barrier()
    finally:
        if rank == 0:
            with open(path, "w") as f:
                json.dump(results, f)
        dist.destroy_process_group()


if __name__ == "__main__":
    import tempfile

    import torch.multiprocessing as mp

    two_d = "--2d" in sys.argv
    out = os.path.join(tempfile.mkdtemp(), "results.json")
    world = 2 * WORLD if two_d else WORLD
    mp.spawn(worker, args=(world, free_port(), out, two_d), nprocs=world, join=True)
    with open(out) as f:
        for key, rec in json.load(f).items():
            print(key, {k: v for k, v in rec.items() if k != "trace"})
    sys.exit(0)
