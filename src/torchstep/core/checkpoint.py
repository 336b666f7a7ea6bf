"""The two checkpoint formats of state held in fewer bits (:mod:`torchstep.core.lowbit`).

*torch's format* (``state_dict()``, the default): every state tensor under torch's name, in the
parameter's dtype -- int8 state dequantized, bfloat16 state cast up -- so ``torch.optim``
resumes it and nothing downstream needs to know. Saving builds those full-precision tensors:
for int8 AdamW state, 8 bytes per float32 parameter on top of the 2 held (freed once the dict is
dropped).

*The compact format* (``state_dict(compact=True)``): state as held. An int8 state tensor ``x``
becomes ``x.codes`` (uint8, the parameter's shape) and ``x.absmax`` (float32 block scales), names
torch does not use: ``torch.optim`` given such a dict finds no ``x`` at its next step and raises
KeyError, instead of reading codes as numbers. bfloat16 state stays bfloat16 under its own name
(torch casts it up when it loads, which is exact). Loading it back is bit-exact. The state of a
parameter holding int8 state is copied (about 2 bytes per parameter for int8 AdamW), not shared
with the optimizer: DCP loads into a state dict in place, and the optimizer's codes must never
change under scales they were not coded with, nor its step without its moments, before
``load_state_dict`` has checked them.

For a DTensor parameter (FSDP2), codes are a DTensor laid out as the parameter, and the block
scales -- computed per local shard -- a 1-d DTensor of ``ranks * K`` values sharded over every
mesh dimension, ``K`` the most blocks any rank's shard can have (zero-padded), so DCP can save
and load them. Those scales belong to the saving layout's shards, so the compact format only
loads onto the same mesh shape and placements: ``x.layout`` (int64, see :func:`layout_record`)
records them, and ``load_state_dict`` refuses a checkpoint whose record differs from the
parameter's (DCP itself would reshard the codes and hand back the scales unchanged, and the state
would read back wrong). torch's format reshards freely.

``load_state_dict`` accepts both, and holds what it loads in the forms the group asks for
(quantizing a full-precision state).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import dtensors, lowbit

CODES = ".codes"
LAYOUT = ".layout"


def export_state(algo: Any, p: torch.Tensor, state: dict, compact: bool) -> dict:
    """One parameter's state as a checkpoint holds it (a new dict; in torch's format, tensors
    held in full precision are shared, not copied; in the compact format, the state of a
    parameter holding int8 state is all copies -- DCP loads into a state dict in place, and
    nothing of it may change before ``load_state_dict`` has checked the codes' layout)."""
    quantized = any(k.endswith(lowbit.ABSMAX) for k in state)
    if not quantized and not any(
            torch.is_tensor(v) and v.dtype == torch.bfloat16 and p.dtype != torch.bfloat16 for v in state.values()):
        return state
    copy = compact and quantized
    out: dict = {}
    for k, v in state.items():
        if k.endswith(lowbit.ABSMAX):
            continue
        held = lowbit.held_form(state, k, p) if torch.is_tensor(v) and k != lowbit.KAHAN else None
        if held == "int8":
            if compact:
                out[k + CODES] = v.clone()
                out[k + lowbit.ABSMAX] = _absmax_out(state[k + lowbit.ABSMAX].clone(), p)
                if dtensors.is_dtensor(p):
                    out[k + LAYOUT] = layout_record(p)
            else:
                out[k] = lowbit.full_value(algo, state, k, p)
        elif held == lowbit.BF16 and not compact:
            out[k] = v.to(p.dtype)
        else:
            out[k] = v.clone() if copy and torch.is_tensor(v) else v
    return out


def import_state(p: torch.Tensor, state: dict) -> dict:
    """A checkpoint's state of one parameter in memory's layout: compact int8 entries become
    codes under the state's name plus ``<name>.absmax`` (local block scales)."""
    if not any(isinstance(k, str) and k.endswith(CODES) for k in state):
        return state
    out: dict = {}
    for k, v in state.items():
        if isinstance(k, str) and k.endswith(CODES):
            name = k[: -len(CODES)]
            if name + lowbit.ABSMAX not in state:
                raise ValueError(f"compact state '{k}' comes without its block scales '{name}{lowbit.ABSMAX}'")
            codes = v.to(device=p.device)
            if tuple(codes.shape) != tuple(p.shape) or codes.dtype != torch.uint8:
                raise ValueError(f"compact state '{k}' has shape {tuple(codes.shape)} and dtype {codes.dtype}; "
                                 f"expected uint8 of the parameter's shape {tuple(p.shape)}")
            if dtensors.is_dtensor(p) != dtensors.is_dtensor(codes):
                raise ValueError(f"compact state '{k}' was saved for a {'' if dtensors.is_dtensor(codes) else 'non-'}"
                                 "DTensor parameter and cannot be loaded into this one; save torch's format "
                                 "(state_dict(), the default) to change how parameters are sharded")
            if dtensors.is_dtensor(p):
                _check_layout(k, state.get(name + LAYOUT), p)
            out[name] = codes
            local = lowbit.local_of(out[name])
            absmax = _absmax_in(state[name + lowbit.ABSMAX], local.numel()).to(device=local.device)
            out[name + lowbit.ABSMAX] = absmax
        elif isinstance(k, str) and (k.endswith(lowbit.ABSMAX) or k.endswith(LAYOUT)):
            continue
        else:
            out[k] = v
    return out


def layout_record(p: torch.Tensor) -> torch.Tensor:
    """What decides how DTensor ``p`` is cut into local shards, hence its int8 blocks: the mesh
    dimensions, then one number per placement (0 replicated, -1 partial, ``d + 1`` sharded on
    dimension ``d``, plus ``1000 * split_factor`` for FSDP2's strided sharding under TP)."""
    codes = []
    for pl in p.placements:
        if pl.is_shard():
            codes.append(pl.dim + 1 + 1000 * int(getattr(pl, "split_factor", 0) or 0))
        else:
            codes.append(-1 if pl.is_partial() else 0)
    return torch.tensor([*p.device_mesh.shape, *codes], dtype=torch.int64)


def _describe(record: list[int]) -> str:
    n = len(record) // 2
    names = ["replicated" if c == 0 else "partial" if c < 0 else
             f"Shard({c % 1000 - 1})" + (f" strided x{c // 1000}" if c >= 1000 else "") for c in record[n:]]
    return f"mesh {tuple(record[:n])} with placements ({', '.join(names)})"


def _check_layout(key: str, saved: Any, p: torch.Tensor) -> None:
    """Refuse compact int8 state saved under another layout than DTensor ``p``'s (its block
    scales belong to other shards)."""
    here = layout_record(p).tolist()
    if saved is None:
        raise ValueError(f"compact state '{key}' of a DTensor parameter comes without its layout record "
                         f"'{key[: -len(CODES)]}{LAYOUT}', so its block scales cannot be matched to this "
                         f"{_describe(here)}; load torch's format (state_dict(), the default) instead")
    saved = lowbit.local_of(saved).tolist() if torch.is_tensor(saved) else list(saved)
    if saved != here:
        raise ValueError(f"compact state '{key}' was saved on a {_describe(saved)}, this parameter is on a "
                         f"{_describe(here)}: its int8 block scales belong to the saving layout's shards. Resume "
                         "on the same mesh and placements, or save and load torch's format (state_dict(), the "
                         "default), which reshards")


def _padded_blocks(p: torch.Tensor) -> int:
    """The most blocks any rank's shard of DTensor ``p`` can have (the same on every rank)."""
    shape = list(p.shape)
    mesh = p.device_mesh
    for dim, pl in enumerate(p.placements):
        if pl.is_shard():
            shape[pl.dim] = math.ceil(shape[pl.dim] / mesh.size(dim))
    return lowbit.blocks(math.prod(shape))


def _absmax_out(absmax: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    if not dtensors.is_dtensor(p):
        return absmax
    k = _padded_blocks(p)
    padded = absmax.new_zeros(k)
    padded[: absmax.numel()] = absmax
    mesh = p.device_mesh
    placements = [dtensors.dt.Shard(0)] * mesh.ndim
    return dtensors.DTensor.from_local(padded, mesh, placements, run_check=False, shape=(mesh.size() * k,), stride=(1,))


def _absmax_in(absmax: torch.Tensor, numel: int) -> torch.Tensor:
    local = absmax._local_tensor if dtensors.is_dtensor(absmax) else absmax
    need = lowbit.blocks(numel)
    if local.numel() < need:
        raise ValueError(f"compact block scales hold {local.numel()} values where {need} are needed: "
                         "the checkpoint was written for another model or another sharding")
    out = local[:need].to(torch.float32).contiguous().clone()
    if bool((out < 0).any()):
        raise ValueError("compact block scales must be non-negative (the largest magnitude of each block, or NaN), "
                         f"got {float(out.min()):g}: the checkpoint was altered")
    return out
