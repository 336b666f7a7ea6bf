"""The harness's own guarantees: per-rank results come back, a rank's exception fails the call
with its traceback, and a hung rank fails it at the deadline instead of hanging the suite."""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist

from . import harness


def _sum_of_ranks(rank: int, world: int, scale: int) -> dict:
    t = torch.tensor([float(rank)])
    dist.all_reduce(t)
    return dict(rank=rank, world=world, total=t.item() * scale, threads=torch.get_num_threads())


def _rank1_raises_rank0_waits(rank: int, world: int) -> None:
    if rank == 1:
        raise ValueError("rank 1 went wrong on purpose")
    harness.progress("rank 0 stuck, never joins")
    time.sleep(3600)  # (a gloo collective would notice rank 1's exit and raise: this rank must be killed)


def _hangs(rank: int, world: int) -> None:
    harness.progress("sleeping forever")
    time.sleep(3600)


def test_results_errors_and_timeouts():
    """One test, three runs: the results of both ranks, then a raising rank (the other one stuck
    forever), then a hung rank -- each failure within seconds, naming the rank."""
    assert harness.run_on_ranks(_sum_of_ranks, 10) == [
        dict(rank=0, world=2, total=10.0, threads=1), dict(rank=1, world=2, total=10.0, threads=1)]

    start = time.monotonic()
    with pytest.raises(harness.RankFailure) as failure:
        harness.run_on_ranks(_rank1_raises_rank0_waits, grace=2.0)
    message = str(failure.value)
    assert "rank 1 raised" in message and "ValueError: rank 1 went wrong on purpose" in message
    assert "Traceback" in message and "_rank1_raises_rank0_waits" in message
    assert "rank 0 did not finish within 2 s of another rank's failure" in message and "never joins" in message
    assert time.monotonic() - start < 60

    # (20 s: a spawned rank imports torch and joins the process group before its first note, which
    # takes several seconds on a loaded 2-core machine)
    with pytest.raises(harness.RankFailure, match=r"rank 0 did not finish within 20 s \(last progress: 'sleeping forever'\)"):
        harness.run_on_ranks(_hangs, world=1, timeout=20.0)
