"""Generate and launch a Triton kernel for a traced element-wise :class:`Program` (CUDA).

The same program the C backend compiles for CPUs becomes one Triton kernel: one program
instance per chunk of at most ``BLOCK`` elements of one tensor, so a whole bucket -- one large
tensor or thousands of small ones -- is a single launch. Operands arrive as tables of data
pointers (as in the C kernel); scalars as a float64 vector of the program's uniform values.
Per-tensor scalars are further tables (float64 bits), loaded once per program instance;
reductions (sums of squares or plain sums) are stored per chunk (``sums[r * chunks + chunk]``,
float64), as in the C kernel.
Division and square root use the correctly rounded forms (``div_rn``, ``sqrt_rn``) to agree
with torch's element-wise kernels.

With ``TRITON_INTERPRET=1`` Triton runs the very same kernel on CPU tensors; the tests use that
to exercise this path on machines without a GPU.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import linecache
import os
from typing import Any

import torch

from ..core import lowbit
from .cpu_kernel import uniform_nodes
from .codegen import render
from .trace import Program

BLOCK = 2048
_TL_TYPES = {torch.float32: "tl.float32", torch.float64: "tl.float64", torch.bfloat16: "tl.bfloat16",
             torch.float16: "tl.float16"}


def available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def supported_dtype(dtype: torch.dtype) -> bool:
    return dtype in _TL_TYPES


# Triton forms of the node kinds ({T}: compute type). Division and square root use the correctly
# rounded forms in float32 (plain '/' would be the approximate one); float64 ones are IEEE already.
_TL_COMMON = {
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "neg": "(-{0})",
    "fma": "tl.fma({0}, {1}, {2})", "abs": "tl.abs({0})",
    "sign": "(tl.where({0} > 0, 1.0, 0.0) - tl.where({0} < 0, 1.0, 0.0)).to({T})",
    "max": "tl.maximum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)",
    "min": "tl.minimum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)",
    "gt": "tl.where({0} > {1}, 1.0, 0.0).to({T})", "lt": "tl.where({0} < {1}, 1.0, 0.0).to({T})",
    "eq": "tl.where({0} == {1}, 1.0, 0.0).to({T})",
    "where": "tl.where({0} != 0, {1}, {2})",
    "lerp": "tl.where(tl.abs({2}) < 0.5, {0} + {2} * ({1} - {0}), {1} - ({1} - {0}) * (1.0 - {2}))",
}
_TL_FORMS = {
    "tl.float32": {**_TL_COMMON, "div": "tl.div_rn({0}, {1})", "sqrt": "tl.sqrt_rn({0})"},
    "tl.float64": {**_TL_COMMON, "div": "({0} / {1})", "sqrt": "tl.sqrt({0})"},
}


def _expr(node: tuple, ref, tl_type: str) -> str:
    return render(_TL_FORMS[tl_type], node, ref, "Triton", T=tl_type)


def lowbit_args(forms: tuple) -> list[float]:
    """What :func:`generate`'s kernel reads after the uniform values and the rounding seed and step
    (which the fused driver appends, as for the C kernel): the code map and midpoints (padded with
    inf) of each int8 state operand, in operand order."""
    out: list[float] = []
    for f in forms:
        if f in lowbit.INT8_FORMS:
            out += lowbit.CODES[f].tolist() + lowbit.MIDPOINTS[f].tolist() + [float("inf")]
    return out


def generate(program: Program, dtype: torch.dtype, forms: tuple = (), rounding: str = "") -> str:
    """Python source of a ``@triton.jit`` function ``step`` for ``program`` on ``dtype`` tensors.
    ``forms`` / ``rounding``: how the state operands are held and ``p`` is written, as for
    :func:`~.cpu_kernel.generate` (int8 blocks are whole within a program's ``BLOCK``)."""
    storage = _TL_TYPES[dtype]
    tl_type = "tl.float64" if dtype == torch.float64 else "tl.float32"  # 16-bit types computed in float32
    nin = len(program.inputs)
    forms = tuple(forms) or (lowbit.FULL,) * (nin - 2)
    form = {k: (forms[k - 2] if k >= 2 else lowbit.FULL) for k in range(nin)}
    quantized = [k for k in range(nin) if form[k] in lowbit.INT8_FORMS]
    slots = {node: k for k, node in enumerate(uniform_nodes(program))}
    lines = [
        "import triton",
        "import triton.language as tl",
        "",
        "@triton.jit",
        "def step(chunk_tensor, chunk_start, chunk_len, ptrs, args, sums, NT, BLOCK: tl.constexpr):",
        "    c = tl.program_id(0)",
        "    t = tl.load(chunk_tensor + c)",
        "    start = tl.load(chunk_start + c)",
        "    offs = tl.arange(0, BLOCK)",
        "    mask = offs < tl.load(chunk_len + c)",
    ]
    kinds = {lowbit.BF16: "tl.bfloat16", lowbit.F32: "tl.float32", lowbit.INT8_SIGNED: "tl.uint8",
             lowbit.INT8_UNSIGNED: "tl.uint8"}
    stochastic = {k for k in range(2, nin) if lowbit.stochastic_state(form[k], dtype, rounding)}
    bits = lowbit.needs_bits(forms, rounding)
    for k in range(nin):
        lines.append(f"    x{k} = tl.load(ptrs + {k} * NT + t).to(tl.pointer_type({kinds.get(form[k], storage)})) + start + offs")
    scales, kahan, numbers, table = lowbit.table_layout(nin, forms, rounding)
    extra = len(slots)  # where the seed, step and code tables start in ``args``
    for k, at in scales.items():
        lines += [f"    ab{k} = tl.load(ptrs + {at} * NT + t).to(tl.pointer_type(tl.float32)) + start // {lowbit.BLOCK}",
                  f"    a{k} = ab{k} + offs // {lowbit.BLOCK}"]
    if kahan is not None:
        lines.append(f"    kc = tl.load(ptrs + {kahan} * NT + t).to(tl.pointer_type(tl.bfloat16)) + start + offs")
    if numbers is not None:
        lines += [f"    seed = tl.load(args + {extra}).to(tl.uint32)", f"    rstep = tl.load(args + {extra + 1}).to(tl.uint32)",
                  f"    key = _mix32(_mix32(_mix32(seed ^ 0x9E3779B9) ^ rstep) ^ tl.load(ptrs + {numbers} * NT + t).to(tl.uint32))",
                  f"    first = tl.load(ptrs + {numbers + 1} * NT + t)"]
        lines += [f"    key{k} = _mix32(key ^ {(0x9E3779B9 * k) & 0xFFFFFFFF})" for k in sorted(stochastic)]
        extra += 2
    code_at = {}
    for k in quantized:
        code_at[k] = extra
        extra += 512
    for k in range(len(program.per_tensor)):
        lines.append(f"    s{k} = tl.load(ptrs + {table + k} * NT + t).to(tl.float64, bitcast=True).to({tl_type})")
    for i, k in slots.items():
        lines.append(f"    c{i} = tl.load(args + {k}).to({tl_type})")
    for i, node in enumerate(program.nodes):
        if i in slots:
            continue
        if node[0] == "in" and node[1] in code_at:
            k = node[1]
            lines.append(f"    v{i} = (tl.load(args + {code_at[k]} + tl.load(x{k}, mask=mask, other=0).to(tl.int32)).to(tl.float32)"
                         f" * tl.load(a{k}, mask=mask, other=0.0)).to({tl_type})")
        elif node[0] == "in":
            lines.append(f"    v{i} = tl.load(x{node[1]}, mask=mask).to({tl_type})")
        elif node[0] == "tin":
            lines.append(f"    v{i} = s{node[1]}")
        else:
            lines.append(f"    v{i} = {_expr(node, lambda j: f'c{j}' if j in slots else f'v{j}', tl_type)}")
    for name, j in program.outputs.items():
        value = f"c{j}" if j in slots else f"v{j}"
        k = program.inputs.index(name)
        if k in stochastic:
            lines.append(f"    tl.store(x{k}, _round_sr(({value}).to(tl.float32), (((first + start + offs).to(tl.uint32) ^ key{k}) * 0x9E3779B1) >> 16), mask=mask)")
        elif form[k] == lowbit.F32:
            lines.append(f"    tl.store(x{k}, ({value}).to(tl.float32), mask=mask)")
        elif form[k] == lowbit.BF16 or (dtype == torch.bfloat16 and k not in code_at and not (k == 0 and rounding)):
            lines.append(f"    tl.store(x{k}, _bf16_rne(({value}).to(tl.float32)), mask=mask)")
        elif k in code_at:
            lines += _quantize_lines(k, value, code_at[k])
        elif k == 0 and rounding == "sr":
            lines.append(f"    tl.store(x0, _round_sr(({value}).to(tl.float32), (((first + start + offs).to(tl.uint32) ^ key) * 0x9E3779B1) >> 16), mask=mask)")
        elif k == 0 and rounding == "kahan":
            old = f"v{program.input_node('p')}"
            lines += [f"    y = (({value}).to(tl.float32) - {old}) + tl.load(kc, mask=mask).to(tl.float32)",
                      f"    pn = _bf16_rne({old} + y)",
                      "    tl.store(x0, pn, mask=mask)",
                      f"    tl.store(kc, _bf16_rne(y - (pn.to(tl.float32) - {old})), mask=mask)"]
        else:
            lines.append(f"    tl.store(x{k}, ({value}).to({storage}), mask=mask)")
    for r, (j, squared) in enumerate(zip(program.reductions.values(), program.squared())):
        value = f"c{j}" if j in slots else f"v{j}"
        lines.append(f"    d{r} = tl.where(mask, ({value}).to(tl.float64), 0.0)")
        lines.append(f"    tl.store(sums + {r} * tl.num_programs(0) + c, tl.sum({f'd{r} * d{r}' if squared else f'd{r}'}, axis=0))")
    if quantized or rounding or bits or dtype == torch.bfloat16:
        lines = lines[:2] + [_HELPERS] + lines[2:]
    return "\n".join(lines) + "\n"


_HELPERS = """
@triton.jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _bf16_rne(f):  # float32 to bfloat16, to nearest even, written out (Triton's interpreter truncates)
    u = f.to(tl.uint32, bitcast=True)
    out = tl.where((u & 0x7FFFFFFF) > 0x7F800000, (u >> 16) | 0x40, (u + 0x7FFF + ((u >> 16) & 1)) >> 16)
    return out.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _round_sr(f, r):
    u = f.to(tl.uint32, bitcast=True)
    mag = u & 0x7FFFFFFF
    out = tl.where(mag > 0x7F800000, (u >> 16) | 0x40, tl.where(mag == 0x7F800000, u >> 16, (u + r) >> 16))
    return out.to(tl.uint16).to(tl.bfloat16, bitcast=True)
"""


def _quantize_lines(k: int, value: str, at: int) -> list[str]:
    """Store ``value`` as int8 codes of operand ``k``: per block of 256, the largest magnitude
    (NaN if any value is NaN) becomes the scale, and each value the number of midpoints (at
    ``args[at + 256:]``, inf-padded) below value / scale, found by binary search."""
    rows = f"BLOCK // {lowbit.BLOCK}, {lowbit.BLOCK}"
    return [
        f"    q = tl.where(mask, ({value}).to(tl.float32), 0.0)",
        f"    q2 = tl.reshape(q, ({rows}))",
        "    am = tl.max(tl.abs(q2), axis=1)",
        "    am = tl.where(tl.max(tl.where(q2 != q2, 1, 0), axis=1) > 0, float('nan'), am)",
        "    inv = tl.where(am > 0, tl.div_rn(tl.full(am.shape, 1.0, tl.float32), am), 0.0)",
        "    x = q2 * inv[:, None]",
        "    idx = tl.zeros(x.shape, dtype=tl.int32)",
        "    for s in tl.static_range(8):",
        "        step = 128 >> s",
        f"        below = tl.load(args + {at + 256} + idx + step - 1).to(tl.float32) < x",
        "        idx = tl.where(below & (idx + step <= 255), idx + step, idx)",
        f"    tl.store(x{k}, tl.reshape(idx, (BLOCK,)).to(tl.uint8), mask=mask)",
        f"    blk = tl.arange(0, BLOCK // {lowbit.BLOCK})",
        f"    tl.store(ab{k} + blk, am, mask=blk * {lowbit.BLOCK} < tl.load(chunk_len + c))",
    ]


@functools.lru_cache(maxsize=None)
def load(source: str) -> Any:
    """The ``step`` kernel defined by ``source`` (Triton reads a kernel's source, so the module
    is registered with linecache under a stable name)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    filename = f"<torchstep-triton-{digest}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": f"torchstep_triton_{digest}"}
    exec(compile(source, filename, "exec"), namespace)
    return namespace["step"]


def launch(kernel: Any, ptrs: torch.Tensor, ntensors: int, chunks: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
           args: torch.Tensor, device: torch.device, sums: torch.Tensor | None = None) -> None:
    """One launch over every chunk of every tensor of the bucket; ``ptrs`` holds the operands'
    pointer tables one after another (``ntensors`` entries each); ``sums`` receives reductions."""
    ptrs = ptrs.to(device, non_blocking=True)
    chunk_t, chunk_s, chunk_n = (c.to(device, non_blocking=True) for c in chunks)
    args = args.to(device, non_blocking=True)
    kernel[(len(chunks[0]),)](chunk_t, chunk_s, chunk_n, ptrs, args, args if sums is None else sums, ntensors,
                              BLOCK=BLOCK)
