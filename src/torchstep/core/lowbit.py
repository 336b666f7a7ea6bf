r"""Optimizer state in fewer bits, and bfloat16 parameters trained without a float32 copy.

Three group options (constructor keywords of every element-wise algorithm, or per-group keys):

``state_dtype``
    ``None`` (default): the parameter's dtype, exactly torch's behaviour. ``torch.bfloat16``: each
    state tensor is held in bfloat16 (read as float, rounded stochastically on write, see below). ``"int8"``:
    block-wise quantization (Dettmers et al., "8-bit Optimizers via Block-wise Quantization",
    ICLR 2022). A state tensor :math:`x` is cut into blocks of ``BLOCK`` = 256 consecutive
    elements; block :math:`b` keeps :math:`a_b = \max_{i \in b} |x_i|` (float32) and each element
    one byte, the index of the code-map value nearest :math:`x_i / a_b`:

    .. math::
        c_i = \arg\min_k |q_k - x_i / a_b| \qquad \hat x_i = q_{c_i}\, a_b

    (a value exactly between two codes takes the lower one; with the unsigned map a positive value
    never takes the code 0, so a second moment never reads back as zero). The code maps :math:`q` are
    *dynamic* maps: 256 sorted values in :math:`[-1, 1]` (signed, for state that can be negative)
    or :math:`[0, 1]` (unsigned, for the state an algorithm lists in ``nonnegative_state``) whose
    magnitudes are spread over seven decades (:func:`dynamic_code`), so small values keep their
    relative precision. Both hold 0 and their extremes exactly, so a block's largest value and
    any zero survive the round trip unchanged. A block holding a NaN gets a NaN scale (all its values read back NaN).
    State of a parameter with fewer than ``MIN_QUANTIZED`` = 4096 elements -- counted on the
    whole parameter, not a shard of it, so one device, DDP and FSDP2 agree -- stays in full
    precision, as does the state an algorithm lists in ``exact_state`` (a parameter average, or
    Schedule-Free's ``z``, which is a copy of the weights).
    ``torch.float32``: float32 state for a 16-bit (or float64) parameter.
    bfloat16 state of a wider parameter is written with stochastic rounding (below): rounded to
    nearest, a second moment whose per-step change (``1 - beta2``) is under half a bfloat16 step
    would stall.
``stochastic_rounding``
    ``True`` (seed 0) or an integer seed: a bfloat16 parameter's new value, computed in float32,
    is rounded to bfloat16 stochastically -- up with probability equal to the fraction of the
    gap below it -- so updates smaller than half a bfloat16 step still move the weight on
    average; so is its state where that is bfloat16 too. The random bits are the top 16 bits of
    ``(index ^ key) * 0x9E3779B1`` (32-bit), the element's index in the whole parameter and a key
    hashed from (seed, the group's ``rounding_step`` counter, the parameter's number, the
    operand): reproducible, independent of threads, one multiply per element.
``kahan``
    ``True``: a bfloat16 parameter keeps a bfloat16 compensation buffer ``kahan_comp`` holding
    what rounding took off the last update, added back into the next:
    :math:`y = \Delta_t + c,\; \theta_t = \mathrm{bf16}(\theta_{t-1} + y),\; c = y - (\theta_t - \theta_{t-1})`.

Parameters of other dtypes are unaffected by the last two. In memory an int8 state tensor is its
codes (``uint8``, the parameter's shape) under the state's own name plus its block scales under
``<name>.absmax``; ``state_dict()`` turns that into torch's format or the compact one
(:mod:`torchstep.core.checkpoint`).
"""

from __future__ import annotations

from typing import Any

import torch

from . import dtensors

BLOCK = 256
MIN_QUANTIZED = 4096
ABSMAX = ".absmax"
KAHAN = "kahan_comp"
OPTIONS = ("state_dtype", "stochastic_rounding", "kahan")

FULL, BF16, F32, INT8_SIGNED, INT8_UNSIGNED = "full", "bf16", "f32", "int8s", "int8u"
INT8_FORMS = (INT8_SIGNED, INT8_UNSIGNED)


def dynamic_code(signed: bool) -> torch.Tensor:
    """The 256 sorted float32 values of a dynamic code map. For each decade ``e`` of seven
    (scale ``10**(e - 6)``), the magnitudes are the midpoints of ``2**e`` (signed) or
    ``2**(e + 1)`` (unsigned) equal steps between 0.1 and 1 times the scale: 127 or 254 of
    them. Both maps add 0 and 1; the signed one also holds the magnitudes negated, except that
    -1 takes the place of the largest negated one, so a block's scale is exact whichever sign
    its largest value has (then dequantizing and quantizing again gives back the same codes and
    scales: a checkpoint in torch's format reloads without drift)."""
    mags: list[float] = []
    for e in range(7):
        n = 2 ** e if signed else 2 ** (e + 1)
        edges = torch.linspace(0.1, 1.0, n + 1, dtype=torch.float64)
        mags += ((edges[:-1] + edges[1:]) / 2 * 10.0 ** (e - 6)).tolist()
    values = [0.0, 1.0] + mags
    if signed:
        values += [-m for m in sorted(mags)[:-1]] + [-1.0]
    code = torch.tensor(sorted(values), dtype=torch.float32)
    assert code.numel() == 256 and bool((code[1:] > code[:-1]).all())
    return code


CODES = {INT8_SIGNED: dynamic_code(True), INT8_UNSIGNED: dynamic_code(False)}
# a value is coded as the number of midpoints below it (ties go to the lower code); the unsigned
# map's first "midpoint" is 0 itself, so no positive value is coded as zero: a second moment that
# read back as 0 would turn the update m / (sqrt(v) + eps) into m / eps (Li et al., "Memory
# Efficient Optimizers with 4-bit States", NeurIPS 2023, the zero-point problem)
MIDPOINTS = {form: ((c[1:].double() + c[:-1].double()) / 2).float() for form, c in CODES.items()}
MIDPOINTS[INT8_UNSIGNED][0] = 0.0


# -- options ----------------------------------------------------------------------------

def rounds_stochastically(group: dict) -> bool:
    """Whether ``group`` asks for stochastic rounding: ``True`` or any integer seed -- 0 included,
    which is a seed like any other, not "off" (that is ``False``)."""
    sr = group.get("stochastic_rounding", False)
    return sr is not False and sr is not None


def active(group: dict) -> bool:
    """Whether any option of this module is set in ``group``."""
    return (group.get("state_dtype") is not None or rounds_stochastically(group)
            or bool(group.get("kahan", False)))


def check_group(algo: Any, group: dict, owner: str) -> None:
    """Validate the options of this module in ``group`` (ValueError naming the option, its
    value and what is allowed); ``algo``: the optimizer's element-wise Algorithm, or None."""
    sd = group.get("state_dtype")
    if isinstance(sd, str) and sd in ("bfloat16", "bf16", "float32"):  # spellings setups and configs can write
        sd = group["state_dtype"] = torch.bfloat16 if sd != "float32" else torch.float32
    if sd is not None and sd != torch.bfloat16 and sd != torch.float32 and sd != "int8":
        raise ValueError("state_dtype must be None, torch.float32, torch.bfloat16 (or 'float32', 'bfloat16') or "
                         f"'int8', got {sd!r}")
    sr = group.get("stochastic_rounding", False)
    if not isinstance(sr, (bool, int)) or (not isinstance(sr, bool) and sr < 0):
        raise ValueError(f"stochastic_rounding must be True, False or a non-negative integer seed, got {sr!r}")
    kahan = group.get("kahan", False)
    if not isinstance(kahan, bool):
        raise ValueError(f"kahan must be True or False, got {kahan!r}")
    if kahan and sr is not False:
        raise ValueError(f"stochastic_rounding={sr!r} and kahan=True are two ways to keep small bfloat16 updates; "
                         "choose one (a parameter group takes each option it does not set from the constructor: "
                         "set the other one to False in the group)")
    if not active(group):
        return
    if algo is None:
        raise ValueError(f"{owner}: state_dtype, stochastic_rounding and kahan apply to the element-wise "
                         "algorithms (Adam, AdamW, SGD, Lion, ...); this optimizer's step is not one")
    if sd is not None and not reducible_names(algo, group):
        raise ValueError(f"{owner}: state_dtype={sd!r} has nothing to reduce: this algorithm's state "
                         f"({', '.join(algo.state_names(group)) or 'none'}) stays in the parameter's dtype")
    if group.get("differentiable", False):
        raise ValueError(f"{owner}: differentiable=True cannot be combined with state_dtype, stochastic_rounding or "
                         "kahan (autograd cannot follow quantization or random rounding)")
    if group.get("cautious", False):
        raise ValueError(f"{owner}: cautious=True cannot be combined with state_dtype, stochastic_rounding or kahan")


def reducible_names(algo: Any, group: dict) -> tuple[str, ...]:
    """The element-wise state tensors ``state_dtype`` may hold in fewer bits."""
    return tuple(n for n in algo.elementwise_names(group) if n not in algo.exact_state)


def seed(group: dict) -> int:
    """The stochastic-rounding seed of ``group`` (True means 0)."""
    sr = group.get("stochastic_rounding", False)
    return 0 if sr is True else int(sr)


def rounding(p: torch.Tensor, group: dict) -> str:
    """How ``p``'s new value is written: "sr" (stochastic), "kahan", or "" (to nearest)."""
    if dtensors.is_dtensor(p):
        dtype = p._local_tensor.dtype
    else:
        dtype = p.dtype
    if dtype != torch.bfloat16:
        return ""
    if rounds_stochastically(group):
        return "sr"
    return "kahan" if group.get("kahan", False) else ""


def form_of(algo: Any, p: torch.Tensor, group: dict, name: str) -> str:
    """How state ``name`` of ``p`` is held under ``group``'s ``state_dtype``."""
    sd = group.get("state_dtype")
    if sd is None or name in algo.exact_state or not p.is_floating_point():
        return FULL
    if sd == torch.bfloat16:
        return FULL if p.dtype == torch.bfloat16 else BF16
    if sd == torch.float32:
        return FULL if p.dtype == torch.float32 else F32
    if p.numel() < MIN_QUANTIZED:
        return FULL
    return INT8_UNSIGNED if name in algo.nonnegative_state else INT8_SIGNED


def forms_of(algo: Any, p: torch.Tensor, group: dict, names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(form_of(algo, p, group, n) for n in names)


def held_as_codes(state: dict, name: Any) -> bool:
    """Whether entry ``name`` of ``state`` is int8 codes or their block scales (never cast)."""
    return isinstance(name, str) and (name.endswith(ABSMAX) or name + ABSMAX in state)


def held_form(state: dict, name: str, p: torch.Tensor) -> str | None:
    """The form ``state[name]`` is held in now (None when absent)."""
    t = state.get(name)
    if t is None:
        return None
    if not torch.is_tensor(t):
        raise RuntimeError(f"state '{name}' is a {type(t).__name__}, not a tensor (was the state edited?)")
    dtype = t.dtype
    scales = state.get(name + ABSMAX)
    if scales is not None and not (torch.is_tensor(scales) and scales.is_floating_point()):
        raise RuntimeError(f"the block scales '{name}{ABSMAX}' of int8 state '{name}' are {type(scales).__name__}"
                           f"{' of ' + str(scales.dtype) if torch.is_tensor(scales) else ''}, not a floating-point "
                           "tensor (was the state edited?)")
    if name + ABSMAX in state and p.is_floating_point() and dtype != torch.uint8:
        raise RuntimeError(f"int8 state '{name}' has block scales '{name}{ABSMAX}' but its codes are {dtype}, not "
                           "torch.uint8 (was the state edited?); read as numbers they would be wrong")
    if dtype == torch.uint8 and p.is_floating_point():
        if name + ABSMAX not in state:
            raise RuntimeError(f"int8 state '{name}' has its codes but not their block scales '{name}{ABSMAX}' "
                               "(was the state edited?); the codes alone are not numbers")
        return "int8"
    if dtype == torch.bfloat16 and p.dtype != torch.bfloat16:
        return BF16
    if dtype == torch.float32 and p.dtype != torch.float32 and p.is_floating_point():
        return F32
    return FULL


# -- block-wise quantization (on plain tensors; DTensors through their local shards) ------

def blocks(numel: int) -> int:
    return (numel + BLOCK - 1) // BLOCK


def quantize(x: torch.Tensor, form: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, absmax) of a plain tensor ``x``: uint8 codes shaped like ``x`` and one float32
    scale per block of its flattened elements (see the module docstring)."""
    flat = x.detach().reshape(-1).float()
    n = flat.numel()
    padded = torch.zeros(blocks(n) * BLOCK, dtype=torch.float32, device=x.device)
    padded[:n] = flat
    rows = padded.view(-1, BLOCK)
    absmax = rows.abs().amax(dim=1)
    absmax = torch.where(rows.isnan().any(dim=1), torch.full_like(absmax, float("nan")), absmax)
    inv = torch.where(absmax > 0, absmax.reciprocal(), torch.zeros_like(absmax))
    scaled = rows * inv[:, None]
    codes = torch.searchsorted(MIDPOINTS[form].to(x.device), scaled.reshape(-1), side="left")
    codes = codes.clamp_(0, 255).to(torch.uint8)[:n].view(x.shape)
    return codes, absmax


def dequantize(codes: torch.Tensor, absmax: torch.Tensor, form: str, dtype: torch.dtype) -> torch.Tensor:
    """The values ``codes`` and ``absmax`` stand for, as a tensor of ``dtype`` (computed in
    float32: code value times block scale)."""
    flat = CODES[form].to(codes.device)[codes.reshape(-1).long()]
    n = flat.numel()
    scale = absmax.repeat_interleave(BLOCK)[:n] if n else absmax[:0]
    return (flat * scale).view(codes.shape).to(dtype)


# -- stochastic rounding ------------------------------------------------------------------

_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor | int) -> Any:
    """A 32-bit integer hash (xor-shift-multiply), on int64 tensors or ints holding 32-bit values;
    the kernels' C code computes the same function on uint32."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def tensor_key(seed_value: int, step: int, number: int) -> int:
    """The per-(step, parameter) key of the stochastic-rounding bits."""
    k = _mix32((seed_value & _M32) ^ 0x9E3779B9)
    k = _mix32(k ^ (step & _M32))
    return _mix32(k ^ (number & _M32))


def random_bits(key: int, numel: int, device: Any = None, offset: int = 0) -> torch.Tensor:
    """16 random bits per element (int64 tensor): the hash of ``key`` and the element's index in
    the whole parameter (``offset``: that of the first, for a shard; see :func:`element_offset`)."""
    idx = (torch.arange(numel, dtype=torch.int64, device=device) + offset) & _M32
    return (((idx ^ key) * 0x9E3779B1) & _M32) >> 16  # one multiply per element: its top 16 bits


def element_offset(p: torch.Tensor) -> int:
    """The index in the whole flattened parameter of the first element this rank holds (0 for a
    plain tensor): rounding bits drawn from whole-tensor indices are the same sharded or not --
    where the shard is one contiguous run of the whole (FSDP2's dim-0 sharding); other layouts
    draw them from local indices."""
    offset = dtensors.flat_offset(p)
    return 0 if offset is None else offset


def round_stochastic(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """float32 ``x`` rounded to bfloat16 with the given 16 random bits per element: the bits are
    added below bfloat16's last place and the result truncated (NaN stays NaN, inf stays inf)."""
    u = x.contiguous().view(torch.int32).to(torch.int64) & _M32
    mag = u & 0x7FFFFFFF
    special = mag >= 0x7F800000
    summed = torch.where(special, u, u + bits.view(u.shape))
    out = (summed >> 16) & 0xFFFF
    out = torch.where(mag > 0x7F800000, (u >> 16) | 0x40, out)
    return (out - ((out >> 15) << 16)).to(torch.int16).view(torch.bfloat16)


def kahan_write(p: torch.Tensor, old: torch.Tensor, new: torch.Tensor, comp: torch.Tensor) -> None:
    """Write float32 ``new`` (from float32 ``old``) into bfloat16 ``p`` with compensation ``comp``
    (bfloat16, updated in place): see the module docstring."""
    y = (new - old) + comp.float()
    rounded = (old + y).to(torch.bfloat16)
    comp.copy_(y - (rounded.float() - old))
    p.copy_(rounded)


# -- state held in a form, read and written in full precision -----------------------------

local_of = dtensors.local_of  # blocks and element indices live on this rank's part of a tensor


def _like(local: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``local`` as the local part of a tensor laid out as ``like`` (itself for a plain ``like``)."""
    if not dtensors.is_dtensor(like):
        return local
    return dtensors.DTensor.from_local(local, like.device_mesh, like.placements, run_check=False,
                                       shape=like.shape, stride=like.stride())


def int8_form(algo: Any, name: str) -> str:
    """The int8 code map state ``name`` of ``algo`` uses."""
    return INT8_UNSIGNED if name in algo.nonnegative_state else INT8_SIGNED


def full_value(algo: Any, state: dict, name: str, p: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """State ``name`` of ``p`` in full precision (``dtype``, by default ``p``'s), laid out as ``p``:
    a new tensor when it is held in fewer bits or another dtype, else the held tensor itself."""
    dtype = p.dtype if dtype is None else dtype
    t = state[name]
    if held_form(state, name, p) == "int8":
        codes, absmax = local_of(t), state[name + ABSMAX]
        if tuple(codes.shape) != tuple(local_of(p).shape) or absmax.dim() != 1 or absmax.numel() != blocks(codes.numel()):
            raise RuntimeError(
                f"int8 state '{name}' is inconsistent: codes of shape {tuple(codes.shape)} with "
                f"{absmax.numel()} block scales (shape {tuple(absmax.shape)}), for a parameter (shard) of shape "
                f"{tuple(local_of(p).shape)}, which needs {blocks(local_of(p).numel())}; was the state edited or "
                "loaded from another model?")
        return _like(dequantize(codes, absmax, int8_form(algo, name), dtype), p)
    return t if t.dtype == dtype else t.to(dtype)


def write_value(algo: Any, state: dict, name: str, p: torch.Tensor, value: torch.Tensor,
                bits: torch.Tensor | None = None) -> None:
    """Store full-precision ``value`` into state ``name`` in the form it is held in: re-quantized
    for int8; for bfloat16, rounded stochastically with ``bits`` (16 per element) when given, else
    to nearest. Nothing to do when ``value`` is the held tensor."""
    t = state[name]
    if value is t:
        return
    if held_form(state, name, p) == "int8":
        codes, absmax = quantize(local_of(value), int8_form(algo, name))
        local_of(t).copy_(codes)
        state[name + ABSMAX].copy_(absmax)
    elif bits is not None and t.dtype == torch.bfloat16:
        local_of(t).copy_(round_stochastic(local_of(value).float(), bits).view(local_of(t).shape))
    else:
        t.copy_(value)


def hold(algo: Any, state: dict, name: str, p: torch.Tensor, form: str) -> None:
    """Make ``state[name]`` held in ``form`` (converting from whatever it is held in now)."""
    held = held_form(state, name, p)
    if held is None or held == form or (held == "int8" and form in INT8_FORMS):
        return
    if state[name].layout != torch.strided:  # a sparse buffer (SGD's, from sparse gradients) stays as it is
        return
    value = full_value(algo, state, name, p)
    state.pop(name + ABSMAX, None)
    if form == FULL:
        state[name] = value
    elif form in (BF16, F32):
        state[name] = value.to(torch.bfloat16 if form == BF16 else torch.float32)
    else:
        codes, absmax = quantize(local_of(value), form)
        state[name] = _like(codes, p)
        state[name + ABSMAX] = absmax


def conform(algo: Any, p: torch.Tensor, group: dict, state: dict) -> None:
    """Hold ``p``'s element-wise state in the forms ``group`` asks for, and give a bfloat16
    parameter under ``kahan=True`` its compensation buffer (zeros) -- or drop one it no longer
    needs. Cheap when nothing is to change."""
    names = algo.elementwise_names(group)
    for n in names:
        if n in state:
            hold(algo, state, n, p, form_of(algo, p, group, n))
    for k in (KAHAN, *names, *(n + ABSMAX for n in names)):  # state only this module makes: held densely
        v = state.get(k)
        if (torch.is_tensor(v) and v.layout == torch.strided and not dtensors.is_dtensor(v) and not v.is_contiguous()
                and (k == KAHAN or k.endswith(ABSMAX) or held_form(state, k, p) not in (None, FULL))):
            state[k] = v.contiguous()
    if rounding(p, group) == "kahan":
        if KAHAN not in state:
            state[KAHAN] = torch.zeros_like(p, dtype=torch.bfloat16)
        comp = state[KAHAN]
        if not (torch.is_tensor(comp) and comp.dtype == torch.bfloat16 and tuple(comp.shape) == tuple(p.shape)):
            got = f"{comp.dtype} of shape {tuple(comp.shape)}" if torch.is_tensor(comp) else type(comp).__name__
            raise RuntimeError(f"the Kahan buffer '{KAHAN}' is {got}; it must be torch.bfloat16 of the parameter's "
                               f"shape {tuple(p.shape)} (was the state edited?)")
    else:
        state.pop(KAHAN, None)


def touched(group: dict, state: dict, p: torch.Tensor) -> bool:
    """Whether :func:`conform` may have something to do: the group has options of this module,
    or the state holds something in a form only they make (int8, bfloat16 beside a wider
    parameter, a Kahan buffer: the options were turned off since). (Other dtype mismatches, e.g.
    a parameter whose data was swapped to another dtype, are left for the step to refuse, as
    torch does.)"""
    if active(group):
        return True
    return any(k == KAHAN or k.endswith(ABSMAX) or (torch.is_tensor(v) and v.dtype == torch.bfloat16
                                                     and p.dtype != torch.bfloat16) for k, v in state.items())


def operand_names(names: tuple[str, ...], forms: tuple[str, ...], how: str) -> tuple[str, ...]:
    """The state entries a fused kernel touches: the state tensors, then the block scales of the
    int8 ones, then the Kahan buffer."""
    scales = tuple(n + ABSMAX for n, f in zip(names, forms) if f in INT8_FORMS)
    return names + scales + ((KAHAN,) if how == "kahan" else ())


def table_layout(inputs: int, forms: tuple[str, ...], how: str) -> tuple[dict[int, int], int | None, int | None, int]:
    """Where a kernel finds its tables after the ``inputs`` operands' (p, g, state...): the block
    scales of each int8 operand (by operand index), the Kahan buffer, the parameters' numbers (for
    random bits; the next table holds their shards' :func:`element_offset`), and the first table after them (per-tensor scalars). ``forms``: of the state
    operands (after p and g)."""
    table = inputs
    scales = {}
    for k, f in enumerate(forms, start=2):
        if f in INT8_FORMS:
            scales[k] = table
            table += 1
    kahan = numbers = None
    if how == "kahan":
        kahan, table = table, table + 1
    if needs_bits(forms, how):  # the parameters' numbers, then their first elements' indices
        numbers, table = table, table + 2
    return scales, kahan, numbers, table


def expected(p_local: torch.Tensor, name: str, forms: dict[str, str]) -> tuple[torch.dtype, tuple]:
    """(dtype, shape) a kernel expects of state entry ``name`` (local shard) beside ``p_local``."""
    if name == KAHAN:
        return torch.bfloat16, tuple(p_local.shape)
    if name.endswith(ABSMAX):
        return torch.float32, (blocks(p_local.numel()),)
    form = forms[name]
    dtype = {BF16: torch.bfloat16, F32: torch.float32, INT8_SIGNED: torch.uint8,
             INT8_UNSIGNED: torch.uint8}.get(form, p_local.dtype)
    return dtype, tuple(p_local.shape)


def stochastic_state(form: str, dtype: torch.dtype, how: str) -> bool:
    """Whether a state operand held in ``form`` beside a ``dtype`` parameter written ``how`` is
    written with stochastic rounding: bfloat16 state held for a wider parameter always (rounded to
    nearest, a second moment whose per-step change (1 - beta2 ~ 1e-3) is under half a bfloat16
    step would stall), and a bfloat16 parameter's own-dtype state when its group rounds
    stochastically."""
    return form == BF16 or (form == FULL and dtype == torch.bfloat16 and how == "sr")


def needs_bits(forms: tuple[str, ...], how: str) -> bool:
    """Whether a layout draws random bits (so its kernel takes the seed, the step and the
    parameters' numbers)."""
    return how == "sr" or BF16 in forms


def state_key(key: int, operand: int) -> int:
    """The key of state operand ``operand``'s rounding bits, from its parameter's key."""
    return _mix32(key ^ ((0x9E3779B9 * operand) & _M32))


def advance_rounding(group: dict) -> None:
    """Count a step of a group that rounds stochastically (its bits depend on the count)."""
    if rounds_stochastically(group) or group.get("state_dtype") == torch.bfloat16:
        group["rounding_step"] = int(group.get("rounding_step", 0)) + 1
