"""LBFGS against torch.optim.LBFGS 2.13: same parameters, losses, closure calls and state, with
and without the strong-Wolfe line search; state_dict interchange; invalid arguments."""

import pytest
import torch

import torchstep.optim as ts_optim
from registry import TOLERANCE as TOL
from helpers import assert_signature_matches, through_disk
from torchstep.algorithms.line_search import cubic_minimizer



def rosenbrock(dtype):
    """Two scalar parameters (so the flat vector spans several tensors) on Rosenbrock's valley."""
    params = [torch.tensor(-1.5, dtype=dtype, requires_grad=True), torch.tensor(2.0, dtype=dtype, requires_grad=True)]

    def loss(x, y):
        return (1 - x) ** 2 + 100 * (y - x**2) ** 2

    return params, loss


def least_squares(dtype):
    """``|| X W^T + b - Y ||^2`` plus a parameter the loss never touches (its grad stays None)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(20, 4, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randn(20, 3, generator=gen, dtype=torch.float64).to(dtype)
    params = [torch.zeros(3, 4, dtype=dtype, requires_grad=True), torch.zeros(3, dtype=dtype, requires_grad=True),
              torch.ones(2, dtype=dtype, requires_grad=True)]

    def loss(w, b, unused):
        return ((x @ w.T + b - y) ** 2).mean()

    return params, loss


def robust(dtype):
    """``log(1 + r^2)`` terms (bounded curvature far away: long steps overshoot, and the zoom must
    pull trials away from the bracket's ends) and a kink (the bracket shrinks to nothing)."""
    params = [torch.tensor([1.3, -0.7, 4.0], dtype=dtype, requires_grad=True)]

    def loss(x):
        return torch.log1p((x - torch.tensor([0.5, 1.0, -1.0], dtype=dtype)) ** 2).sum() + 0.1 * (x[0] - 2).abs()

    return params, loss


PROBLEMS = {"rosenbrock": rosenbrock, "least_squares": least_squares, "robust": robust}


class Run:
    """One optimizer on its own copy of a problem, counting closure calls."""

    def __init__(self, lib, problem, dtype, kwargs):
        self.params, self.fn = PROBLEMS[problem](dtype)
        self.opt = lib.LBFGS(self.params, **kwargs)
        self.calls = 0

    def closure(self):
        self.calls += 1
        self.opt.zero_grad()
        loss = self.fn(*self.params)
        loss.backward()
        return loss

    def step(self):
        return float(self.opt.step(self.closure).detach())


def assert_same(ref, got, tol, where="state"):
    """Same structure and types; tensors equal within ``tol``; Python numbers equal."""
    assert type(ref) is type(got), (where, type(ref), type(got))
    if isinstance(ref, torch.Tensor):
        assert ref.dtype == got.dtype and ref.shape == got.shape, where
        torch.testing.assert_close(got, ref, **tol, msg=lambda m: f"{where}: {m}")
    elif isinstance(ref, (list, tuple)):
        assert len(ref) == len(got), where
        for i, (r, g) in enumerate(zip(ref, got)):
            assert_same(r, g, tol, f"{where}[{i}]")
    elif isinstance(ref, dict):
        assert list(ref) == list(got), (where, list(ref), list(got))
        for k in ref:
            assert_same(ref[k], got[k], tol, f"{where}[{k!r}]")
    elif isinstance(ref, float):
        assert got == pytest.approx(ref, rel=tol["rtol"], abs=tol["atol"]), where
    else:
        assert ref == got, (where, ref, got)


def assert_runs_agree(a: Run, b: Run, dtype):
    assert a.calls == b.calls
    for p, q in zip(a.params, b.params):
        torch.testing.assert_close(q.detach(), p.detach(), **TOL[dtype])
    assert_same(dict(a.opt.state[a.params[0]]), dict(b.opt.state[b.params[0]]), TOL[dtype])
    assert len(b.opt.state) == len(a.opt.state) == 1


SETTINGS = [
    dict(),
    dict(line_search_fn="strong_wolfe"),
    dict(lr=0.1, max_iter=7, history_size=3),
    dict(lr=0.5, max_iter=4, max_eval=6, history_size=1),
    dict(line_search_fn="strong_wolfe", max_iter=50, max_eval=13, history_size=2),
    dict(line_search_fn="strong_wolfe", max_iter=3, history_size=10, tolerance_change=1e-4),
    dict(line_search_fn="strong_wolfe", max_eval=1),
    dict(tolerance_grad=1e-3, tolerance_change=1e-5, max_iter=30),
    dict(lr=torch.tensor(0.8), max_iter=5),
]
CASES = [(problem, kwargs) for problem in ("rosenbrock", "least_squares") for kwargs in SETTINGS] + [
    ("robust", dict(line_search_fn="strong_wolfe", lr=1e3)),
    ("robust", dict(line_search_fn="strong_wolfe", lr=1e4, max_eval=30, history_size=2)),
    ("robust", dict(line_search_fn="strong_wolfe", lr=0.01, max_eval=3)),  # line search runs out of trials
    ("robust", dict(lr=0.3, max_iter=10)),
    ("least_squares", dict(tolerance_grad=1e3)),  # optimal at once: every step is one evaluation
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("problem,kwargs", CASES, ids=[f"{p}-{i}" for i, (p, _) in enumerate(CASES)])
def test_parity_with_torch(problem, kwargs, dtype):
    ref, mine = Run(torch.optim, problem, dtype, kwargs), Run(ts_optim, problem, dtype, kwargs)
    for _ in range(4):
        assert mine.step() == pytest.approx(ref.step(), rel=TOL[dtype]["rtol"], abs=TOL[dtype]["atol"])
        assert_runs_agree(ref, mine, dtype)
    assert ref.calls > 4 or kwargs.get("tolerance_grad") == 1e3


def test_converges_on_rosenbrock():
    run = Run(ts_optim, "rosenbrock", torch.float64, dict(line_search_fn="strong_wolfe", max_iter=100))
    run.step()
    assert [p.item() for p in run.params] == pytest.approx([1.0, 1.0], abs=1e-4)


def test_complex_and_sparse_gradients_match_torch():
    def build(lib):
        z = torch.tensor([1 + 2j, -0.5 + 0.3j], dtype=torch.complex128, requires_grad=True)
        emb = torch.nn.Embedding(5, 2, sparse=True).double()
        torch.nn.init.constant_(emb.weight, 0.3)
        opt = lib.LBFGS([z, emb.weight], line_search_fn="strong_wolfe", max_iter=6)

        def closure():
            opt.zero_grad()
            loss = (z * z.conj()).real.sum() + (z.real - 1).pow(2).sum() + emb(torch.tensor([1, 3])).pow(2).sum()
            loss.backward()
            return loss

        return opt, closure, z, emb.weight

    (oa, ca, za, wa), (ob, cb, zb, wb) = build(torch.optim), build(ts_optim)
    for _ in range(2):
        torch.testing.assert_close(ob.step(cb), oa.step(ca))
    torch.testing.assert_close(zb, za)
    torch.testing.assert_close(wb, wa)
    assert_same(dict(oa.state[za]), dict(ob.state[zb]), TOL[torch.float64])


@pytest.mark.parametrize("kwargs", [dict(max_iter=3, history_size=4), dict(line_search_fn="strong_wolfe", max_iter=4)])
@pytest.mark.parametrize("first,second", [(torch.optim, ts_optim), (ts_optim, torch.optim)], ids=["torch->ts", "ts->torch"])
def test_state_dict_interchange(first, second, kwargs):
    """Stop after 2 steps, move the state to the other library, run 3 more: same as never stopping."""
    dtype = torch.float64
    oracle, a = Run(first, "least_squares", dtype, kwargs), Run(first, "least_squares", dtype, kwargs)
    for _ in range(2):
        oracle.step(), a.step()
    b = Run(second, "least_squares", dtype, kwargs)
    with torch.no_grad():
        for p, q in zip(b.params, a.params):
            p.copy_(q)
    b.opt.load_state_dict(through_disk(a.opt.state_dict()))
    assert_same(dict(a.opt.state[a.params[0]]), dict(b.opt.state[b.params[0]]), TOL[dtype])
    b.calls = oracle.calls
    for _ in range(3):
        assert b.step() == pytest.approx(oracle.step(), rel=1e-10)
    assert_runs_agree(oracle, b, dtype)


def test_cubic_minimizer_finds_the_minimum_of_a_cubic():
    # f(x) = x^3 - 3x has its local minimum at x = 1; f' = 3x^2 - 3
    f, df = (lambda x: x**3 - 3 * x), (lambda x: 3 * x**2 - 3)
    t = cubic_minimizer(0.0, f(0.0), torch.tensor(df(0.0)), 2.0, f(2.0), torch.tensor(df(2.0)))
    assert float(t) == pytest.approx(1.0)
    # no minimizer (d1^2 < g1 g2): the middle of the bounds
    assert cubic_minimizer(0.0, 0.0, torch.tensor(1.0), 1.0, 10 / 3, torch.tensor(9.0), bounds=(0.0, 4.0)) == 2.0


def test_signature_matches_torch():
    assert_signature_matches("LBFGS")


def _param():
    return [torch.zeros(2, requires_grad=True)]


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(lr=-1.0), r"Invalid learning rate: -1\.0 \(lr must be >= 0"),
        (dict(lr=torch.tensor([0.1, 0.2])), r"Tensor lr must be 1-element \(lr has shape \(2,\)"),
    ],
)
def test_invalid_arguments_torch_rejects(kwargs, pattern):
    with pytest.raises(ValueError):
        torch.optim.LBFGS(_param(), **kwargs)
    with pytest.raises(ValueError, match=pattern):
        ts_optim.LBFGS(_param(), **kwargs)


def test_two_groups_rejected():
    groups = [{"params": [torch.zeros(1, requires_grad=True)]}, {"params": [torch.zeros(1, requires_grad=True)]}]
    with pytest.raises(ValueError, match="doesn't support per-parameter options"):
        torch.optim.LBFGS(groups)
    with pytest.raises(ValueError, match=r"doesn't support per-parameter options \(parameter groups\) \(it optimizes exactly one"):
        ts_optim.LBFGS([dict(g) for g in groups])
    # torch checks the groups before it would trip over line_search_fn (at the step)
    with pytest.raises(ValueError, match="per-parameter options"):
        torch.optim.LBFGS([dict(g) for g in groups], line_search_fn="bogus")
    with pytest.raises(ValueError, match="per-parameter options"):
        ts_optim.LBFGS([dict(g) for g in groups], line_search_fn="bogus")


@pytest.mark.parametrize("lib", [torch.optim, ts_optim], ids=["torch", "torchstep"])
def test_added_group_accepted_then_step_raises_assertion(lib):
    """add_param_group takes a second group (as torch's does); the next step raises
    AssertionError, before the closure runs."""
    p, q = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = lib.LBFGS([p])
    opt.add_param_group({"params": [q]})
    assert len(opt.param_groups) == 2
    calls = []
    with pytest.raises(AssertionError, match="Expected exactly one param_group, but got 2"):
        opt.step(lambda: calls.append(1) or (p.sum() + q.sum()))
    assert calls == []


def test_unknown_line_search_rejected():
    """torch raises RuntimeError at the first step; torchstep raises it when constructed."""
    p = _param()
    opt = torch.optim.LBFGS(p, line_search_fn="armijo")
    p[0].grad = torch.ones(2)
    with pytest.raises(RuntimeError, match="only 'strong_wolfe' is supported"):
        opt.step(lambda: torch.tensor(1.0))
    with pytest.raises(RuntimeError, match=r"only 'strong_wolfe' is supported \(line_search_fn must be one of None, 'strong_wolfe'; got 'armijo'\)"):
        ts_optim.LBFGS(_param(), line_search_fn="armijo")


def test_missing_closure_rejected():
    with pytest.raises(TypeError):
        torch.optim.LBFGS(_param()).step()
    with pytest.raises(TypeError, match="requires a closure"):
        ts_optim.LBFGS(_param()).step()


@pytest.mark.parametrize(
    "kwargs",
    [dict(max_iter=0), dict(max_iter=-3), dict(max_eval=0), dict(tolerance_grad=-1e-3), dict(tolerance_change=float("nan"))],
)
def test_odd_limits_accepted_like_torch(kwargs):
    """Limits and tolerances torch only compares with at the step: accepted, same result (a
    limit <= 0 means no iteration; a negative tolerance never stops early)."""
    a, b = _param(), _param()
    target = torch.tensor([1.0, -2.0])

    def closure_for(opt, p):
        def closure():
            opt.zero_grad()
            loss = ((p[0] - target) ** 2).sum()
            loss.backward()
            return loss
        return closure

    ta, tb = torch.optim.LBFGS(a, **kwargs), ts_optim.LBFGS(b, **kwargs)
    ta.step(closure_for(ta, a))
    tb.step(closure_for(tb, b))
    torch.testing.assert_close(b[0].detach(), a[0].detach())


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(history_size=0), IndexError, r"list index out of range \(history_size must be an integer >= 1; got 0\)"),
        (dict(history_size=2.5), TypeError, r"history_size must be an integer >= 1; got 2\.5"),
    ],
)
def test_history_size_refused_with_torchs_exception_type(kwargs, exc, pattern):
    """torch fails at the step (indexing an empty history, or a list of 2.5 entries); torchstep
    when constructed, with the same exception type."""
    with pytest.raises(exc, match=pattern):
        ts_optim.LBFGS(_param(), **kwargs)
