"""Shared machinery: twin parameter sets, a fixed gradient stream, and comparisons."""

from __future__ import annotations

import copy
from typing import Any

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


def set_grads(step: int, pairs: list[tuple[torch.Tensor, torch.Tensor]], seed: int = 1) -> None:
    """The same gradient on both twins; every 5th step the last parameter gets none."""
    gen = torch.Generator().manual_seed(seed * 1000 + step)
    for i, (a, b) in enumerate(pairs):
        if step % 5 == 4 and i == len(pairs) - 1:
            a.grad = b.grad = None
            continue
        g = torch.randn(a.shape, generator=gen, dtype=torch.float64).to(a.dtype)
        a.grad, b.grad = g.clone(), g.clone()


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
