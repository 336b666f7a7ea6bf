"""Shared machinery: twin parameter sets, the one gradient stream every parity test runs on
(:func:`grads_at`), and comparisons."""

from __future__ import annotations

import copy
import inspect
import io
from typing import Any

import pytest
import torch

import torchstep.optim as ts_optim

SHAPES = [(), (3,), (4, 5), (2, 3, 4)]


def clone_hyper(kwargs: dict) -> dict:
    """A deep copy of constructor kwargs (tensor lr/betas must not be shared between twins)."""
    return {k: copy.deepcopy(v) for k, v in kwargs.items()}


def make_params(dtype: torch.dtype, seed: int = 0, shapes=SHAPES) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def twin(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone().requires_grad_(p.requires_grad) for p in params]


def groups_for(params: list[torch.Tensor], group2: dict) -> list[dict]:
    """Two parameter groups: the first takes the constructor's options, the second overrides."""
    half = max(1, len(params) // 2)
    return [{"params": params[:half]}, {"params": params[half:], **clone_hyper(group2)}]


def grads_at(step: int, params: list[torch.Tensor], skipping: bool = True, seed: int = 1) -> list[torch.Tensor | None]:
    """The gradient stream: step ``step``'s gradients for ``params`` (float64 draws cast to each
    parameter's dtype, from a generator seeded ``seed * 1000 + step``); with ``skipping`` the last
    parameter gets none every 5th step (a parameter that skips steps keeps its own counters)."""
    gen = torch.Generator().manual_seed(seed * 1000 + step)
    skip = skipping and step % 5 == 4
    out: list[torch.Tensor | None] = []
    for i, p in enumerate(params):
        if skip and i == len(params) - 1:
            out.append(None)
            continue
        out.append(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))
    return out


def set_grads(step: int, pairs: list[tuple[torch.Tensor, torch.Tensor]], seed: int = 1, skipping: bool = True) -> None:
    """The same gradient of :func:`grads_at` on both twins."""
    for (a, b), g in zip(pairs, grads_at(step, [a for a, _ in pairs], skipping, seed)):
        a.grad, b.grad = (None, None) if g is None else (g.clone(), g.clone())


def run_steps(opt, params: list[torch.Tensor], steps: range, skipping: bool = True) -> None:
    """Step ``opt`` over ``steps`` of the gradient stream (fresh copies for each optimizer)."""
    for step in steps:
        for p, g in zip(params, grads_at(step, params, skipping)):
            p.grad = None if g is None else g.clone()
        opt.step()


def build(algo: str, params: Any, kwargs: dict, lib: str):
    cls = getattr(torch.optim if lib == "torch" else ts_optim, algo)
    return cls(params, **clone_hyper(kwargs))


def assert_state_close(ref: dict, got: dict, **tol) -> None:
    """Every state entry of ``ref`` (an optimizer's ``state`` for one param) matches ``got``."""
    assert set(ref) == set(got), (sorted(ref), sorted(got))
    for key, r in ref.items():
        g = got[key]
        if isinstance(r, torch.Tensor):
            assert isinstance(g, torch.Tensor), key
            assert r.dtype == g.dtype and r.shape == g.shape, (key, r.dtype, g.dtype, r.shape, g.shape)
            torch.testing.assert_close(g, r, **tol, msg=lambda m: f"state[{key!r}]: {m}")
        else:
            assert r == g, (key, r, g)


def assert_same_trajectory(torch_opt, ts_opt, torch_params, ts_params, **tol) -> None:
    for a, b in zip(torch_params, ts_params):
        torch.testing.assert_close(b.detach(), a.detach(), **tol)
        assert_state_close(torch_opt.state.get(a, {}), ts_opt.state.get(b, {}), **tol)


def through_disk(sd: dict, weights_only: bool = True) -> dict:
    """``sd`` saved with torch.save and loaded back (a deep copy, as a checkpoint would be)."""
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=weights_only)


def run_pair(algo, kwargs, dtype, shapes=SHAPES, group2=None, steps=25, libs=("torch", "torchstep")):
    """Two optimizers (``libs``) side by side on the same gradient stream, each on two groups
    (the second with ``group2``). Returns ``(first, second, first_params, second_params)``."""
    group2 = group2 or {}
    a_p = make_params(dtype, shapes=shapes)
    b_p = twin(a_p)
    a = build(algo, groups_for(a_p, group2), kwargs, libs[0])
    b = build(algo, groups_for(b_p, group2), kwargs, libs[1])
    for step in range(steps):
        set_grads(step, list(zip(a_p, b_p)))
        a.step()
        b.step()
    return a, b, a_p, b_p


def interchange(algo, kwargs, dtype, shapes, group2, first, second, tol=None):
    """Train 12 steps with ``first``, move the state (through disk) to ``second``, 12 more steps:
    parameters and state equal those of a ``first`` optimizer that never stopped."""
    from registry import TOLERANCE

    oracle, a, oracle_p, a_p = run_pair(algo, kwargs, dtype, shapes, group2, steps=12, libs=(first, first))
    b_p = twin(a_p)
    b = build(algo, groups_for(b_p, group2), kwargs, second)
    b.load_state_dict(through_disk(a.state_dict()))
    for step in range(12, 24):
        set_grads(step, list(zip(oracle_p, b_p)))
        oracle.step()
        b.step()
    assert_same_trajectory(oracle, b, oracle_p, b_p, **(tol or TOLERANCE[dtype]))
    return oracle, b


def assert_signature_matches(name: str) -> None:
    """Same argument names, order, kinds and defaults as torch.optim's class -- plus, at the end,
    the keyword-only low-bit options every element-wise torchstep optimizer adds."""
    ours, theirs = inspect.signature(getattr(ts_optim, name)), inspect.signature(getattr(torch.optim, name))
    extra = [("state_dtype", inspect.Parameter.KEYWORD_ONLY, None),
             ("stochastic_rounding", inspect.Parameter.KEYWORD_ONLY, False),
             ("kahan", inspect.Parameter.KEYWORD_ONLY, False)]
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
        (p.name, p.kind, p.default) for p in theirs.parameters.values()
    ] + extra


def assert_unsupported_tensor_rejected(algo: str, kind: str) -> None:
    """A complex parameter or a sparse gradient: RuntimeError at the step, in both libraries,
    before any parameter was updated."""
    for lib, pattern in [(torch.optim, None), (ts_optim, rf"{algo} does not support {kind} \w+ \(")]:
        if kind == "complex":
            p = torch.zeros(2, 2, dtype=torch.complex64, requires_grad=True)
            p.grad = torch.ones_like(p)
        else:
            p = torch.zeros(3, 2, requires_grad=True)
            p.grad = torch.sparse_coo_tensor([[0]], torch.ones(1, 2), (3, 2))
        ok = torch.zeros(2, 2, requires_grad=True)
        ok.grad = torch.ones(2, 2)
        opt = getattr(lib, algo)([ok, p])
        with pytest.raises(RuntimeError, match=pattern):
            opt.step()
        assert torch.equal(ok, torch.zeros(2, 2))
