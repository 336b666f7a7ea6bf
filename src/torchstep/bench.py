"""Step-time, first-step latency and peak-memory benchmarks, side by side with torch.optim.

For each algorithm and layout it times torchstep's default (fused) step and torch.optim's
for-loop, foreach and fused paths (where torch has one) in the same process, and sets them
against the bandwidth bound: bytes the step must move per element (each operand read once,
each updated tensor written once) divided by the memory bandwidth measured in the same run
(the best of an in-place ``x += a*y`` and a copy, sampled before every row; on a shared machine
bandwidth drifts, so the bound uses the best sample of the run). Figures are ratios, never
pass/fail.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

import torchstep.optim as ts_optim

# name -> (class, kwargs, state tensors per parameter, torch has fused)
ALGORITHMS: dict[str, tuple[str, dict, int, bool]] = {
    "sgd": ("SGD", dict(lr=1e-3), 0, True),
    "sgd_momentum": ("SGD", dict(lr=1e-3, momentum=0.9), 1, True),
    "adam": ("Adam", dict(lr=1e-3), 2, True),
    "adamw": ("AdamW", dict(lr=1e-3), 2, True),
    "adam_amsgrad": ("Adam", dict(lr=1e-3, amsgrad=True), 3, True),
    "adagrad": ("Adagrad", dict(lr=1e-2), 1, True),
    "adadelta": ("Adadelta", dict(), 2, False),
    "rmsprop": ("RMSprop", dict(lr=1e-3), 1, False),
    "rmsprop_centered_momentum": ("RMSprop", dict(lr=1e-3, centered=True, momentum=0.9), 3, False),
    "adamax": ("Adamax", dict(), 2, False),
    "nadam": ("NAdam", dict(), 2, False),
    "radam": ("RAdam", dict(), 2, False),
    "asgd": ("ASGD", dict(), 1, False),
    "rprop": ("Rprop", dict(), 2, False),
    # not in torch.optim: only torchstep's path is timed
    "lion": ("Lion", dict(), 1, False),
    "lion_cautious": ("Lion", dict(cautious=True), 1, False),
    "adan": ("Adan", dict(), 4, False),
    "adabelief": ("AdaBelief", dict(), 2, False),
    "adopt": ("ADOPT", dict(), 2, False),
    "ademamix": ("AdEMAMix", dict(), 3, False),
    "sgd_schedulefree": ("SGDScheduleFree", dict(), 1, False),
    "adamw_schedulefree": ("AdamWScheduleFree", dict(), 2, False),
    # not element-wise: LAMB and LARS take two fused passes (a per-tensor trust ratio between them), so
    # the one-pass bound is out of their reach; Prodigy (global sums) is not fused
    "lamb": ("Lamb", dict(), 2, False),
    "lars": ("LARS", dict(), 1, False),
    "prodigy": ("Prodigy", dict(), 4, False),
}

LAYOUTS = {"1x20M": (1, 20_000_000), "2000x10k": (2000, 10_000)}


@dataclass
class Row:
    algorithm: str
    layout: str
    bound_ms: float
    times_ms: dict[str, float] = field(default_factory=dict)  # path -> median step time
    peak_extra_mb: dict[str, float] = field(default_factory=dict)  # path -> peak RSS above steady state

    @property
    def best_torch(self) -> tuple[str, float]:
        """The fastest torch path, or ("", nan) where torch.optim has no such algorithm."""
        torch_paths = {k: v for k, v in self.times_ms.items() if k.startswith("torch ")}
        return min(torch_paths.items(), key=lambda kv: kv[1]) if torch_paths else ("", float("nan"))


def bytes_per_element(state_tensors: int, itemsize: int = 4) -> int:
    """Parameter read+write, gradient read, each state tensor read+write."""
    return itemsize * (3 + 2 * state_tensors)


def _median_ms(fn: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def memory_bandwidth(n: int = 20_000_000, repeat: int = 7) -> float:
    """Bytes/s: the best of an in-place ``x += a*y`` (12 B/element) and a copy (8 B/element)."""
    x, y = torch.rand(n), torch.rand(n)
    x.add_(y, alpha=0.5)
    axpy = 12 * n / (_median_ms(lambda: x.add_(y, alpha=0.5), repeat) / 1e3)
    copy = 8 * n / (_median_ms(lambda: x.copy_(y), repeat) / 1e3)
    return max(axpy, copy)


def _rss_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name):
                return int(line.split()[1])
    return 0


def _peak_extra_mb(step: Callable[[], None]) -> float:
    """Peak resident memory during one step above the resident memory before it (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the high-water mark
    except OSError:
        return float("nan")
    before = _rss_kb("VmRSS:")
    step()
    return max(0, _rss_kb("VmHWM:") - before) / 1024


def _paths(cls_name: str, kwargs: dict, torch_fused: bool) -> dict[str, Callable]:
    paths = {"torchstep": lambda ps: getattr(ts_optim, cls_name)(ps, **kwargs)}
    if not hasattr(torch.optim, cls_name):
        return paths
    paths["torch for-loop"] = lambda ps: getattr(torch.optim, cls_name)(ps, foreach=False, **kwargs)
    paths["torch foreach"] = lambda ps: getattr(torch.optim, cls_name)(ps, foreach=True, **kwargs)
    if torch_fused:
        paths["torch fused"] = lambda ps: getattr(torch.optim, cls_name)(ps, fused=True, **kwargs)
    return paths


def run_steps(algorithms: list[str], layouts: dict[str, tuple[int, int]], samples: list[float], repeat: int,
              progress: Callable[[str], None] = lambda s: None) -> list[Row]:
    """Time every path of every algorithm on every layout; append a bandwidth sample before
    each row to ``samples``. Row bounds are filled in by :func:`set_bounds`."""
    rows = []
    for layout, (count, size) in layouts.items():
        gen = torch.Generator().manual_seed(0)
        init = [torch.randn(size, generator=gen) for _ in range(count)]
        grads = [torch.randn(size, generator=gen) * 1e-2 for _ in range(count)]
        for name in algorithms:
            cls_name, kwargs, nstate, torch_fused = ALGORITHMS[name]
            samples.append(memory_bandwidth(repeat=5))
            row = Row(name, layout, bytes_per_element(nstate) * count * size)  # bytes; ms once bandwidth is known
            for path, make in _paths(cls_name, kwargs, torch_fused).items():
                progress(f"{name} {layout} {path}")
                params = [torch.nn.Parameter(t.clone()) for t in init]
                for p, g in zip(params, grads):
                    p.grad = g
                opt = make(params)
                if callable(getattr(opt, "train", None)):
                    opt.train()  # Schedule-Free optimizers step only in train mode
                opt.step()
                opt.step()  # state exists, kernels are built
                row.peak_extra_mb[path] = _peak_extra_mb(opt.step)
                row.times_ms[path] = _median_ms(opt.step, repeat)
                del opt, params
            rows.append(row)
    return rows


_LATENCY_SCRIPT = """
import time, torch, torchstep.optim as O
params = [torch.nn.Parameter(torch.randn({size})) for _ in range({count})]
for p in params:
    p.grad = torch.randn_like(p)
opt = O.{cls}(params, **{kwargs!r})
if callable(getattr(opt, "train", None)):
    opt.train()
start = time.perf_counter()
opt.step()
print(time.perf_counter() - start)
"""


def first_step_latency(name: str, count: int = 2000, size: int = 10_000) -> tuple[float, float]:
    """Seconds for the first step in a fresh process: (cold kernel cache, warm kernel cache)."""
    cls_name, kwargs, _, _ = ALGORITHMS[name]
    script = _LATENCY_SCRIPT.format(size=size, count=count, cls=cls_name, kwargs=kwargs)
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHSTEP_CACHE": cache}
        out = []
        for _ in range(2):
            result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
            out.append(float(result.stdout.strip().splitlines()[-1]))
    return out[0], out[1]


def set_bounds(rows: list[Row], bandwidth: float) -> None:
    """Turn each row's byte count into the time those bytes take at ``bandwidth``."""
    for r in rows:
        r.bound_ms = r.bound_ms / bandwidth * 1e3


def format_table(rows: list[Row], bandwidth: float, latency: dict[str, tuple[float, float]]) -> str:
    """A markdown table: times, bound, and the ratios the targets are stated in."""
    lines = [
        f"Memory bandwidth (best of x += a*y and copy, best sample of the run): {bandwidth / 1e9:.1f} GB/s; "
        f"{torch.get_num_threads()} threads; torch {torch.__version__}",
        "",
        "| algorithm | layout | bound ms | torchstep ms | for-loop ms | foreach ms | torch fused ms "
        "| torchstep / bound | best torch / torchstep | extra peak MB (ts / best torch) | first step s (cold / warm) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r.times_ms
        best_path, best = r.best_torch
        ms = {k: f"{t[k]:.1f}" if k in t else "-" for k in ("torch for-loop", "torch foreach", "torch fused")}
        lat = latency.get(r.algorithm)
        lat_s = f"{lat[0]:.2f} / {lat[1]:.2f}" if lat and r.layout == "2000x10k" else ""
        ratio = f"{best / t['torchstep']:.2f}" if best_path else "-"
        torch_mb = f"{r.peak_extra_mb[best_path]:.0f}" if best_path else "-"
        lines.append(
            f"| {r.algorithm} | {r.layout} | {r.bound_ms:.1f} | {t['torchstep']:.1f} | {ms['torch for-loop']} "
            f"| {ms['torch foreach']} | {ms['torch fused']} | {t['torchstep'] / r.bound_ms:.2f} | {ratio} "
            f"| {r.peak_extra_mb['torchstep']:.0f} / {torch_mb} | {lat_s} |"
        )
    return "\n".join(lines)


def main(algorithms: list[str] | None = None, layouts: dict | None = None, repeat: int = 5, latency: bool = True,
         json_path: str | None = None, progress: Callable[[str], None] = lambda s: None) -> str:
    """Run the benchmark and return the markdown table (and write JSON if asked)."""
    algorithms = algorithms or list(ALGORITHMS)
    layouts = layouts or LAYOUTS
    samples = [memory_bandwidth()]
    rows = run_steps(algorithms, layouts, samples, repeat, progress)
    bandwidth = max(samples)
    set_bounds(rows, bandwidth)
    lat = {}
    if latency:
        for name in algorithms:
            progress(f"{name} first-step latency")
            lat[name] = first_step_latency(name)
    table = format_table(rows, bandwidth, lat)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"bandwidth_bytes_per_s": bandwidth, "bandwidth_samples": samples, "rows": [asdict(r) for r in rows], "first_step_s": lat}, f, indent=1)
    return table
