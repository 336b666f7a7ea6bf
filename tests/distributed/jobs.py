"""What the ranks run (tests/distributed): sharded and unsharded training side by side.

Every function here runs inside a rank started by :func:`harness.run_on_ranks` and returns plain
data (tensors gathered with ``full_tensor()``, layout descriptions, tracebacks), never DTensors.
Each case catches its own exception, so one failing algorithm does not hide the others.

Both ranks feed the same batch: FSDP2's gradient averaging then reproduces the unsharded gradient
bit for bit ((g + g) / 2 and g / 2 + g / 2 are exact), so a difference between the sharded and the
unsharded run is the optimizer's.
"""

from __future__ import annotations

import copy
import traceback
import warnings
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

import torchstep.optim as ts_optim

from .harness import progress

STEPS = 6
BATCH = 6


# -- models, optimizers, training ------------------------------------------------------------------

def make_model(kind: str, seed: int = 0, bias: bool = True) -> nn.Module:
    """``mlp``: 8 -> 16 -> 5 -> 1 (uneven shards: 5 rows split 3 + 2, and the last layer's single
    row leaves rank 1 an empty shard); ``tp_mlp``: 8 -> 16 -> 5 (tensor parallel: torch's
    colwise/rowwise plans need even shards); ``embedding``: one sparse-gradient embedding
    (SparseAdam). ``bias=False``: 2-D parameters only (Muon)."""
    torch.manual_seed(seed)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(8, 16, bias=bias), nn.Tanh(), nn.Linear(16, 5, bias=bias), nn.Tanh(),
                             nn.Linear(5, 1, bias=bias))
    if kind == "tp_mlp":
        return nn.Sequential(nn.Linear(8, 16, bias=bias), nn.Tanh(), nn.Linear(16, 5, bias=bias))
    if kind == "embedding":
        return nn.Sequential(nn.Embedding(10, 6, sparse=True))
    raise ValueError(kind)


def batch(kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind == "embedding":
        return torch.randint(0, 10, (BATCH, 3), generator=gen)
    return torch.randn(BATCH, 8, generator=gen)


def make_optimizer(spec: dict, params) -> torch.optim.Optimizer:
    """``spec``: ``algo`` (a class name), ``lib`` ("torchstep" or "torch"), ``kwargs``."""
    kwargs = copy.deepcopy(spec["kwargs"])
    lib = torch.optim if spec.get("lib") == "torch" else ts_optim
    if spec["algo"] == "Lookahead":
        inner = ts_optim.AdamW(params, **kwargs.pop("inner", dict(lr=1e-2, weight_decay=0.1)))
        return ts_optim.Lookahead(inner, **kwargs)
    opt = getattr(lib, spec["algo"])(params, **kwargs)
    if callable(getattr(opt, "train", None)):  # schedule-free: steps are taken in train mode
        opt.train()
    return opt


def train(model: nn.Module, opt, spec: dict, steps: range, seed: int = 1) -> list[float]:
    """``steps`` steps on batches drawn from a generator seeded ``seed * 1000 + step``; returns
    the losses (LBFGS: through a closure)."""
    kind = spec.get("model", "mlp")
    losses = []
    for i in steps:
        progress(f"{spec['name']}: step {i}")
        x = batch(kind, torch.Generator().manual_seed(seed * 1000 + i))

        def closure():
            opt.zero_grad()
            loss = model(x).square().mean()
            loss.backward()
            return loss

        if spec["algo"] == "LBFGS":
            loss = opt.step(closure)
        else:
            loss = closure()
            opt.step()
        losses.append(float(loss.detach()))
    return losses


# -- describing parameters and state -------------------------------------------------------------

def describe(value: Any) -> dict:
    """A picklable description of one parameter or state entry."""
    if isinstance(value, DTensor):
        mesh = value.device_mesh
        return dict(kind="DTensor", shape=tuple(value.shape), local_shape=tuple(value.to_local().shape),
                    dtype=str(value.dtype), mesh=(mesh.device_type, tuple(mesh.mesh.shape), tuple(mesh.mesh.flatten().tolist()),
                                                  mesh.mesh_dim_names),
                    placements=tuple(str(p) for p in value.placements))
    if isinstance(value, torch.Tensor):
        return dict(kind="Tensor", shape=tuple(value.shape), dtype=str(value.dtype))
    return dict(kind=type(value).__name__)


def plain(value: Any) -> Any:
    if isinstance(value, DTensor):
        return value.full_tensor().detach().clone()
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return value


def optimizer_states(opt) -> dict:
    """``param -> {key: value}`` for ``opt`` and, for a wrapper (Lookahead), its inner optimizer."""
    out: dict = {}
    inner = getattr(opt, "optimizer", None)
    for source, prefix in ((inner, ""), (opt, "lookahead.")) if isinstance(inner, torch.optim.Optimizer) else ((opt, ""),):
        for p, st in source.state.items():
            out.setdefault(p, {}).update({prefix + k: v for k, v in st.items()})
    return out


def snapshot(model: nn.Module, opt) -> dict:
    """Every parameter and state entry, gathered whole (a collective: every rank calls it), with
    the layouts and, for each DTensor state entry, whether its mesh is the parameter's."""
    names = {p: n for n, p in model.named_parameters()}
    states = optimizer_states(opt)
    params, param_layout, state, state_layout, same_mesh = {}, {}, {}, {}, {}
    for p, n in names.items():
        params[n] = plain(p)
        param_layout[n] = describe(p)
    for p, st in sorted(states.items(), key=lambda kv: names.get(kv[0], "?")):
        n = names.get(p, f"<unknown {tuple(p.shape)}>")
        state[n] = {k: plain(v) for k, v in sorted(st.items())}
        state_layout[n] = {k: describe(v) for k, v in sorted(st.items())}
        same_mesh[n] = {k: (v.device_mesh == p.device_mesh) for k, v in st.items()
                        if isinstance(v, DTensor) and isinstance(p, DTensor)}
    return dict(params=params, param_layout=param_layout, state=state, state_layout=state_layout, same_mesh=same_mesh)


# -- the setups ------------------------------------------------------------------------------------

def shard(model: nn.Module, setup: str, mesh) -> nn.Module:
    """Apply ``setup`` to ``model`` in place: ``fsdp`` (every Linear and the root), ``offload``
    (the same with CPUOffloadPolicy), ``tp`` (colwise, rowwise, colwise gathering its output),
    ``mixed`` (FSDP2 with the last Linear's parameters ignored: left plain tensors)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    if setup in ("fsdp", "offload"):
        extra = dict(offload_policy=CPUOffloadPolicy(pin_memory=False)) if setup == "offload" else {}
        for m in model:
            if isinstance(m, (nn.Linear, nn.Embedding)):
                fully_shard(m, mesh=mesh, **extra)
        fully_shard(model, mesh=mesh, **extra)
    elif setup == "mixed":
        last = model[-1]
        fully_shard(model, mesh=mesh, ignored_params=set(last.parameters()))
    elif setup == "fsdp_tp":  # mesh: 2-D, ("dp", "tp")
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        parallelize_module(model, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
        for m in model:
            if isinstance(m, nn.Linear):
                fully_shard(m, mesh=mesh["dp"])
        fully_shard(model, mesh=mesh["dp"])
    elif setup == "tp":
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    else:
        raise ValueError(setup)
    return model


def compare_case(setup: str, spec: dict, mesh) -> dict:
    """One case: the same optimizer on a sharded and an unsharded copy of one model, ``STEPS``
    steps on the same batches; both snapshots and the warnings each raised."""
    kind = spec.get("model", "mlp")
    out: dict = dict(error=None)
    try:
        with warnings.catch_warnings(record=True) as ref_w:
            warnings.simplefilter("always")
            ref = make_model(kind, bias=spec.get("bias", True))
            ref_opt = make_optimizer(spec, ref.parameters())
            out["ref_losses"] = train(ref, ref_opt, spec, range(STEPS))
        out["ref"] = snapshot(ref, ref_opt)
        out["ref_warnings"] = sorted({str(w.message) for w in ref_w})
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            model = shard(make_model(kind, bias=spec.get("bias", True)), setup, mesh)
            progress(f"{setup}/{spec['name']}: optimizer")
            opt = make_optimizer(spec, model.parameters())
            out["losses"] = train(model, opt, spec, range(STEPS))
        out["warnings"] = sorted({str(x.message) for x in w})
        out["sharded"] = snapshot(model, opt)
    except Exception as e:  # noqa: BLE001 - reported per case
        out["error"] = f"{type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc()
    return out


def matrix_job(rank: int, world: int, plan: list[tuple[str, dict]], mesh_shape: tuple = (),
               mesh_dim_names: tuple | None = None) -> dict:
    """Every ``(setup, spec)`` of ``plan`` on one mesh (``mesh_shape``, default ``(world,)``):
    ``{(setup, spec name): compare_case(...)}``."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", tuple(mesh_shape) or (world,), mesh_dim_names=mesh_dim_names)
    results = {}
    for setup, spec in plan:
        progress(f"{setup}/{spec['name']}")
        results[(setup, spec["name"])] = compare_case(setup, spec, mesh)
    dist.barrier()
    return results


# -- checkpoints -----------------------------------------------------------------------------------

SAVE_AT = 3  # steps before the checkpoint; STEPS - SAVE_AT after it


def dcp_case(spec: dict, mesh, path: str) -> dict:
    """FSDP2: train ``SAVE_AT`` steps, save model + optimizer with DCP to ``path``, train on
    (the uninterrupted run); a second model (other initial weights) and optimizer load the
    checkpoint on the same ranks and train the same steps (the resumed run)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    kind, bias = spec.get("model", "mlp"), spec.get("bias", True)
    out: dict = dict(error=None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = shard(make_model(kind, bias=bias), "fsdp", mesh)
            opt = make_optimizer(spec, model.parameters())
            train(model, opt, spec, range(SAVE_AT))
            progress(f"dcp/{spec['name']}: save")
            msd, osd = get_state_dict(model, opt)
            dcp.save({"model": msd, "optim": osd}, checkpoint_id=path)
            out["saved"] = snapshot(model, opt)
            train(model, opt, spec, range(SAVE_AT, STEPS))
            out["uninterrupted"] = snapshot(model, opt)

            progress(f"dcp/{spec['name']}: load")
            model2 = shard(make_model(kind, seed=123, bias=bias), "fsdp", mesh)
            opt2 = make_optimizer(spec, model2.parameters())
            msd2, osd2 = get_state_dict(model2, opt2)
            loaded = {"model": msd2, "optim": osd2}
            dcp.load(loaded, checkpoint_id=path)
            set_state_dict(model2, opt2, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
            out["loaded"] = snapshot(model2, opt2)
            train(model2, opt2, spec, range(SAVE_AT, STEPS))
            out["resumed"] = snapshot(model2, opt2)
    except Exception as e:  # noqa: BLE001 - reported per case
        out["error"] = f"{type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc()
    return out


def load_on_one_process(spec: dict, path: str) -> dict:
    """The other half of :func:`dcp_case`, in a process without a process group (DCP's
    ``no_dist`` mode): an unsharded model and optimizer load the 2-rank checkpoint, then train
    the remaining steps."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_model(spec.get("model", "mlp"), seed=123, bias=spec.get("bias", True))
        opt = make_optimizer(spec, model.parameters())
        msd, osd = get_state_dict(model, opt)
        loaded = {"model": msd, "optim": osd}
        dcp.load(loaded, checkpoint_id=path)
        set_state_dict(model, opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
        out = dict(loaded=snapshot(model, opt))
        train(model, opt, spec, range(SAVE_AT, STEPS))
        out["resumed"] = snapshot(model, opt)
    return out


def zero_case(spec: dict) -> dict:
    """DDP + ZeroRedundancyOptimizer wrapping ``spec``'s class, against the unsharded optimizer;
    then the consolidated state_dict (on rank 0) loaded into an unsharded optimizer."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    kind, bias = spec.get("model", "mlp"), spec.get("bias", True)
    lib = torch.optim if spec.get("lib") == "torch" else ts_optim
    out: dict = dict(error=None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = make_model(kind, bias=bias)
            ref_opt = make_optimizer(spec, ref.parameters())
            train(ref, ref_opt, spec, range(STEPS))
            out["ref"] = snapshot(ref, ref_opt)
            out["ref_state_dict"] = copy.deepcopy(ref_opt.state_dict())

            model = DistributedDataParallel(make_model(kind, bias=bias))
            opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=getattr(lib, spec["algo"]),
                                          **copy.deepcopy(spec["kwargs"]))
            train(model, opt, spec, range(STEPS))
            out["params"] = {n.removeprefix("module."): p.detach().clone() for n, p in model.named_parameters()}
            progress(f"zero/{spec['name']}: consolidate")
            opt.consolidate_state_dict(to=0)
            if dist.get_rank() == 0:
                out["consolidated"] = copy.deepcopy(opt.state_dict())
                # the consolidated state continues an unsharded run exactly
                cont = make_model(kind, bias=bias)
                cont.load_state_dict({n: p for n, p in out["params"].items()})
                cont_opt = make_optimizer(spec, cont.parameters())
                cont_opt.load_state_dict(copy.deepcopy(out["consolidated"]))
                train(cont, cont_opt, spec, range(STEPS, STEPS + 2))
                train(ref, ref_opt, spec, range(STEPS, STEPS + 2))
                out["continued"] = {n: p.detach().clone() for n, p in cont.named_parameters()}
                out["ref_continued"] = {n: p.detach().clone() for n, p in ref.named_parameters()}
    except Exception as e:  # noqa: BLE001 - reported per case
        out["error"] = f"{type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc()
    return out


def two_rank_job(rank: int, world: int, plan: list[tuple[str, dict]], dcp_specs: list[dict], zero_specs: list[dict],
                 late_plan: list[tuple[str, dict]], ckpt_root: str) -> dict:
    """Everything the 2-rank tests read, in one process group (starting one costs seconds):
    ``plan`` (see :func:`matrix_job`), the DCP cases, the ZeRO cases, then ``late_plan`` (cases
    that may leave the ranks out of step, e.g. a rank-dependent number of closure calls)."""
    import os

    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    out: dict = dict(matrix={}, dcp={}, zero={})
    for setup, spec in plan:
        progress(f"{setup}/{spec['name']}")
        out["matrix"][(setup, spec["name"])] = compare_case(setup, spec, mesh)
    for spec in dcp_specs:
        progress(f"dcp/{spec['name']}")
        out["dcp"][spec["name"]] = dcp_case(spec, mesh, os.path.join(ckpt_root, spec["name"]))
        dist.barrier()
    for spec in zero_specs:
        progress(f"zero/{spec['name']}")
        out["zero"][spec["name"]] = zero_case(spec)
        dist.barrier()
    for setup, spec in late_plan:
        progress(f"{setup}/{spec['name']}")
        out["matrix"][(setup, spec["name"])] = compare_case(setup, spec, mesh)
    progress("final barrier")
    dist.barrier()
    return out
