"""What the ranks run for test_lowbit_fsdp2.py: AdamW with ``state_dtype`` ("int8", bfloat16)
under FSDP2 on 2 ranks, beside single-process runs, and its two state_dict formats through DCP.

The model, ``Linear(16, 257) -> Tanh -> Linear(257, 1)``, has one weight large enough to be
quantized (257 x 16 = 4112 >= ``lowbit.MIN_QUANTIZED`` elements counted on the whole parameter)
and three parameters that keep full precision (the 257-element bias and second weight, the
1-element bias, which leaves rank 1 an empty shard). FSDP2 splits the first weight's 257 rows
129 + 128: rank 0 holds elements 0..2063 (9 blocks of 256, the last one 16 elements long),
rank 1 elements 2064..4111 (8 blocks) -- so rank 1's blocks straddle the whole tensor's block
boundaries, rank 0's first 8 blocks coincide with the whole tensor's first 8, and the compact
format pads rank 1's block scales from 8 to 9.

Both ranks feed the same batch (as in :mod:`jobs`), so the sharded gradients are those of the
single-process run bit for bit and any difference is the optimizer's. Results are plain data.
"""

from __future__ import annotations

import traceback
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

import torchstep.optim as ts_optim
from torchstep.core import lowbit

from .harness import progress

STEPS = 6
SAVE_AT = 3
LR = 1e-2
WD = 0.1
IN, HIDDEN, BATCH = 16, 257, 8
# option sets: name -> AdamW keyword arguments beyond lr/weight_decay
CONFIGS = {"int8": dict(state_dtype="int8"), "bf16": dict(state_dtype=torch.bfloat16), "fp32": {}}


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 1))


def make_opt(model: nn.Module, config: str):
    return ts_optim.AdamW(model.parameters(), lr=LR, weight_decay=WD, **CONFIGS[config])


def shard(model: nn.Module, mesh, weight_dim: int = 0) -> nn.Module:
    """FSDP2 over ``mesh``; ``weight_dim``: the dimension the first (quantized) weight is cut on."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard

    def placement(p):
        return Shard(weight_dim if tuple(p.shape) == (HIDDEN, IN) else 0)

    for m in model:
        if isinstance(m, nn.Linear):
            fully_shard(m, mesh=mesh, shard_placement_fn=placement)
    fully_shard(model, mesh=mesh, shard_placement_fn=placement)
    return model


def train(model: nn.Module, opt, steps: range) -> None:
    for i in steps:
        x = torch.randn(BATCH, IN, generator=torch.Generator().manual_seed(1000 + i))
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def full(t):
    if isinstance(t, DTensor):
        return t.full_tensor().detach().clone()
    return t.detach().clone() if isinstance(t, torch.Tensor) else t


def local(t):
    if isinstance(t, DTensor):
        return t.to_local().detach().clone()
    return t.detach().clone() if torch.is_tensor(t) else t


def describe(v) -> dict:
    """Type (exact class), dtype, shapes and placements of one state entry."""
    if isinstance(v, DTensor):
        return dict(cls=type(v).__name__, local_cls=type(v.to_local()).__name__, dtype=str(v.dtype),
                    shape=tuple(v.shape), local_shape=tuple(v.to_local().shape),
                    placements=tuple(str(p) for p in v.placements), mesh=tuple(v.device_mesh.mesh.tolist()))
    if isinstance(v, torch.Tensor):
        return dict(cls=type(v).__name__, dtype=str(v.dtype), shape=tuple(v.shape))
    return dict(cls=type(v).__name__)


def params_of(model) -> dict:
    return {n: full(p) for n, p in model.named_parameters()}


def state_of(model, opt) -> dict:
    """name -> {key: (layout, local value, whole value or None)} of the in-memory state; whole
    values (a collective) only for DTensor entries."""
    names = {p: n for n, p in model.named_parameters()}
    out = {}
    for p, st in opt.state.items():
        entry = {}
        for k in sorted(st):
            v = st[k]
            entry[k] = dict(layout=describe(v), local=local(v), whole=full(v) if isinstance(v, DTensor) else None,
                            same_mesh=(v.device_mesh == p.device_mesh) if isinstance(v, DTensor) else None)
        out[names[p]] = entry
    return dict(param_layout={names[p]: describe(p) for p in names}, state=out)


def dequantized(model, opt) -> dict:
    """name -> {state name: whole full-precision value} (int8 state dequantized per local shard,
    bfloat16 cast up) -- what torch's format should hold."""
    names = {p: n for n, p in model.named_parameters()}
    out = {}
    for p, st in opt.state.items():
        out[names[p]] = {k: full(lowbit.full_value(opt.algorithm, st, k, p)) for k in ("exp_avg", "exp_avg_sq")}
    return out


def sd_layout(sd: dict) -> dict:
    """The state part of an optimizer state_dict: param key -> {key: layout}."""
    return {str(pk): {k: describe(v) for k, v in st.items()} for pk, st in sd["state"].items()}


def sd_whole(sd: dict) -> dict:
    return {str(pk): {k: full(v) for k, v in sorted(st.items())} for pk, st in sd["state"].items()}


def _guard(fn, *args) -> dict:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn(*args)
        out["error"] = None
        return out
    except Exception as e:  # noqa: BLE001 - reported per case
        return dict(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())


def train_case(config: str, mesh) -> dict:
    """``STEPS`` steps sharded and in one process, same optimizer options; plus the torch-format
    state_dict's layout and values."""
    ref = make_model()
    ref_opt = make_opt(ref, config)
    train(ref, ref_opt, range(1))
    ref_first = dict(params=params_of(ref), state=state_of(ref, ref_opt))
    train(ref, ref_opt, range(1, STEPS))
    progress(f"lowbit/{config}: sharded")
    model = shard(make_model(), mesh)
    opt = make_opt(model, config)
    train(model, opt, range(1))
    first = dict(params=params_of(model), state=state_of(model, opt))
    train(model, opt, range(1, STEPS))
    sd = opt.state_dict()
    return dict(ref_first=ref_first, first=first,
                ref_params=params_of(ref), ref_state=state_of(ref, ref_opt), params=params_of(model),
                state=state_of(model, opt), dequantized=dequantized(model, opt), sd_layout=sd_layout(sd),
                sd_whole=sd_whole(sd), sd_group_state_dtype=repr(sd["param_groups"][0].get("state_dtype")))


def torch_format_dcp_case(config: str, mesh, path: str) -> dict:
    """torch's format through get/set_optimizer_state_dict and dcp.save/load: train ``SAVE_AT``
    steps, save, train on (uninterrupted); a fresh model (other weights) + optimizer loads and
    trains the same steps (resumed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model = shard(make_model(), mesh)
    opt = make_opt(model, config)
    train(model, opt, range(SAVE_AT))
    msd, osd = get_state_dict(model, opt)
    out = dict(saved_layout={k: {kk: describe(vv) for kk, vv in v.items()} for k, v in osd["state"].items()},
               saved_state=state_of(model, opt))
    progress(f"lowbit/{config}: dcp.save (torch format)")
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=path)
    train(model, opt, range(SAVE_AT, STEPS))
    out["uninterrupted"] = params_of(model)
    out["uninterrupted_state"] = dequantized(model, opt)

    progress(f"lowbit/{config}: dcp.load (torch format)")
    model2 = shard(make_model(seed=123), mesh)
    opt2 = make_opt(model2, config)
    msd2, osd2 = get_state_dict(model2, opt2)
    loaded = {"model": msd2, "optim": osd2}
    dcp.load(loaded, checkpoint_id=path)
    set_state_dict(model2, opt2, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    out["loaded_state"] = state_of(model2, opt2)
    train(model2, opt2, range(SAVE_AT, STEPS))
    out["resumed"] = params_of(model2)
    out["resumed_state"] = dequantized(model2, opt2)
    return out


def compact_dcp_case(mesh, path: str) -> dict:
    """int8 state in the compact format through dcp.save/load (same mesh): the codes and block
    scales loaded equal those saved, bit for bit, and two more steps on both copies agree exactly."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    model = shard(make_model(), mesh)
    opt = make_opt(model, "int8")
    train(model, opt, range(SAVE_AT))
    csd = opt.state_dict(compact=True)
    out = dict(compact_layout=sd_layout(csd), saved=state_of(model, opt))
    progress("lowbit/compact: dcp.save")
    dcp.save({"model": get_model_state_dict(model), "optim": csd}, checkpoint_id=path)

    progress("lowbit/compact: dcp.load")
    model2 = shard(make_model(seed=123), mesh)
    opt2 = make_opt(model2, "int8")
    train(model2, opt2, range(1))  # other state, to be overwritten (and a template of the right keys)
    template = {"model": get_model_state_dict(model2), "optim": opt2.state_dict(compact=True)}
    dcp.load(template, checkpoint_id=path)
    set_model_state_dict(model2, template["model"])
    opt2.load_state_dict(template["optim"])
    out["loaded"] = state_of(model2, opt2)
    train(model, opt, range(SAVE_AT, STEPS))
    train(model2, opt2, range(SAVE_AT, STEPS))
    out["uninterrupted"] = params_of(model)
    out["resumed"] = params_of(model2)
    out["uninterrupted_state"] = state_of(model, opt)
    out["resumed_state"] = state_of(model2, opt2)
    return out


def compact_other_layout_case(mesh, path: str) -> dict:
    """The compact checkpoint of :func:`compact_dcp_case` (first weight cut on dim 0) loaded where
    that weight is cut on dim 1: both shards hold 2056 or 2064 elements, 9 blocks each, so DCP
    loads the scales without complaint -- and they belong to other elements. ``load_state_dict``
    must refuse (naming both layouts) and leave the optimizer's own state as it was."""
    import torch.distributed.checkpoint as dcp

    model = shard(make_model(seed=7), mesh, weight_dim=1)
    opt = make_opt(model, "int8")
    train(model, opt, range(1))
    before = state_of(model, opt)
    template = {"optim": opt.state_dict(compact=True)}
    dcp.load(template, checkpoint_id=path)
    out: dict = dict(refused="")
    try:
        opt.load_state_dict(template["optim"])
    except ValueError as exc:
        out["refused"] = str(exc)
    out["before"], out["after"] = before, state_of(model, opt)
    return out


def lowbit_job(rank: int, world: int, ckpt_root: str) -> dict:
    import os

    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    out: dict = dict(train={}, dcp={}, rank=rank)
    for config in CONFIGS:
        progress(f"lowbit/{config}: train")
        out["train"][config] = _guard(train_case, config, mesh)
    for config in ("int8", "bf16"):
        out["dcp"][config] = _guard(torch_format_dcp_case, config, mesh, os.path.join(ckpt_root, f"torch-{config}"))
        dist.barrier()
    out["compact"] = _guard(compact_dcp_case, mesh, os.path.join(ckpt_root, "compact"))
    dist.barrier()
    out["compact_other_layout"] = _guard(compact_other_layout_case, mesh, os.path.join(ckpt_root, "compact"))
    progress("final barrier")
    dist.barrier()
    return out
