"""Shared machinery of the modern-algorithm tests (LAMB, LARS, Schedule-Free, Prodigy, Lookahead):
twin parameter sets stepped side by side against a reference package, and state comparisons."""

from __future__ import annotations

from typing import Any, Callable

import torch

from helpers import grads_at
from helpers import through_disk as _through_disk
from helpers import twin
from registry import TOLERANCE

SHAPES = [(4, 5), (3,), (2, 3, 4), (6,), ()]


def make_params(dtype: torch.dtype, shapes=SHAPES, seed: int = 0, zero: int | None = None) -> list[torch.Tensor]:
    """Random parameters; ``params[zero]`` all zeros if given (norms of 0, Prodigy's 0-d ``p0``)."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    if zero is not None:
        params[zero].zero_()
    return [p.requires_grad_() for p in params]


def set_grads(step: int, pairs: list[tuple[torch.Tensor, torch.Tensor]], pull: float = 0.0, skip_last: bool = True) -> None:
    """The same gradient on both twins: the gradient stream of :func:`helpers.grads_at` (its
    seed 7) plus ``pull * (p - 1)`` (a quadratic pulling the parameters towards 1, so distance
    estimates grow); the last parameter gets none every 5th step."""
    for (a, b), g in zip(pairs, grads_at(step, [a for a, _ in pairs], skip_last, seed=7)):
        if g is None:
            a.grad = b.grad = None
            continue
        g = g + pull * (a.detach() - 1)
        a.grad, b.grad = g.clone(), g.clone()


def two_groups(params: list[torch.Tensor], group2: dict, split: int = 2) -> list[dict]:
    return [{"params": params[:split]}, {"params": params[split:], **group2}]


def run_side_by_side(make_a: Callable, make_b: Callable, dtype: torch.dtype, steps: int = 25, pull: float = 0.0,
                     prepare: Callable = lambda opt: None, skip_last: bool = True, **param_kw):
    """Build ``make_a(params)`` and ``make_b(twin params)``, step both on one gradient stream;
    returns ``(a, b, a_params, b_params)``."""
    a_p = make_params(dtype, **param_kw)
    b_p = twin(a_p)
    a, b = make_a(a_p), make_b(b_p)
    prepare(a)
    prepare(b)
    for step in range(steps):
        set_grads(step, list(zip(a_p, b_p)), pull, skip_last)
        a.step()
        b.step()
    return a, b, a_p, b_p


def assert_close(got: Any, want: Any, dtype: torch.dtype, what: str = "") -> None:
    if isinstance(want, torch.Tensor):
        torch.testing.assert_close(got, want, **TOLERANCE[dtype], msg=lambda m: f"{what}: {m}")
    elif isinstance(want, float):
        assert abs(got - want) <= TOLERANCE[dtype]["atol"] + TOLERANCE[dtype]["rtol"] * abs(want), (what, got, want)
    else:
        assert got == want, (what, got, want)


def assert_params_close(a_p, b_p, dtype) -> None:
    for i, (x, y) in enumerate(zip(a_p, b_p)):
        assert_close(y.detach(), x.detach(), dtype, f"param {i}")


def assert_state_close(a, b, a_p, b_p, dtype, keys=None) -> None:
    """``b.state`` equals ``a.state`` (the listed keys, or all of ``a``'s) parameter by parameter."""
    for i, (x, y) in enumerate(zip(a_p, b_p)):
        want, got = a.state.get(x, {}), b.state.get(y, {})
        for key in (keys if keys is not None else want):
            if key in want or key in got:
                assert_close(got[key], want[key], dtype, f"state[{i}][{key!r}]")


def through_disk(sd: dict) -> dict:
    """``sd`` after ``torch.save`` / ``torch.load`` (the wrappers' state holds non-tensor values)."""
    return _through_disk(sd, weights_only=False)


def continue_after_load(make_first: Callable, make_second: Callable, dtype: torch.dtype, pull: float = 0.0,
                        prepare: Callable = lambda opt: None, **param_kw):
    """12 steps with ``make_first``; its state_dict (through disk) into ``make_second`` on twin
    parameters; 12 more steps of both ``first`` and ``second``. Returns ``(first, second, params, twins)``."""
    first_p = make_params(dtype, **param_kw)
    first = make_first(first_p)
    prepare(first)
    for step in range(12):
        set_grads(step, [(p, p) for p in first_p], pull)
        first.step()
    second_p = twin(first_p)
    second = make_second(second_p)
    second.load_state_dict(through_disk(first.state_dict()))
    for step in range(12, 24):
        set_grads(step, list(zip(first_p, second_p)), pull)
        first.step()
        second.step()
    return first, second, first_p, second_p
