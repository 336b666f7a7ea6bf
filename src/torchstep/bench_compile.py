"""``torchstep bench --compile``: a compiled training step with torchstep's AdamW next to the same
step with torch.optim's AdamW, in one process.

The step is ``loss.backward(); opt.step(); opt.zero_grad()`` after the forward pass of an MLP of
about 1.3M float32 parameters (512 -> 1024 -> 768 -> 10, batch 64), AdamW with a tensor lr,
wrapped in ``torch.compile`` (inductor). Both are compiled and warmed up first; then rounds
alternate between them (each round times a block of steps of each, so drift on a shared machine
hits both alike), and the report gives the median step time of each and the median of the
per-round ratios. Eager steps of both are timed the same way for reference. Figures, never
pass/fail.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

import torchstep.optim as ts_optim

WIDTHS = (512, 1024, 768, 10)
BATCH = 64


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for a, b in zip(WIDTHS, WIDTHS[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def training_step(module, compiled: bool) -> tuple[Callable[[], torch.Tensor], torch.nn.Module]:
    """A training step of the MLP with ``module.AdamW`` (tensor lr), compiled or not."""
    model = _model()
    opt = module.AdamW(model.parameters(), lr=torch.tensor(1e-3), weight_decay=0.01)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(BATCH, WIDTHS[0], generator=gen), torch.randint(0, WIDTHS[-1], (BATCH,), generator=gen)

    def step() -> torch.Tensor:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return (torch.compile(step) if compiled else step), model


@dataclass
class Result:
    parameters: int
    steps_per_block: int
    rounds: int
    times_ms: dict[str, list[float]] = field(default_factory=dict)  # path -> per-round mean step time

    def median(self, path: str) -> float:
        return statistics.median(self.times_ms[path])

    def ratio(self, ours: str, theirs: str) -> float:
        """Median over rounds of ours / theirs (both timed in the same round)."""
        return statistics.median(a / b for a, b in zip(self.times_ms[ours], self.times_ms[theirs]))


def _block_ms(step: Callable[[], torch.Tensor], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) * 1e3 / steps


def run(rounds: int = 7, steps: int = 10, warmup: int = 5, eager: bool = True, threads: int | None = None,
        progress: Callable[[str], None] = lambda s: None) -> Result:
    """Compile and warm up each path, then time ``rounds`` alternating blocks of ``steps`` steps
    (``threads``: torch's intra-op threads for the run, default as they are)."""
    if threads is not None:
        torch.set_num_threads(threads)
    paths: dict[str, Callable[[], torch.Tensor]] = {}
    n_params = 0
    for label, module, compiled in [("torchstep compiled", ts_optim, True), ("torch.optim compiled", torch.optim, True),
                                    ("torchstep eager", ts_optim, False), ("torch.optim eager", torch.optim, False)]:
        if not compiled and not eager:
            continue
        progress(f"warming up {label}")
        step, model = training_step(module, compiled)
        for _ in range(warmup):
            step()
        paths[label] = step
        n_params = sum(p.numel() for p in model.parameters())
    result = Result(n_params, steps, rounds, {label: [] for label in paths})
    for r in range(rounds):
        progress(f"round {r + 1}/{rounds}")
        for label, step in paths.items():
            result.times_ms[label].append(_block_ms(step, steps))
    return result


def format_report(result: Result) -> str:
    """The table: median step time per path, and the torchstep / torch.optim ratios."""
    lines = [f"compiled training step (forward, backward, AdamW with tensor lr, zero_grad): MLP "
             f"{'-'.join(map(str, WIDTHS))}, {result.parameters:,} float32 parameters, batch {BATCH}, "
             f"{torch.get_num_threads()} threads",
             f"median of {result.rounds} alternating rounds of {result.steps_per_block} steps each", "",
             "| path | step (ms) |", "|---|---|"]
    lines += [f"| {label} | {result.median(label):.3f} |" for label in result.times_ms]
    lines.append("")
    for mode in ("compiled", "eager"):
        ours, theirs = f"torchstep {mode}", f"torch.optim {mode}"
        if ours in result.times_ms:
            lines.append(f"torchstep / torch.optim ({mode}): {result.ratio(ours, theirs):.2f}x (median of per-round ratios)")
    return "\n".join(lines)
