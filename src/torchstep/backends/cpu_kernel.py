"""Generate, compile and cache a C/OpenMP kernel for a traced element-wise :class:`Program`.

One kernel call updates a whole bucket (a list of same-dtype CPU tensors): the work is cut into
chunks of at most ``CHUNK`` elements, OpenMP threads take chunks, and each chunk is one
vectorisable loop that reads every operand once and writes every updated tensor once.
Tensors stay where they are (no flattening copy): the kernel receives, per operand, a table of
data pointers; after them one table of doubles per per-tensor scalar (read once per chunk).
A program with reductions also writes, per chunk, the sum of squares of each reduced expression
(or its plain sum, see :class:`~.trace.Summed`; accumulated in double) to ``sums[r * nchunks + chunk]``; the caller adds chunks up per tensor.

Compilation uses the system C compiler (``$CC`` or ``cc``) with ``-O3 -march=native -ffp-contract=off -fopenmp``;
a kernel is compiled once per program and dtype and cached on disk, so later processes only load
it. The cache trusts nothing it finds (:mod:`.kernel_cache`): a private directory, atomic writes,
a content hash checked before a library is loaded. A compiler that fails is found out once per
process (a tiny probe program is compiled before the first real one) and reported with its own
error; the steps then take the reference path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..core import lowbit
from . import kernel_cache
from .codegen import render
from .trace import Program

CHUNK = 1 << 15
# -fno-math-errno lets sqrt vectorise; no -ffast-math: IEEE results, as torch's kernels give.
# $TORCHSTEP_CFLAGS appends flags (part of the cache key).
# -ffp-contract=off: a multiply followed by an add rounds twice, as torch's separate operations do
# (GCC contracts them into one fused multiply-add by default); the update's own fused multiply-adds
# are explicit ``fma`` calls, which the flag leaves alone
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fno-math-errno", "-fPIC", "-shared"]
# dtype -> (compute type, math-function suffix, storage type, load expression, store function)
_C_TYPES = {
    torch.float32: ("float", "f", "float", "{}", ""),
    torch.float64: ("double", "", "double", "{}", ""),
    # half types are stored as 16 bits and computed in float (as torch's fused kernels do)
    torch.bfloat16: ("float", "f", "uint16_t", "bf16_load({})", "bf16_store"),
    torch.float16: ("float", "f", "_Float16", "(float)({})", "(_Float16)"),
}
_HALF_HELPERS = """
static inline float bf16_load(uint16_t h) { union { uint32_t u; float f; } v; v.u = (uint32_t)h << 16; return v.f; }
static inline uint16_t bf16_store(float f) {
  union { uint32_t u; float f; } v; v.f = f;
  if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40u);  /* quiet NaN */
  return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);                   /* round to nearest even */
}
"""
_loaded: dict[str, ctypes.CDLL] = {}


class KernelUnavailable(RuntimeError):
    """No kernel can be had for this program (the message says why); the step takes the
    reference path for the tensors it was meant for, before anything was written."""


class CompilerUnavailable(KernelUnavailable):
    """No working C compiler with OpenMP was found."""


def supported_dtype(dtype: torch.dtype) -> bool:
    return dtype in _C_TYPES


def compiler() -> str | None:
    """The C compiler to use, or None when there is none."""
    return _which(os.environ.get("CC") or "cc")


@functools.lru_cache(maxsize=8)
def _which(cc: str) -> str | None:
    return shutil.which(cc)


# C forms of the node kinds ({T}: compute type, {f}: math-function suffix). max/min propagate
# NaN as torch.maximum does; lerp is torch's two-sided formula (a small weight steps from the
# start, a large one back from the end), each side one fused multiply-add as in torch's kernel.
_C_FORMS = {
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
    "neg": "(-{0})", "fma": "fma{f}({0}, {1}, {2})", "sqrt": "sqrt{f}({0})", "abs": "fabs{f}({0})",
    "pow": "pow{f}({0}, {1})",
    "sign": "(({T})(({0}) > 0) - ({T})(({0}) < 0))",
    "max": "(({0}) != ({0}) ? ({0}) : ({1}) != ({1}) ? ({1}) : (({0}) > ({1}) ? ({0}) : ({1})))",
    "min": "(({0}) != ({0}) ? ({0}) : ({1}) != ({1}) ? ({1}) : (({0}) < ({1}) ? ({0}) : ({1})))",
    "gt": "(({T})({0} > {1}))", "lt": "(({T})({0} < {1}))", "eq": "(({T})({0} == {1}))",
    "where": "(({0}) != 0 ? ({1}) : ({2}))",
    "lerp": "(fabs{f}({2}) < ({T})0.5 ? fma{f}({2}, {1} - {0}, {0}) : fma{f}({0} - {1}, ({T})1 - {2}, {1}))",
}


def _expr(node: tuple, ref, elem: bool, ctype: str, suffix: str) -> str:
    """C source of one node; ``ref(i)`` names an earlier node in the right precision."""
    return render(_C_FORMS, node, ref, "C", T=ctype, f=suffix if elem else "")


def uniform_nodes(program: Program) -> list[int]:
    """Indices of the nodes that are the same for every element (constants, arguments and
    arithmetic on them), in program order. The kernel receives their values precomputed."""
    cached = program.__dict__.get("_uniform")
    if cached is not None:
        return cached
    uniform: list[int] = []
    seen: set[int] = set()
    for i, node in enumerate(program.nodes):
        if node[0] in ("const", "arg") or (node[0] not in ("in", "tin") and all(j in seen for j in node[1:] if isinstance(j, int))):
            uniform.append(i)
            seen.add(i)
    program.__dict__["_uniform"] = uniform
    return uniform


def _sqrt(x):
    return x.sqrt() if isinstance(x, torch.Tensor) else math.sqrt(x)


# the Python expression of each operation, for the uniform nodes' generated function
_PY_FORMS = {
    "add": "{0} + {1}", "sub": "{0} - {1}", "mul": "{0} * {1}", "div": "{0} / {1}", "neg": "-{0}",
    "fma": "{0} * {1} + {2}", "sqrt": "_sqrt({0})", "pow": "{0} ** {1}", "abs": "abs({0})",
}


def evaluate_uniform(program: Program, args: list) -> list[float]:
    """Values of :func:`uniform_nodes`, computed in Python with the arguments as given (floats or
    0-d tensors), so scalar arithmetic follows torch's rules exactly (e.g. in a tensor lr's dtype).
    Runs a function generated once per program: one Python statement per node, in program order,
    each the operation the node names."""
    fn = program.__dict__.get("_uniform_fn")
    if fn is None:
        fn = program.__dict__["_uniform_fn"] = _uniform_function(uniform_steps(program))
    return fn(args)


def _uniform_function(steps: list[tuple]) -> Any:
    consts, lines, names = [], [], []
    for i, op, a in steps:
        if op == "const":
            consts.append(a[0])
            lines.append(f"    v{i} = C[{len(consts) - 1}]")
        elif op == "arg":
            lines.append(f"    v{i} = args[{int(a[0])}]")
        else:
            lines.append(f"    v{i} = " + _PY_FORMS[op].format(*(f"v{int(j)}" for j in a)))
        names.append(f"v{i}")
    source = "def uniform(args, C=C, _sqrt=_sqrt, float=float):\n" + "\n".join(lines) + \
        f"\n    return [{', '.join(f'float({n})' for n in names)}]\n"
    scope: dict[str, Any] = {"C": consts, "_sqrt": _sqrt}
    exec(compile(source, "<torchstep uniform scalars>", "exec"), scope)  # noqa: S102 -- source built above from node kinds
    return scope["uniform"]


def uniform_steps(program: Program) -> list[tuple]:
    """(node, op, operands) for each uniform node, prepared once per program; ValueError for an
    operation with no Python form."""
    cached = program.__dict__.get("_uniform_steps")
    if cached is None:
        cached = []
        for i in uniform_nodes(program):
            op, *a = program.nodes[i]
            if op not in ("const", "arg") and op not in _PY_FORMS:
                raise ValueError(f"uniform node {op} has no Python form")
            cached.append((i, op, a))
        program.__dict__["_uniform_steps"] = cached
    return cached


def _c_floats(name: str, values: torch.Tensor) -> str:
    """A static float array holding ``values`` exactly (hexadecimal literals)."""
    return f"static const float {name}[{values.numel()}] = {{" + ", ".join("INFINITY" if v == float("inf") else float(v).hex() + "f" for v in values.tolist()) + "};"


_LOWBIT_HELPERS = """
static inline uint8_t code_search(const float *mid, float x) {  /* how many midpoints lie below x */
  int idx = 0;
  for (int s = 128; s > 0; s >>= 1) if (idx + s <= 255 && mid[idx + s - 1] < x) idx += s;
  return (uint8_t)idx;
}
/* A value's key: its sign, its exponent clamped to [2^-31, 2) and 7 bits of mantissa (the top 16
   bits of a float of that range). No two midpoints share a key (none lies in (0, 2^-21) in
   magnitude), so lut[key] holds all a search needs: the midpoints below the key's range (bits
   0-7), whether one lies inside it (bit 8) and that one's low 16 bits (bits 16-31), which order
   values of one key as their magnitudes do. Zero itself is told apart: a midpoint may be 0. */
static inline uint32_t code_key(uint32_t u) {
  uint32_t e = (u >> 23) & 0xffu;
  e = e < 96u ? 96u : (e > 127u ? 127u : e);
  return ((u >> 31) << 12) | ((e - 96u) << 7) | ((u >> 16) & 0x7fu);
}
static void fill_lut(uint32_t *lut, const float *mid) {
  for (uint32_t key = 0; key < 8192; ++key) {
    const uint32_t sign = key >> 12, e = ((key >> 7) & 31u) + 96u, man = key & 0x7fu;
    union { uint32_t u; float f; } v; v.u = (sign << 31) | (e << 23) | (man << 16) | (sign ? 0xffffu : 0u);
    const uint32_t low = code_search(mid, v.f);
    union { float f; uint32_t u; } m; m.f = mid[low];
    const uint32_t inside = low < 255 && (m.u >> 16) == (v.u >> 16);
    lut[key] = low | (inside << 8) | (inside ? (m.u << 16) : 0u);
  }
}
static inline uint8_t code_of(const uint32_t *lut, float x, uint32_t zero) {
  union { float f; uint32_t u; } v; v.f = x;
  const uint32_t entry = lut[code_key(v.u)], low16 = v.u & 0xffffu, mid16 = entry >> 16;
  const uint32_t past = (v.u >> 31) ? (mid16 > low16) : (mid16 < low16);  /* the midpoint lies below x */
  return (uint8_t)(x == 0.0f ? zero : (entry & 0xffu) + (((entry >> 8) & 1u) & past));
}
static inline uint32_t abs_bits(float x) { union { float f; uint32_t u; } v; v.f = x; return v.u & 0x7fffffffu; }
static inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16; x *= 0x7feb352dU; x ^= x >> 15; x *= 0x846ca68bU; x ^= x >> 16; return x;
}
static inline uint16_t bf16_store_sr(float f, uint32_t r) {  /* r: 16 random bits */
  union { uint32_t u; float f; } v; v.f = f;
  const uint32_t mag = v.u & 0x7fffffffu;
  if (mag > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40u);
  if (mag == 0x7f800000u) return (uint16_t)(v.u >> 16);
  return (uint16_t)((v.u + r) >> 16);
}
"""


def generate(program: Program, dtype: torch.dtype, forms: tuple[str, ...] = (), rounding: str = "") -> str:
    """The C source of ``program`` for tensors of ``dtype``; ``args`` holds the values of
    :func:`uniform_nodes`, in order (then, with stochastic rounding, the seed and the group's
    rounding step). ``forms``: how each state operand (the inputs after ``p`` and ``g``) is held
    (:mod:`torchstep.core.lowbit`; all full precision if empty); ``rounding``: how ``p`` is
    written ("sr", "kahan" or to nearest). int8 state turns the loop into blocks of
    :data:`~torchstep.core.lowbit.BLOCK` elements: the block's values are computed into a local
    buffer, then its scale is the largest magnitude and each value is coded to the nearest
    code-map value."""
    ctype, suffix, storage, load_fmt, store_fn = _C_TYPES[dtype]
    nin = len(program.inputs)
    forms = tuple(forms) or (lowbit.FULL,) * (nin - 2)
    form = {k: (forms[k - 2] if k >= 2 else lowbit.FULL) for k in range(nin)}
    quantized = [k for k in range(nin) if form[k] in lowbit.INT8_FORMS]
    slots = {node: k for k, node in enumerate(uniform_nodes(program))}
    nuniform = len(slots)
    head = [f"  const {ctype} c{i} = ({ctype})args[{k}];" for i, k in slots.items()]
    body = []
    ref = lambda j: f"c{j}" if j in slots else f"v{j}"  # noqa: E731

    stochastic = {k for k in range(2, nin) if lowbit.stochastic_state(form[k], dtype, rounding)}
    bits = lowbit.needs_bits(forms, rounding)

    def load(k: int) -> str:
        if form[k] == lowbit.BF16:
            return f"({ctype})bf16_load(x{k}[i])"
        if form[k] == lowbit.F32:
            return f"({ctype})x{k}[i]"
        if form[k] in lowbit.INT8_FORMS:
            return f"({ctype})(CODE{k}[x{k}[i]] * sc{k})"
        return load_fmt.format(f"x{k}[i]")

    for i, node in enumerate(program.nodes):
        if i in slots:
            continue
        if node[0] == "in":
            body.append(f"      const {ctype} v{i} = {load(node[1])};")
        elif node[0] == "tin":
            body.append(f"      const {ctype} v{i} = s{node[1]};")
        else:
            body.append(f"      const {ctype} v{i} = {_expr(node, ref, True, ctype, suffix)};")
    stores = []
    written_q = []
    for n, j in program.outputs.items():
        k = program.inputs.index(n)
        value = f"{'c' if j in slots else 'v'}{j}"
        if k in stochastic:
            stores.append(f"      x{k}[i] = bf16_store_sr((float){value}, (((uint32_t)(first + start + i) ^ key{k}) * 0x9e3779b1u) >> 16);")
        elif form[k] == lowbit.BF16:
            stores.append(f"      x{k}[i] = bf16_store((float){value});")
        elif form[k] == lowbit.F32:
            stores.append(f"      x{k}[i] = (float){value};")
        elif form[k] in lowbit.INT8_FORMS:
            written_q.append(k)
            stores.append(f"      {{ const float q = (float){value}; q{k}[i - b0] = q; const uint32_t u = abs_bits(q); "
                          f"m{k} = u > m{k} ? u : m{k}; }}")
        elif k == 0 and rounding == "sr":
            stores.append(f"      x0[i] = bf16_store_sr((float){value}, (((uint32_t)(first + start + i) ^ key) * 0x9e3779b1u) >> 16);")
        elif k == 0 and rounding == "kahan":
            old = f"v{program.input_node('p')}"
            stores.append(f"      {{ const float y = ((float){value} - {old}) + bf16_load(kc[i]); const uint16_t pn = "
                          f"bf16_store({old} + y); x0[i] = pn; kc[i] = bf16_store(y - (bf16_load(pn) - {old})); }}")
        else:
            stores.append(f"      x{k}[i] = {store_fn}({value});")
    scales, kahan, numbers, table = lowbit.table_layout(nin, forms, rounding)
    ptrs = []
    for k in range(nin):
        kind = {lowbit.BF16: "uint16_t", lowbit.F32: "float", lowbit.INT8_SIGNED: "uint8_t",
                lowbit.INT8_UNSIGNED: "uint8_t"}.get(form[k], storage)
        ptrs.append(f"    {kind} *restrict x{k} = (({kind} *const *)ptrs[{k}])[t] + start;")
    ptrs += [f"    float *restrict a{k} = ((float *const *)ptrs[{at}])[t];" for k, at in scales.items()]
    if kahan is not None:
        ptrs.append(f"    uint16_t *restrict kc = ((uint16_t *const *)ptrs[{kahan}])[t] + start;")
    if numbers is not None:
        ptrs.append(f"    const uint32_t key = mix32(mix32(mix32(seed ^ 0x9e3779b9u) ^ rstep) ^ "
                    f"(uint32_t)((const int64_t *)ptrs[{numbers}])[t]);")
        ptrs.append(f"    const int64_t first = ((const int64_t *)ptrs[{numbers + 1}])[t];  /* the shard's first element */")
        ptrs += [f"    const uint32_t key{k} = mix32(key ^ {(0x9E3779B9 * k) & 0xFFFFFFFF}u);" for k in sorted(stochastic)]
    ptrs += [f"    const {ctype} s{k} = ({ctype})((const double *)ptrs[{table + k}])[t];"
             for k in range(len(program.per_tensor))]
    sums = [f"r{r}" for r in range(len(program.reductions))]
    body += [f"      {{ const double d = (double){ref(j)}; r{r} += {'d * d' if sq else 'd'}; }}"
             for r, (j, sq) in enumerate(zip(program.reductions.values(), program.squared()))]
    tables = [_c_floats(f"CODE{k}", lowbit.CODES[form[k]]) for k in quantized]
    inf = torch.tensor([float("inf")])
    tables += [_c_floats(f"MID{k}", torch.cat([lowbit.MIDPOINTS[form[k]], inf])) for k in written_q]
    tables += [f"static uint32_t LUT{k}[8192]; static volatile int LUT{k}_ready = 0;" for k in written_q]
    head += [f"  if (!LUT{k}_ready) {{ fill_lut(LUT{k}, MID{k}); LUT{k}_ready = 1; }}" for k in written_q]
    if bits:
        head += [f"  const uint32_t seed = (uint32_t)(int64_t)args[{nuniform}];",
                 f"  const uint32_t rstep = (uint32_t)(int64_t)args[{nuniform + 1}];"]
    simd = "    #pragma omp simd" + (f" reduction(+:{','.join(sums)})" if sums else "")
    if quantized:
        if sums:
            raise KernelUnavailable("int8 state with per-tensor reductions has no C kernel")
        loop = [
            f"    for (int64_t b0 = 0; b0 < n; b0 += {lowbit.BLOCK}) {{",
            f"      const int64_t bend = n - b0 < {lowbit.BLOCK} ? n : b0 + {lowbit.BLOCK};",
            f"      const int64_t blk = (start + b0) / {lowbit.BLOCK};",
            *(f"      const float sc{k} = a{k}[blk];" for k in quantized),
            *(f"      float q{k}[{lowbit.BLOCK}]; uint32_t m{k} = 0;" for k in written_q),
            # no "omp simd reduction(max:...)" here: GCC then keeps the loop scalar (it does not
            # vectorise that clause's per-lane arrays), while without it the loop vectorises
            "      for (int64_t i = b0; i < bend; ++i) {",
            *body, *stores,
            "      }",
        ]
        for k in written_q:
            loop += [
                f"      {{ union {{ uint32_t u; float f; }} top; top.u = m{k};  /* the largest magnitude; a NaN's bits are larger */",
                f"        const float am = m{k} > 0x7f800000u ? NAN : top.f; a{k}[blk] = am;",
                "        const float inv = am > 0 ? 1.0f / am : 0.0f;",
                "        #pragma omp simd",
                f"        for (int64_t j = 0; j < bend - b0; ++j) x{k}[b0 + j] = code_of(LUT{k}, q{k}[j] * inv, {int((lowbit.MIDPOINTS[form[k]] < 0).sum())}u); }}",
            ]
        loop.append("    }")
    else:
        loop = [simd, "    for (int64_t i = 0; i < n; ++i) {", *body, *stores, "    }"]
    half = dtype in (torch.bfloat16, torch.float16) or any(f != lowbit.FULL for f in forms) or rounding
    return "\n".join([
        "#include <math.h>",
        "#include <stdint.h>",
        _HALF_HELPERS if half else "",
        _LOWBIT_HELPERS if (quantized or rounding or bits) else "",
        *tables,
        "void step(int64_t nchunks, const int64_t *chunk_tensor, const int64_t *chunk_start, const int64_t *chunk_len,",
        "          void *const *const *ptrs, const double *args, double *sums, int nthreads) {",
        *head,
        "  #pragma omp parallel for schedule(static) num_threads(nthreads)",
        "  for (int64_t c = 0; c < nchunks; ++c) {",
        "    const int64_t t = chunk_tensor[c], start = chunk_start[c], n = chunk_len[c];",
        *ptrs,
        *(f"    double {r} = 0;" for r in sums),
        *loop,
        *(f"    sums[{r} * nchunks + c] = r{r};" for r in range(len(sums))),
        "  }",
        "}",
        "",
    ])


@functools.lru_cache(maxsize=1)
def _machine_tag() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    return f"{platform.machine()}-{sys.platform}-{hashlib.sha1(cpu.encode()).hexdigest()[:8]}"


_PROBE = "int step(void) { return 0; }\n"
_broken_compilers: dict[tuple, str] = {}  # (cc, flags) -> why it cannot build anything
_failed_programs: dict[str, str] = {}  # digest -> why this one program did not build


def _flags() -> list[str]:
    return FLAGS + os.environ.get("TORCHSTEP_CFLAGS", "").split()


def _compile(cc: str, flags: list[str], source: str, workdir: Path) -> Path:
    """Compile ``source`` into a shared library in ``workdir`` and check that it loads and
    exports ``step``; raises KernelUnavailable with the compiler's own words otherwise."""
    src, out = workdir / "kernel.c", workdir / "kernel.so"
    src.write_text(source)
    try:
        result = subprocess.run([cc, *flags, str(src), "-o", str(out)], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelUnavailable(f"C compiler {cc!r} could not run: {exc}") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[:500] or f"exit status {result.returncode}"
        raise KernelUnavailable(f"C compiler {cc!r} failed: {detail}")
    try:
        ctypes.CDLL(str(out)).step  # noqa: B018 -- loads it and looks the symbol up
    except (OSError, AttributeError) as exc:
        raise KernelUnavailable(f"C compiler {cc!r} exited 0 but wrote no loadable library ({exc})") from None
    return out


def _check_compiler(cc: str, flags: list[str]) -> None:
    """Compile the probe once per (compiler, flags) and process; raise if it cannot."""
    key = (cc, tuple(flags))
    if key not in _broken_compilers:
        with tempfile.TemporaryDirectory(prefix="torchstep-probe-") as tmp:
            try:
                _compile(cc, flags, _PROBE, Path(tmp))
                _broken_compilers[key] = ""
            except KernelUnavailable as exc:
                _broken_compilers[key] = str(exc)
    if _broken_compilers[key]:
        raise CompilerUnavailable(_broken_compilers[key])


def _build_into(cache: "kernel_cache.KernelCache", cc: str, flags: list[str], source: str, digest: str) -> None:
    with tempfile.TemporaryDirectory(dir=cache.root, prefix=".build-") as tmp:
        cache.store(f"step_{digest}", _compile(cc, flags, source, Path(tmp)))


def load(source: str) -> ctypes.CDLL:
    """Compile ``source`` (or reuse the verified cached library) and return it loaded.
    Raises :class:`KernelUnavailable` (nothing is loaded) when neither works."""
    cc = compiler()
    flags = _flags()
    digest = hashlib.sha256((source + (cc or "") + " ".join(flags) + _machine_tag()).encode()).hexdigest()[:24]
    if digest in _loaded:
        return _loaded[digest]
    if digest in _failed_programs:
        raise KernelUnavailable(_failed_programs[digest])
    if cc is None:
        raise CompilerUnavailable("no C compiler found (set $CC or install gcc/clang)")
    cache = kernel_cache.KernelCache.open()
    lib = cache.load(f"step_{digest}")
    if lib is None:  # missing, or failed verification: (re)build it once
        _check_compiler(cc, flags)
        try:
            try:
                _build_into(cache, cc, flags, source, digest)
            except OSError as exc:  # e.g. a read-only cache: this process keeps a private one
                cache = kernel_cache.KernelCache.private(f"{cache.root} is not writable ({exc.strerror or exc})")
                _build_into(cache, cc, flags, source, digest)
        except KernelUnavailable as exc:
            _failed_programs[digest] = str(exc)
            raise
        except OSError as exc:
            _failed_programs[digest] = f"the kernel could not be written to {cache.root}: {exc}"
            raise KernelUnavailable(_failed_programs[digest]) from None
        lib = cache.load(f"step_{digest}")
        if lib is None:
            _failed_programs[digest] = f"the kernel built in {cache.root} did not pass verification when loaded back"
            raise KernelUnavailable(_failed_programs[digest])
    try:
        lib.step.restype = None
        lib.step.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    except AttributeError:
        raise KernelUnavailable(f"cached kernel step_{digest} has no 'step' function") from None
    _loaded[digest] = lib
    return lib
