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


def generate(program: Program, dtype: torch.dtype) -> str:
    """Python source of a ``@triton.jit`` function ``step`` for ``program`` on ``dtype`` tensors."""
    storage = _TL_TYPES[dtype]
    tl_type = "tl.float64" if dtype == torch.float64 else "tl.float32"  # 16-bit types computed in float32
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
    for k in range(len(program.inputs)):
        lines.append(f"    x{k} = tl.load(ptrs + {k} * NT + t).to(tl.pointer_type({storage})) + start + offs")
    nin = len(program.inputs)
    for k in range(len(program.per_tensor)):
        lines.append(f"    s{k} = tl.load(ptrs + {nin + k} * NT + t).to(tl.float64, bitcast=True).to({tl_type})")
    for i, k in slots.items():
        lines.append(f"    c{i} = tl.load(args + {k}).to({tl_type})")
    for i, node in enumerate(program.nodes):
        if i in slots:
            continue
        if node[0] == "in":
            lines.append(f"    v{i} = tl.load(x{node[1]}, mask=mask).to({tl_type})")
        elif node[0] == "tin":
            lines.append(f"    v{i} = s{node[1]}")
        else:
            lines.append(f"    v{i} = {_expr(node, lambda j: f'c{j}' if j in slots else f'v{j}', tl_type)}")
    for name, j in program.outputs.items():
        value = f"c{j}" if j in slots else f"v{j}"
        lines.append(f"    tl.store(x{program.inputs.index(name)}, ({value}).to({storage}), mask=mask)")
    for r, (j, squared) in enumerate(zip(program.reductions.values(), program.squared())):
        value = f"c{j}" if j in slots else f"v{j}"
        lines.append(f"    d{r} = tl.where(mask, ({value}).to(tl.float64), 0.0)")
        lines.append(f"    tl.store(sums + {r} * tl.num_programs(0) + c, tl.sum({f'd{r} * d{r}' if squared else f'd{r}'}, axis=0))")
    return "\n".join(lines) + "\n"


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
