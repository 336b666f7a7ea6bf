"""``torchstep bench --lowbit``: optimizer state in fewer bits, timed against float32 state.

For AdamW, Adam, SGD with momentum and Lion, each with ``state_dtype`` None (float32), bfloat16
and int8, on float32 parameters: the bytes of optimizer state per parameter (counted from the
optimizer's own state, step counters aside), the bytes a step must move per element (parameter
read and written, gradient read, each state tensor read and written in its form; int8 adds its
block scales), the bound those bytes set at the memory bandwidth measured in the same run, the
median step time, and the step time against torch's fused float32 step of the same algorithm and
of AdamW. Peak memory is the resident-set high-water mark above the steady state during one
step. Figures are ratios of one run, never pass/fail.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Callable

import torch

import torchstep.optim as ts_optim

from .bench import _median_ms, _peak_extra_mb, memory_bandwidth
from .core import lowbit

# name -> (class, kwargs, state tensors per parameter)
ALGORITHMS: dict[str, tuple[str, dict, int]] = {
    "adamw": ("AdamW", dict(lr=1e-3), 2),
    "adam": ("Adam", dict(lr=1e-3), 2),
    "sgd_momentum": ("SGD", dict(lr=1e-3, momentum=0.9), 1),
    "lion": ("Lion", dict(lr=1e-4), 1),
}
STATE_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "int8": "int8"}
_STATE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "int8": 1.0 + 4.0 / lowbit.BLOCK}


@dataclass
class LowbitRow:
    algorithm: str
    state_dtype: str
    layout: str
    state_bytes_per_param: float
    bytes_per_element: float
    bound_ms: float
    step_ms: float
    peak_extra_mb: float
    torch_fused_ms: float  # torch's fused float32 step of the same algorithm (nan where torch has none)
    torch_fused_adamw_ms: float


def bytes_per_element(state_tensors: int, state_dtype: str) -> float:
    """Parameter read+write and gradient read (float32), each state tensor read+write in its form."""
    return 12 + 2 * state_tensors * _STATE_BYTES[state_dtype]


def _time(make: Callable, count: int, size: int, repeat: int) -> tuple[float, float, float]:
    """(median step ms, peak extra MB, state bytes per parameter) of a fresh optimizer."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(size, generator=gen)) for _ in range(count)]
    for p in params:
        p.grad = torch.randn(size, generator=gen) * 1e-2
    opt = make(params)
    opt.step()
    opt.step()
    state = sum(t.numel() * t.element_size() for st in opt.state.values() for k, t in st.items()
                if torch.is_tensor(t) and k != "step")
    peak = _peak_extra_mb(opt.step)
    ms = _median_ms(opt.step, repeat)
    return ms, peak, state / (count * size)


def run(layouts: dict[str, tuple[int, int]], repeat: int = 5, algorithms: list[str] | None = None,
        progress: Callable[[str], None] = lambda s: None) -> tuple[list[LowbitRow], float]:
    """Every row, and the memory bandwidth (bytes/s, best sample of the run) the bounds use."""
    samples = [memory_bandwidth()]
    rows = []
    for layout, (count, size) in layouts.items():
        progress(f"torch fused AdamW {layout}")
        adamw_ms = _time(lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True), count, size, repeat)[0]
        for name in algorithms or list(ALGORITHMS):
            cls, kwargs, nstate = ALGORITHMS[name]
            fused_ms = float("nan")
            if hasattr(torch.optim, cls):
                progress(f"torch fused {cls} {layout}")
                fused_ms = _time(lambda ps: getattr(torch.optim, cls)(ps, fused=True, **kwargs), count, size, repeat)[0]
            for label, sd in STATE_DTYPES.items():
                progress(f"{name} {label} {layout}")
                samples.append(memory_bandwidth(repeat=5))
                ms, peak, state = _time(lambda ps: getattr(ts_optim, cls)(ps, state_dtype=sd, **kwargs), count, size, repeat)
                per = bytes_per_element(nstate, label)
                rows.append(LowbitRow(name, label, layout, state, per, per * count * size, ms, peak, fused_ms, adamw_ms))
    bandwidth = max(samples)
    for r in rows:
        r.bound_ms = r.bound_ms / bandwidth * 1e3
    return rows, bandwidth


def format_table(rows: list[LowbitRow], bandwidth: float) -> str:
    lines = [
        f"Memory bandwidth (best sample of the run): {bandwidth / 1e9:.1f} GB/s; {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}",
        "",
        "| algorithm | state | layout | state B/param | B/element moved | bound ms | step ms | step / bound "
        "| step / torch fused fp32 (same algorithm) | step / torch fused fp32 AdamW | extra peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = f"{r.step_ms / r.torch_fused_ms:.2f}" if r.torch_fused_ms == r.torch_fused_ms else "-"
        lines.append(
            f"| {r.algorithm} | {r.state_dtype} | {r.layout} | {r.state_bytes_per_param:.2f} | {r.bytes_per_element:.1f} "
            f"| {r.bound_ms:.1f} | {r.step_ms:.1f} | {r.step_ms / r.bound_ms:.2f} | {same} "
            f"| {r.step_ms / r.torch_fused_adamw_ms:.2f} | {r.peak_extra_mb:.0f} |")
    return "\n".join(lines)


def main(layouts: dict[str, tuple[int, int]], repeat: int = 5, algorithms: list[str] | None = None,
         json_path: str | None = None, progress: Callable[[str], None] = lambda s: None) -> str:
    rows, bandwidth = run(layouts, repeat, algorithms, progress)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"bandwidth_bytes_per_s": bandwidth, "rows": [asdict(r) for r in rows]}, f, indent=1)
    return format_table(rows, bandwidth)
