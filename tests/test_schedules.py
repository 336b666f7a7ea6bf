"""The closed forms against their formulas at chosen steps, composition as data, and the modern recipes."""

from __future__ import annotations

import math
import pickle

import pytest

from torchstep.schedules import (Constant, Cosine, CumulativeProduct, Cyclic, Exponential, Floor, InverseSqrt, Join,
                                 Lambda, Linear, MultiStepDecay, OneCycle, OneMinusSqrt, Polynomial, Scaled,
                                 StepDecay, WarmRestarts, restart_position, warmup_constant, warmup_cosine,
                                 warmup_exponential, warmup_inverse_sqrt, warmup_linear, wsd)

approx = pytest.approx

CLOSED_FORMS = [
    (Constant(0.3), {0: 0.3, 1000: 0.3}),
    (Linear(0.0, 1.0, 10), {0: 0.0, 5: 0.5, 10: 1.0, 15: 1.5}),
    (Linear(1.0, 0.2, 4), {1: 0.8, 4: 0.2}),
    (Cosine(1.0, 0.0, 10), {0: 1.0, 5: 0.5, 10: 0.0, 15: 0.5, 20: 1.0}),
    (Cosine(0.5, 0.1, 4), {2: 0.3, 1: 0.1 + 0.4 * (1 + math.cos(math.pi / 4)) / 2}),
    (Exponential(0.5, 2.0), {0: 2.0, 3: 0.25}),
    (StepDecay(3, 0.1), {0: 1.0, 2: 1.0, 3: 0.1, 5: 0.1, 6: 0.01}),
    (MultiStepDecay((5, 2, 5), 0.5, 4.0), {1: 4.0, 2: 2.0, 4: 2.0, 5: 0.5, 100: 0.5}),
    (Polynomial(10, 2.0), {0: 1.0, 5: 0.25, 10: 0.0, 12: 0.0}),
    (Polynomial(4, 1.0, 1.0, 0.2), {2: 0.6, 9: 0.2}),
    (InverseSqrt(1.0, 4), {0: 1.0, 12: 0.5, 60: 0.25}),
    (OneMinusSqrt(1.0, 0.0, 100), {0: 1.0, 25: 0.5, 100: 0.0, 400: 0.0}),
    (Lambda(lambda t: t + 1, 0.5), {0: 0.5, 3: 2.0}),
    (CumulativeProduct(lambda t: 0.5 if t % 2 else 1.0, 8.0), {0: 8.0, 1: 4.0, 2: 4.0, 3: 2.0}),
    (Cyclic.from_steps(0.0, 1.0, 2), {0: 0.0, 1: 0.5, 2: 1.0, 3: 0.5, 4: 0.0, 6: 1.0}),
    (Cyclic.from_steps(0.0, 1.0, 1, 3), {1: 1.0, 2: 2 / 3, 4: 0.0}),
    (Cyclic.from_steps(0.0, 1.0, 2, mode="triangular2"), {2: 1.0, 6: 0.5, 10: 0.25}),
    (Cyclic.from_steps(0.0, 1.0, 2, mode="exp_range", gamma=0.5), {2: 0.25, 1: 0.25}),
    (Cyclic.from_steps(0.9, 0.8, 2), {0: 0.9, 2: 0.8}),
    (OneCycle(((9.0, 0.1, 1.0), (99, 1.0, 0.0)), "linear"), {0: 0.1, 9: 1.0, 54: 0.5, 99: 0.0}),
    (OneCycle(((9.0, 0.1, 1.0), (99, 1.0, 0.0)), "cos"), {0: 0.1, 9: 1.0, 54: 0.5}),
    (WarmRestarts(1.0, 0.0, 2, 2), {0: 1.0, 1: 0.5, 2: 1.0, 4: 0.5, 6: 1.0, 14: 1.0, 10: 0.5}),
    (WarmRestarts(1.0, 0.0, 4), {2: 0.5, 4: 1.0, 6.0: 0.5, 9: 1 / 2 + math.cos(math.pi / 4) / 2}),
]


@pytest.mark.parametrize("schedule,expected", CLOSED_FORMS, ids=[repr(c[0])[:60] for c in CLOSED_FORMS])
def test_closed_forms_at_chosen_steps(schedule, expected):
    for t, value in expected.items():
        assert schedule(t) == approx(value, abs=1e-12), (schedule, t)


def test_restart_position_is_exact_at_every_restart():
    for T_0, T_mult in [(1, 3), (2, 2), (3, 3), (10, 2), (7, 5)]:
        start, length = 0, T_0
        for _ in range(8):
            assert restart_position(start, T_0, T_mult) == (0, length)
            assert restart_position(start + length - 0.5, T_0, T_mult) == (length - 0.5, length)
            start, length = start + length, length * T_mult


def test_join_runs_pieces_on_half_open_intervals_with_restarted_steps():
    j = Join((Linear(0.0, 1.0, 10), Constant(5.0), Linear(5.0, 0.0, 5)), (10, 20))
    assert [j(t) for t in (0, 9, 10, 19, 20, 22, 25, 30)] == approx([0.0, 0.9, 5.0, 5.0, 5.0, 3.0, 0.0, -5.0])
    assert Linear(0.0, 1.0, 4).then(Constant(1.0), at=4)(4) == 1.0
    with pytest.raises(ValueError, match="one boundary fewer than pieces"):
        Join((Constant(1.0),), (3,))
    with pytest.raises(ValueError, match="non-decreasing"):
        Join((Constant(1.0), Constant(2.0), Constant(3.0)), (5, 2))


def test_scaled_and_floor():
    assert Scaled(Cosine(1.0, 0.0, 10), 0.5, 0.1)(5) == approx(0.3)
    assert Scaled(StepDecay(2, 0.5), 8.0)(4) == approx(2.0)
    assert Floor(Exponential(0.5), 0.2)(1) == 0.5
    assert Exponential(0.5).floor(0.2)(10) == 0.2


def test_schedules_are_data():
    a = warmup_cosine(peak=1e-3, warmup=100, total=1000, floor=1e-5)
    b = warmup_cosine(peak=1e-3, warmup=100, total=1000, floor=1e-5)
    assert a == b and hash(a) == hash(b)
    assert a == Join((Linear(0.0, 1e-3, 100), Cosine(1e-3, 1e-5, 900), Constant(1e-5)), (100, 1000))
    assert "Cosine(start=0.001, end=1e-05, steps=900)" in repr(a)
    assert pickle.loads(pickle.dumps(a)) == a
    assert a.values(3, start=99) == [a(99), a(100), a(101)]


@pytest.mark.parametrize("recipe,decay_mid", [
    (warmup_cosine, lambda p, f: (p + f) / 2),
    (warmup_linear, lambda p, f: (p + f) / 2),
])
def test_warmup_then_decay_recipes(recipe, decay_mid):
    s = recipe(peak=1.0, warmup=10, total=110, floor=0.1, init=0.5)
    assert s(0) == 0.5
    assert s(5) == approx(0.75)
    assert s(10) == 1.0
    assert s(60) == approx(decay_mid(1.0, 0.1))
    assert s(110) == approx(0.1) and s(10_000) == approx(0.1)
    assert max(s.values(200)) == approx(1.0)


def test_warmup_constant_exponential_inverse_sqrt():
    c = warmup_constant(peak=2.0, warmup=4)
    assert [c(t) for t in (0, 2, 4, 100)] == approx([0.0, 1.0, 2.0, 2.0])
    e = warmup_exponential(peak=1.0, warmup=5, gamma=0.5, floor=0.1)
    assert [e(t) for t in (5, 6, 7, 50)] == approx([1.0, 0.5, 0.25, 0.1])
    r = warmup_inverse_sqrt(peak=1.0, warmup=10)
    assert [r(t) for t in (5, 10, 40, 160)] == approx([0.5, 1.0, 0.5, 0.25])
    assert warmup_inverse_sqrt(peak=1.0, warmup=10, floor=0.4)(1000) == 0.4
    assert warmup_constant(peak=3.0, warmup=0)(0) == 3.0


@pytest.mark.parametrize("cooldown,mid", [("linear", 0.55), ("cosine", 0.55), ("1-sqrt", 0.1 + 0.9 * (1 - math.sqrt(0.5)))])
def test_wsd_warmup_stable_decay(cooldown, mid):
    s = wsd(peak=1.0, warmup=10, total=100, decay=0.2, cooldown=cooldown, floor=0.1)
    assert s(5) == approx(0.5)
    assert all(s(t) == 1.0 for t in range(10, 81))
    assert s(90) == approx(mid)
    assert s(100) == approx(0.1) and s(500) == approx(0.1)
    assert wsd(peak=1.0, warmup=0, total=100, decay=30, cooldown=cooldown)(70) == 1.0


@pytest.mark.parametrize("build,message", [
    (lambda: warmup_cosine(peak=1.0, warmup=100, total=100), "total must be > warmup"),
    (lambda: warmup_linear(peak=1.0, warmup=-1, total=100), "warmup must be >= 0"),
    (lambda: warmup_exponential(peak=1.0, warmup=1, gamma=1.5), "gamma must be in"),
    (lambda: wsd(peak=1.0, warmup=10, total=100, cooldown="step"), "cooldown must be one of"),
    (lambda: wsd(peak=1.0, warmup=10, total=100, decay=95), "at most total - warmup = 90"),
    (lambda: wsd(peak=1.0, warmup=10, total=100, decay=0), "decay must be > 0"),
    (lambda: OneCycle(((5.0, 0.0, 1.0),), "exp"), "anneal_strategy must be one of"),
    (lambda: Cyclic(0.0, 1.0, 4, mode="saw")(1), "mode is invalid"),
])
def test_recipe_arguments_are_checked(build, message):
    with pytest.raises(ValueError, match=message):
        build()
