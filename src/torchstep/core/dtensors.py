"""DTensor parameters (FSDP2's ``fully_shard``, tensor parallel): the few operations the staged
algorithms need to compute over the whole logical tensor rather than the local shard.

A reduction of a sharded DTensor (a norm, a sum, a mean along a sharded dimension) comes back
*partial*: every rank holds its shard's part, and the whole value is their combination across
the mesh. :func:`whole` performs that combination (one all-reduce), so what the algorithms see is
the value an unsharded run computes -- a plain tensor for a per-tensor number, a DTensor whose
placements have no partial one for a tensor of values (Adafactor's row and column norms).

Every function here returns plain tensors unchanged, so plain parameters keep their exact
arithmetic. This module is where torchstep imports DTensor (the fused backend's plans take it from
here too).
"""

from __future__ import annotations

from typing import Any

import torch

if torch.distributed.is_available():
    import torch.distributed.tensor as dt
    from torch.distributed.tensor import DTensor, Partial, Replicate, distribute_tensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset as local_shape_and_offset
else:  # a torch built without distributed support has no DTensor
    dt = DTensor = Partial = Replicate = distribute_tensor = local_shape_and_offset = None


def flat_offset(t: torch.Tensor) -> int | None:
    """Where this rank's part of ``t`` starts in the whole tensor flattened, when that part is one
    contiguous run of it (sharded along the first dimension only, or replicated); None otherwise.
    0 for a plain tensor."""
    if not is_dtensor(t):
        return 0
    shape, offset = local_shape_and_offset(t.shape, t.device_mesh, t.placements)
    if tuple(shape[1:]) != tuple(t.shape[1:]):
        return None
    row = 1
    for n in t.shape[1:]:
        row *= n
    return int(offset[0]) * row if len(offset) else 0


def local_of(t: Any) -> Any:
    """This rank's part of ``t``: a DTensor's local tensor, or ``t`` itself."""
    return t._local_tensor if type(t) is DTensor else t


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a DTensor (an ``nn.Parameter`` wrapping one included)."""
    return DTensor is not None and isinstance(t, DTensor)


def whole(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its partial placements reduced across the mesh (each one all-reduce): a 0-d
    DTensor becomes the plain 0-d tensor of its value, the same on every rank; a larger one keeps
    its sharded and replicated placements and has its partial ones made replicated. A plain
    tensor is returned as it is."""
    if not is_dtensor(t):
        return t
    if t.dim() == 0:
        return t.full_tensor()
    if not any(pl.is_partial() for pl in t.placements):
        return t
    return t.redistribute(t.device_mesh, [Replicate() if pl.is_partial() else pl for pl in t.placements])


def laid_out_as(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` (of ``like``'s logical shape) with ``like``'s placements, for an in-place update of
    ``like``: sharding propagation may give a result computed from a sharded tensor another
    layout (a replicated one, for a parameter whose shards are uneven or empty). Replicated to
    sharded is each rank taking its slice, so the values are exactly those computed. A plain
    ``t``, or one already laid out as ``like``, is returned as it is."""
    if not is_dtensor(t) or not is_dtensor(like) or tuple(t.placements) == tuple(like.placements):
        return t
    return t.redistribute(like.device_mesh, like.placements)


def whole_all(values: list) -> list:
    """:func:`whole` of each of ``values``, with one all-reduce per kind instead of one per value:
    0-d DTensors of one mesh, placements and dtype (the per-tensor norms or sums of a group's
    shards) have their local parts stacked into one tensor, reduced together -- a partial norm or
    sum combines element by element, so each comes out as its own reduction would -- and split
    again. Anything else goes through :func:`whole` on its own."""
    out: list = [None] * len(values)
    batches: dict = {}
    for i, v in enumerate(values):
        if is_dtensor(v) and v.dim() == 0 and any(pl.is_partial() for pl in v.placements):
            batches.setdefault((id(v.device_mesh), tuple(v.placements), v.dtype), []).append(i)
        else:
            out[i] = whole(v)
    for members in batches.values():
        first = values[members[0]]
        if len(members) == 1:
            out[members[0]] = whole(first)
            continue
        local = torch.stack([values[i]._local_tensor for i in members])
        combined = DTensor.from_local(local, first.device_mesh, first.placements, run_check=False).full_tensor()
        for k, i in enumerate(members):
            out[i] = combined[k]
    return out


def zeros_reduced(like: torch.Tensor, shape: tuple, dim: int) -> torch.Tensor:
    """Zeros of ``shape`` (``like``'s with dimension ``dim`` reduced to size 1) laid out as
    ``like``: a DTensor on its mesh, sharded as it is except along ``dim``, which is replicated
    (a dimension of size 1 has nothing to shard; FSDP2 over tensor parallel shards a dimension
    twice, the outer one strided) -- unless ``dim`` has size 1 in ``like`` too: then the zeros are
    ``like``-shaped and take ``like``'s placements, as parameter-shaped state does. For a plain
    ``like``, plain zeros."""
    if not is_dtensor(like):
        return like.new_zeros(shape)
    dim = dim % like.dim()
    if tuple(shape) == tuple(like.shape):  # dimension ``dim`` has size 1 already: laid out as ``like``
        placements = like.placements
    else:
        placements = [Replicate() if getattr(pl, "dim", None) == dim else pl for pl in like.placements]
    return dt.zeros(shape, dtype=like.dtype, device_mesh=like.device_mesh, placements=placements)


def any_nonzero(t: torch.Tensor) -> bool:
    """Whether any element of the whole tensor ``t`` is non-zero (the same answer on every rank)."""
    if is_dtensor(t):
        return bool(whole(t.any()))
    return bool(t.any())


def gather(t: torch.Tensor) -> torch.Tensor:
    """The whole logical tensor as a plain tensor on every rank (an all-gather of the shards;
    free for a replicated DTensor); a plain tensor as it is."""
    return t.full_tensor() if is_dtensor(t) else t


def local_part(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The part of ``full`` (a plain tensor of ``like``'s logical shape, the same on every rank)
    that ``like``'s placements put on this rank, as a DTensor laid out as ``like`` -- each rank
    takes its own slice, with no communication. For a plain ``like``, ``full`` itself."""
    if not is_dtensor(like):
        return full
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)
