"""PyTorch's own curated optimizer inputs (``torch.testing._internal.common_optimizers.optim_db``,
shipped in the torch wheel) run against torchstep.

* every ``optim_inputs_func`` input of every OptimizerInfo whose class torchstep has, on CPU in
  float32 and float64: the same parameters as torch after a few steps with the same gradients;
* every ``optim_error_inputs_func`` input: the same exception (or warning) type, at the same
  moment (construction or step), with a message matching torch's own test's pattern.
"""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch

import torchstep.optim as ts_optim

# needs expecttest (pinned in the test extra); a missing dependency fails here rather than skipping
from torch.testing._internal import common_optimizers  # noqa: E402

OptimizerErrorEnum = common_optimizers.OptimizerErrorEnum

INFOS = {info.optim_cls.__name__: info for info in common_optimizers.optim_db if hasattr(ts_optim, info.optim_cls.__name__)}
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}
STEPS = 5


def _inputs(name: str, dtype: torch.dtype) -> list:
    return INFOS[name].optim_inputs_func(device="cpu", dtype=dtype)


def _errors(name: str) -> list:
    return INFOS[name].optim_error_inputs_func(device="cpu", dtype=torch.float32)


INPUT_CASES = [(n, d, i, inp.desc) for n in INFOS for d in DTYPES for i, inp in enumerate(_inputs(n, d))]
ERROR_CASES = [(n, i, e.optimizer_error_input.desc) for n in INFOS for i, e in enumerate(_errors(n))]


def test_every_shared_optimizer_is_covered():
    shared = {n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type) and hasattr(ts_optim, n)}
    shared.discard("Optimizer")
    assert shared == set(INFOS)
    assert len(INPUT_CASES) > 150 and len(ERROR_CASES) > 100


def _params(name: str, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (2, 5)] if name == "Muon" else [(4, 3), (5,), ()]
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def _run(lib, name: str, dtype: torch.dtype, kwargs: dict) -> list[torch.Tensor]:
    params = _params(name, dtype)
    opt = getattr(lib, name)(params, **copy.deepcopy(kwargs))
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        noise = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype) for p in params]

        def closure():
            opt.zero_grad()
            loss = sum(((p - 0.5) ** 2).sum() * (1.0 + i) + (p * n).sum() for i, (p, n) in enumerate(zip(params, noise)))
            loss.backward()
            if name == "SparseAdam":
                for p in params:
                    p.grad = p.grad.to_sparse()
            return loss

        if name == "LBFGS":
            opt.step(closure)
        else:
            closure()
            opt.step()
    return [p.detach() for p in params]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name,dtype,index,desc", INPUT_CASES,
                         ids=[f"{n}-{str(d)[6:]}-{i}-{desc}" for n, d, i, desc in INPUT_CASES])
def test_trajectory_like_torch(name, dtype, index, desc):
    kwargs = _inputs(name, dtype)[index].kwargs
    expected = _run(torch.optim, name, dtype, kwargs)
    got = _run(ts_optim, name, dtype, kwargs)
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, **TOL[dtype])
    assert any(not torch.equal(a, b) for a, b in zip(expected, _params(name, dtype)))  # it moved


def _attempt(lib, name: str, index: int):
    """Construct (and step, for step errors) as torch's test_errors does; returns
    (phase, exception or warning, message)."""
    error = _errors(name)[index]  # fresh tensors for each library
    inp = error.optimizer_error_input
    cls = getattr(lib, name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            opt = cls(inp.params, **inp.kwargs)
        except Exception as exc:  # noqa: BLE001 -- compared below
            return "construction", type(exc), str(exc)
        if error.error_on == OptimizerErrorEnum.STEP_ERROR:
            try:
                opt.step()
            except Exception as exc:  # noqa: BLE001
                return "step", type(exc), str(exc)
    hits = [w for w in caught if issubclass(w.category, error.error_type)] if issubclass(error.error_type, Warning) else []
    if hits:
        return "warning", hits[0].category, str(hits[0].message)
    return "none", None, ""


@pytest.mark.parametrize("name,index,desc", ERROR_CASES, ids=[f"{n}-{i}-{d}" for n, i, d in ERROR_CASES])
def test_error_like_torch(name, index, desc):
    error = _errors(name)[index]
    expected = _attempt(torch.optim, name, index)
    got = _attempt(ts_optim, name, index)
    want_phase = {OptimizerErrorEnum.CONSTRUCTION_ERROR: "construction", OptimizerErrorEnum.STEP_ERROR: "step"}[error.error_on]
    if issubclass(error.error_type, Warning):
        want_phase = "warning"
    assert expected[:2] == (want_phase, error.error_type)  # torch itself, as its own test says
    phase, exc_type, message = got
    # torchstep may refuse at construction what torch refuses at its first step
    assert phase == want_phase or (phase == "construction" and want_phase == "step"), got
    assert exc_type is error.error_type, got
    assert re.search(error.error_regex, message), (error.error_regex, message)
