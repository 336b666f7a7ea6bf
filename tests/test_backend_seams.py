"""The seams around the backends: ``use()`` is local to a thread or asyncio task, ``core``
imports nothing from ``backends``, and derived caches follow the functions they derive from."""

from __future__ import annotations

import ast
import asyncio
import gc
import os
import pathlib
import threading

import torch

import torchstep
import torchstep.optim as ts_optim
from torchstep.backends import dispatch, use
from torchstep.backends.cautious import adds_an_increment
from torchstep.backends.memo import FunctionCache
from torchstep.backends.trace import trace

CORE = pathlib.Path(torchstep.__file__).parent / "core"


def test_two_threads_each_get_their_own_backend():
    """Two threads inside ``use()`` blocks at the same time each see their own backend, and
    each one's steps take that backend's path (the fused one keeps plans, the reference none)."""
    both_inside, both_stepped = threading.Barrier(2), threading.Barrier(2)
    seen, errors = {}, []

    def worker(backend: str) -> None:
        try:
            with use(backend):
                both_inside.wait(timeout=60)
                p = torch.ones(4, requires_grad=True)
                opt = ts_optim.Adam([p], lr=0.1)
                p.grad = torch.ones(4)
                opt.step()
                seen[backend] = (dispatch._forced.get(), "_fused_plans" in opt.__dict__)
                both_stepped.wait(timeout=60)  # neither block closes before both have stepped
        except Exception as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(b,)) for b in ("reference", "fused")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert seen == {"reference": ("reference", False), "fused": ("fused", True)}
    assert dispatch._forced.get() == os.environ.get("TORCHSTEP_BACKEND", "auto")  # this thread: untouched


def test_asyncio_tasks_each_get_their_own_backend():
    async def chosen(backend: str, started: asyncio.Event, other: asyncio.Event) -> str:
        with use(backend):
            started.set()
            await other.wait()  # the other task's block is open too
            return dispatch._forced.get()

    async def main() -> list[str]:
        a, b = asyncio.Event(), asyncio.Event()
        return await asyncio.gather(chosen("reference", a, b), chosen("triton", b, a))

    assert asyncio.run(main()) == ["reference", "triton"]


def test_core_imports_nothing_from_backends():
    for path in CORE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "backends" not in (node.module or ""), f"{path.name} imports {node.module}"
                assert not (node.level and any(a.name == "backends" for a in node.names)), path.name
            elif isinstance(node, ast.Import):
                assert not any("backends" in a.name for a in node.names), path.name


def test_function_cache_entries_go_with_their_function():
    cache = FunctionCache()

    def make():
        return lambda x: x

    fn, other = make(), make()
    cache.put(fn, ("a",), 1)
    cache.put(other, ("a",), 2)
    assert cache.get(fn, ("a",)) == 1 and cache.get(other, ("a",)) == 2 and cache.get(fn, ("b",)) is None
    del fn
    gc.collect()
    assert len(cache) == 1 and list(cache.values()) == [2]


def test_bound_methods_share_their_entries():
    class Stage:
        def run(self, x):
            return x

    stage, cache = Stage(), FunctionCache()
    cache.put(stage.run, "s", 1)
    assert cache.get(stage.run, "s") == 1  # a fresh bound-method object each access
    del stage
    gc.collect()
    assert len(cache) == 0


def test_increment_analysis_reads_the_program():
    def adds(p, g, lr):
        p.add_(g * g, alpha=-lr)

    def scales(p, g, lr):
        p.mul_(lr).add_(g)

    assert adds_an_increment(trace(adds, ["p", "g"], ["p"], {"lr": 0.1}))
    assert not adds_an_increment(trace(scales, ["p", "g"], ["p"], {"lr": 0.1}))
