"""The fused path really runs, for every algorithm that claims one (registry ``fused=True``):
each step launches at least one compiled kernel per parameter group, and no torch operation
writes into a parameter (which is what the tensor-by-tensor fallback does) -- on the default
backend, where a fallback would only warn. Launches are counted at the kernel runners'
``run_prepared`` (``backends.fused``' C and Triton kernels, which ``backends.staged`` uses too)."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import clone_hyper, make_params, run_steps
from registry import ALGORITHMS
from torchstep.backends import fused, use
from torchstep.core.algorithm import Algorithm
from torchstep.core.stages import Staged

STEPS = 3
# a cautious group's masking stage (around the fused pass) zeroes each parameter before the pass
# and copies the masked result back after it; the update itself -- what a fallback computes with
# torch's arithmetic (add_, lerp_, addcdiv_, ...) -- must not be written by torch
CAUTIOUS_STAGE_WRITES = {"aten.zero_.default", "aten.copy_.default"}
# shapes for an algorithm that takes 2-D parameters only (the default shapes otherwise)
MATRICES = {"Muon": [(4, 5), (6, 3), (1, 7), (5, 5)]}
FUSED = [(name, kwargs) for name, algo in ALGORITHMS.items() if algo.fused for kwargs in algo.launch_configs]


class ParamWrites(TorchDispatchMode):
    """Records every torch operation that writes into the memory of one of ``params``."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        super().__init__()
        self.storages = {p.untyped_storage().data_ptr() for p in params}
        self.writes: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for i, arg in enumerate(func._schema.arguments):
            if arg.alias_info is None or not arg.alias_info.is_write:
                continue
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() in self.storages:
                self.writes.append(str(func))
        return func(*args, **kwargs)


@pytest.fixture
def launches(monkeypatch):
    """A list that gets one entry (the number of tensors) per kernel launch."""
    seen: list[int] = []
    for runner in (fused.CKernel, fused.TritonKernel):
        original = runner.run_prepared

        def counting(self, launch, *args, __original=original, **kwargs):
            seen.append(len(launch.sizes))
            return __original(self, launch, *args, **kwargs)

        monkeypatch.setattr(runner, "run_prepared", counting)
    return seen


def _step_counting(opt, params, launches, step):
    before = len(launches)
    with ParamWrites(params) as writes:
        run_steps(opt, params, range(step, step + 1), skipping=False)
    return launches[before:], writes.writes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,kwargs", FUSED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(FUSED)])
def test_every_step_launches_kernels_and_nothing_falls_back(name, kwargs, dtype, launches):
    params = make_params(dtype, shapes=MATRICES[name]) if name in MATRICES else make_params(dtype)
    start = [p.detach().clone() for p in params]
    cls = ALGORITHMS[name].cls
    accepted = inspect.signature(cls).parameters
    in_groups = {k: v for k, v in kwargs.items() if k not in accepted}  # e.g. "cautious" for torch's algorithms
    groups = [{"params": params[:2], **in_groups}, {"params": params[2:], **in_groups}]
    opt = cls(groups, **clone_hyper({k: v for k, v in kwargs.items() if k in accepted}))
    getattr(opt, "train", lambda: None)()  # Schedule-Free steps in train mode
    with use("auto"), warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback warns: fail on it, too
        for step in range(STEPS):
            ran, writes = _step_counting(opt, params, launches, step)
            assert len(ran) >= len(groups), (step, ran)
            assert sum(ran) >= len(params), (step, ran)  # every tensor went through a kernel
            if kwargs.get("cautious"):
                assert set(writes) <= CAUTIOUS_STAGE_WRITES, f"step {step}: torch computed into parameters: {writes}"
            else:
                assert writes == [], f"step {step}: torch wrote into parameters: {writes}"
    assert all(not torch.equal(p.detach(), s) for p, s in zip(params, start))


def test_counting_sees_the_reference_path():
    """The two probes catch a step that does not run fused: with ``use("reference")`` no kernel
    launches and the parameters are written by torch operations."""
    params = make_params(torch.float32)
    opt = ALGORITHMS["Adam"].cls(params, lr=1e-2)
    seen: list[int] = []
    original = fused.CKernel.run
    try:
        fused.CKernel.run = lambda self, *a, **k: (seen.append(1), original(self, *a, **k))[1]
        with use("reference"), ParamWrites(params) as writes:
            run_steps(opt, params, range(2), skipping=False)
    finally:
        fused.CKernel.run = original
    assert seen == [] and len(writes.writes) >= len(params)


@pytest.mark.parametrize("flag", [dict(fused=False), dict(foreach=False)])
def test_fused_false_and_foreach_false_take_the_loop_silently(flag, launches):
    """``fused=False`` / ``foreach=False`` run the tensor-by-tensor path: no kernel launch, the
    parameters written by torch operations, and no fallback warning."""
    params = make_params(torch.float32)
    opt = ALGORITHMS["Adam"].cls(params, lr=0.1, **flag)
    with use("auto"), warnings.catch_warnings(), ParamWrites(params) as writes:
        warnings.simplefilter("error")
        run_steps(opt, params, range(2), skipping=False)
    assert launches == []
    assert len(writes.writes) >= len(params)


def test_every_algorithm_with_a_fused_path_claims_it():
    """An optimizer built on the fused backend (an element-wise ``algorithm`` or fused stages)
    is registered with ``fused=True``, so the launch test above covers it."""
    for name, algo in ALGORITHMS.items():
        builds_on_fused = isinstance(getattr(algo.cls, "algorithm", None), Algorithm) or \
            isinstance(getattr(algo.cls, "stages", None), Staged)
        if builds_on_fused:
            assert algo.fused, name
