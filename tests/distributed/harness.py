"""Run one function on several local processes joined by a gloo process group.

:func:`run_on_ranks` starts ``world`` processes (the ``spawn`` start method), each of which joins
a gloo process group on 127.0.0.1 at a free port, sets one intra-op thread, calls
``fn(rank, world, *args)`` and writes what it returned (or the traceback of what it raised) to a
file the test process reads back. A rank that hangs, dies (a segfault) or raises fails the call
with a message naming the rank, its last :func:`progress` note and its traceback; a hard deadline
kills every rank, so a stuck collective fails the test instead of hanging CI.

Starting processes and the process group costs seconds, so callers run many cases per call
(one call per test module, behind a module-scoped fixture) and report each case's outcome in the
returned value.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import socket
import tempfile
import time
import traceback
from typing import Any, Callable

import torch

DEFAULT_TIMEOUT_S = 150.0
COLLECTIVE_TIMEOUT_S = 60.0  # a collective one rank never joins raises on the other after this
GRACE_S = 10.0  # how long the other ranks may run on once one rank has failed

_progress_file: str | None = None


class RankFailure(AssertionError):
    """One or more ranks raised, died or timed out."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def progress(note: str) -> None:
    """Record what this rank is doing (shown if it hangs or dies)."""
    if _progress_file is not None:
        with open(_progress_file, "w") as f:
            f.write(note)


def _rank_main(rank: int, world: int, port: int, outdir: str, fn: Callable, args: tuple, collective_timeout: float) -> None:
    global _progress_file
    _progress_file = os.path.join(outdir, f"rank{rank}.progress")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import torch.distributed as dist

    progress("init_process_group")
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=collective_timeout))
        payload: tuple[str, Any] = ("ok", fn(rank, world, *args))
    except BaseException:  # noqa: BLE001 - every failure goes back to the test process
        payload = ("error", traceback.format_exc())
    path = os.path.join(outdir, f"rank{rank}.pt")
    try:
        torch.save(payload, path + ".tmp")
    except Exception:  # noqa: BLE001 - an unpicklable result
        torch.save(("error", "the rank's result could not be saved:\n" + traceback.format_exc()), path + ".tmp")
    os.replace(path + ".tmp", path)
    progress("done")
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    finally:
        # skip interpreter teardown (gloo threads can keep a finished rank alive)
        os._exit(0)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return "(none)"


def run_on_ranks(fn: Callable, *args: Any, world: int = 2, timeout: float = DEFAULT_TIMEOUT_S,
                 collective_timeout: float = COLLECTIVE_TIMEOUT_S, grace: float = GRACE_S) -> list[Any]:
    """``[fn(0, world, *args), ..., fn(world - 1, world, *args)]``, each run on its own rank.

    ``fn`` and ``args`` must be picklable (``fn`` a module-level function of an importable
    module). Raises :class:`RankFailure` if any rank raises, dies or outlives ``timeout``; once
    one rank has failed, the others get ``grace`` seconds before they are killed."""
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="torchstep-dist-") as outdir:
        port = free_port()
        procs = [ctx.Process(target=_rank_main, args=(r, world, port, outdir, fn, args, collective_timeout), daemon=True)
                 for r in range(world)]
        for p in procs:
            p.start()
        start = time.monotonic()
        deadline = start + timeout
        first_failure: float | None = None
        timed_out = False
        checked: set[int] = set()
        while any(p.is_alive() for p in procs):
            now = time.monotonic()
            for r, p in enumerate(procs):
                if r in checked or p.is_alive():
                    continue
                checked.add(r)
                path = os.path.join(outdir, f"rank{r}.pt")
                if first_failure is None and (p.exitcode != 0 or not os.path.exists(path) or _is_error(path)):
                    first_failure = now
            if now > deadline or (first_failure is not None and now > first_failure + grace):
                timed_out = now > deadline
                break
            time.sleep(0.05)
        notes = {r: _read(os.path.join(outdir, f"rank{r}.progress")) for r in range(world)}
        killed = {r for r, p in enumerate(procs) if p.is_alive()}
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            p.join(5)

        results, problems = [], []
        for r, p in enumerate(procs):
            path = os.path.join(outdir, f"rank{r}.pt")
            if os.path.exists(path):
                status, value = torch.load(path, weights_only=False)
                if status == "ok":
                    results.append(value)
                    continue
                problems.append(f"rank {r} raised (last progress: {notes[r]!r}):\n{value}")
            elif r in killed and timed_out:
                problems.append(f"rank {r} did not finish within {timeout:g} s (last progress: {notes[r]!r})")
            elif r in killed:
                problems.append(f"rank {r} did not finish within {grace:g} s of another rank's failure, "
                                f"killed (last progress: {notes[r]!r})")
            else:
                problems.append(f"rank {r} died without a result: exit code {p.exitcode} "
                                f"(negative: killed by that signal; last progress: {notes[r]!r})")
            results.append(None)
        if problems:
            raise RankFailure(f"{getattr(fn, '__name__', fn)} on {world} ranks failed:\n" + "\n".join(problems))
        return results


def _is_error(path: str) -> bool:
    try:
        return torch.load(path, weights_only=False)[0] != "ok"
    except Exception:  # noqa: BLE001 - still being written
        return False
