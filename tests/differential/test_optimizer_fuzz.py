"""Differential fuzz of every torch.optim class against torchstep.optim (see optim_cases.py for the
case generator, the comparisons and the tolerance rule).

CI runs a fixed seed set per class; ``TORCHSTEP_FUZZ_SEEDS="0-2000"`` (or ``make fuzz SEEDS=0-2000``)
runs more, ``TORCHSTEP_FUZZ_CLASSES="Adam,SGD"`` restricts the classes. A failure prints the seed,
class, full configuration, step and first differing entry, and the one command that replays it.
"""

from __future__ import annotations

import os

import pytest

from .optim_cases import CLASSES, parse_seeds, run_case

CI_SEEDS = "0-40"
SEEDS = parse_seeds(os.environ.get("TORCHSTEP_FUZZ_SEEDS") or CI_SEEDS)
FUZZ_CLASSES = [c for c in (os.environ.get("TORCHSTEP_FUZZ_CLASSES") or ",".join(CLASSES)).split(",") if c]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cls", FUZZ_CLASSES)
def test_optimizer_matches_torch(cls: str, seed: int) -> None:
    out = run_case(cls, seed)
    if out.status != "pass":
        pytest.fail(out.report(), pytrace=False)
