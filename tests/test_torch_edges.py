"""Edge cases run side by side with torch.optim 2.13: what torch does is what torchstep must do.

* a generated sweep: every constructor argument of every optimizer torch.optim also has, given a
  list of odd values -- torch raises => the same exception type, at the same moment (construction
  or step); torch accepts => the first steps give the same parameters, NaN included;
* state that torch never writes (SGD without momentum) and the sparse SGD momentum buffer;
* ``load_state_dict``: dtype casting of the state, ``defaults`` after a load, incomplete or
  foreign state dicts;
* ``differentiable=True`` with hyperparameters that require grad (gradients flow into them).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import signal
import warnings
from typing import Any

import pytest
import torch

import torchstep.optim as ts_optim
from torchstep.backends import dispatch

# every optimizer class both libraries have
SHARED = sorted(
    n for n in dir(torch.optim)
    if isinstance(getattr(torch.optim, n), type) and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
    and n != "Optimizer" and hasattr(ts_optim, n)
)

NAN, INF = float("nan"), float("inf")
ODD_VALUES: list[tuple[str, Any]] = [
    ("nan", NAN), ("inf", INF), ("-inf", -INF), ("neg", -1.0), ("neg_int", -1), ("zero", 0), ("zero_f", 0.0),
    ("one", 1), ("two", 2), ("half", 0.5), ("small", 1e-3), ("big", 1e6), ("true", True), ("false", False),
    ("str", "x"), ("none", None), ("empty_tuple", ()), ("tuple1", (0.9,)), ("pair", (0.9, 0.99)),
    ("list_pair", [0.9, 0.99]), ("triple", (0.9, 0.99, 0.5)), ("pair_nan", (NAN, 0.99)),
    ("pair_one", (0.9, 1.0)), ("pair_neg", (-0.1, 0.5)), ("pair_big", (0.5, 1.2)), ("pair_str", ("a", "b")),
    ("pair_tensors", (torch.tensor(0.9), torch.tensor(0.99))), ("pair_mixed", (torch.tensor(0.9), 0.99)),
    ("t0d", torch.tensor(0.5)), ("t1", torch.tensor([0.5])), ("t2", torch.tensor([0.5, 0.25])),
    ("t0d_nan", torch.tensor(NAN)), ("t0d_f64", torch.tensor(0.5, dtype=torch.float64)),
    ("t0d_int", torch.tensor(1)),
]
STEPS = 3
TILT = torch.linspace(-1.0, 1.0, 12)


def _arguments(name: str) -> list[str]:
    sig = inspect.signature(getattr(torch.optim, name))
    return [a for a in sig.parameters if a not in ("params", "self")]


def _params(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # 2-D only: Muon takes nothing else; one Adafactor-factored, one small
    return [torch.randn(4, 3, generator=gen).requires_grad_(), torch.randn(2, 2, generator=gen).requires_grad_()]


def _closure(opt, params: list[torch.Tensor], sparse: bool):
    def closure():
        opt.zero_grad()
        # a quadratic: a huge lr then scales the parameters without making the next gradients
        # chaotic, so a one-ulp difference stays a one-ulp difference
        loss = sum(((p - 0.3) ** 2).sum() * (0.5 + i) + (p * TILT[: p.numel()].view_as(p)).sum() for i, p in enumerate(params))
        loss.backward()
        if sparse:
            for p in params:
                p.grad = p.grad.to_sparse()
        return loss

    return closure


class _Timeout(Exception):
    pass


def _outcome(lib, name: str, kwargs: dict) -> tuple[str, type | None, list[torch.Tensor]]:
    """(phase, exception type, parameters): phase is "init", "step<i>" where it raised, or "ok"."""
    params = _params()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            opt = getattr(lib, name)(params, **copy.deepcopy(kwargs))
        except Exception as exc:  # noqa: BLE001 -- the type is what is compared
            return "init", type(exc), params
        closure = _closure(opt, params, sparse=name == "SparseAdam")
        for i in range(STEPS):
            try:
                opt.step(closure)
            except _Timeout:
                raise
            except Exception as exc:  # noqa: BLE001
                return f"step{i}", type(exc), params
    return "ok", None, params


def _alarm(signum, frame):
    raise _Timeout()


SWEEP = [(name, arg, label, value) for name in SHARED for arg in _arguments(name) for label, value in ODD_VALUES]

# torch raises AssertionError at the first step for capturable=True on CPU tensors; torchstep runs
# the same math as the default path there -- a deliberate difference (README, "Known differences")
CAPTURABLE_ON_CPU = "capturable"
def _same_outcome(expected, got, tag: str, lr: Any = None) -> None:
    """Same exception type; torchstep may refuse at construction what torch refuses at its
    first step (never the other way round); when both run, the same parameters."""
    (e_phase, e_type, e_params), (g_phase, g_type, g_params) = expected, got
    assert g_type == e_type, f"{tag}: torch {e_phase}/{e_type}, torchstep {g_phase}/{g_type}"
    assert g_phase == e_phase or (g_phase == "init" and e_phase.startswith("step")), (
        f"{tag}: torch raised at {e_phase}, torchstep at {g_phase}"
    )
    if e_phase == "ok":
        for a, b in zip(e_params, g_params):
            a, b = a.detach(), b.detach()
            finite = a[a.isfinite()]
            scale = float(finite.abs().max()) if finite.numel() else 0.0
            if isinstance(lr, (int, float)) and math.isfinite(lr):
                scale += abs(lr)  # terms of size lr * update cancel in p - lr * update
            # one rounding of the largest term is the resolution of a step
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6 + 1e-6 * scale, equal_nan=True)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("name,arg,label,value", SWEEP, ids=[f"{n}-{a}-{l}" for n, a, l, _ in SWEEP])
def test_odd_argument_like_torch(name, arg, label, value, backend):
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(30)
    try:
        try:
            expected = _outcome(torch.optim, name, {arg: value})
        except _Timeout:
            pytest.fail("torch itself does not finish: remove this value from ODD_VALUES")
        with dispatch.use(backend):
            got = _outcome(ts_optim, name, {arg: value})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    if arg == CAPTURABLE_ON_CPU and expected[:2] == ("step0", AssertionError):
        assert got[0] == "ok" or got[1] is not AssertionError
        return
    _same_outcome(expected, got, f"{name}({arg}={label})", value if arg == "lr" else None)


# -- state torch never writes; SGD's sparse momentum buffer ---------------------------------------


def _sparse_grad(i: int) -> torch.Tensor:
    return torch.sparse_coo_tensor([[i % 4, (i + 1) % 4]], torch.full((2, 2), float(i + 1)), (4, 2))


@pytest.mark.parametrize("kwargs", [dict(), dict(momentum=0, dampening=0.5), dict(momentum=0, nesterov=False, maximize=True)])
@pytest.mark.parametrize("sparse", [False, True])
def test_sgd_without_momentum_writes_no_state(kwargs, sparse):
    out = []
    for lib in (torch.optim, ts_optim):
        p = torch.zeros(4, 2, requires_grad=True)
        opt = lib.SGD([p], lr=0.1, **kwargs)
        for i in range(3):
            p.grad = _sparse_grad(i) if sparse else torch.full((4, 2), float(i))
            opt.step()
        out.append((opt.state_dict()["state"], len(opt.state), p.detach().clone()))
    (t_state, t_len, t_p), (s_state, s_len, s_p) = out
    assert t_state == {} and t_len == 0
    assert s_state == t_state and s_len == t_len
    torch.testing.assert_close(s_p, t_p)


@pytest.mark.parametrize(
    "kwargs",
    [dict(momentum=0.9), dict(momentum=0.9, nesterov=True), dict(momentum=0.5, dampening=0.3, maximize=True)],
)
def test_sgd_sparse_momentum_buffer_is_sparse(kwargs):
    out = []
    for lib in (torch.optim, ts_optim):
        p = torch.zeros(4, 2, requires_grad=True)
        opt = lib.SGD([p], lr=0.1, **kwargs)
        for i in range(4):
            p.grad = _sparse_grad(i)
            opt.step()
        out.append((opt.state_dict()["state"][0]["momentum_buffer"], p.detach().clone()))
    (t_buf, t_p), (s_buf, s_p) = out
    assert t_buf.layout == torch.sparse_coo and s_buf.layout == t_buf.layout
    torch.testing.assert_close(s_buf.to_dense(), t_buf.to_dense())
    torch.testing.assert_close(s_p, t_p)
    # and the buffer moves between the libraries through a checkpoint, still sparse
    for first, second in [(torch.optim, ts_optim), (ts_optim, torch.optim)]:
        p1, p2 = torch.zeros(4, 2, requires_grad=True), torch.zeros(4, 2, requires_grad=True)
        a, b = first.SGD([p1], lr=0.1, **kwargs), second.SGD([p2], lr=0.1, **kwargs)
        p1.grad = _sparse_grad(0)
        a.step()
        b.load_state_dict(copy.deepcopy(a.state_dict()))  # torch's load shares the tensors
        with torch.no_grad():
            p2.copy_(p1)
        for i in range(1, 3):
            p1.grad, p2.grad = _sparse_grad(i), _sparse_grad(i)
            a.step()
            b.step()
        assert b.state[p2]["momentum_buffer"].layout == torch.sparse_coo
        torch.testing.assert_close(p2.detach(), p1.detach())


# -- load_state_dict -----------------------------------------------------------------------------

LOAD_CASES = [
    ("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.01)), ("Adam", dict(lr=0.01, amsgrad=True)),
    ("AdamW", dict(lr=0.01)), ("Adagrad", dict(lr=0.1)), ("Adadelta", dict()), ("RMSprop", dict(momentum=0.5, centered=True)),
    ("Adamax", dict()), ("NAdam", dict(lr=0.01)), ("RAdam", dict(lr=0.01)), ("ASGD", dict(lr=0.05, t0=1.0)),
    ("Rprop", dict()), ("Adafactor", dict()), ("Muon", dict()), ("SparseAdam", dict()), ("LBFGS", dict()),
]


def _train(opt, params, steps, start=0, sparse=False):
    gen = torch.Generator().manual_seed(start)
    for i in range(steps):
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) for p in params]

        def closure():
            opt.zero_grad()
            loss = sum(((p - 0.1) ** 2).sum() for p in params)
            loss.backward()
            for p, g in zip(params, grads):
                p.grad = (p.grad + g).to_sparse() if sparse else p.grad + g
            return loss

        if isinstance(opt, (torch.optim.LBFGS, ts_optim.LBFGS)):
            opt.step(closure)
        else:
            closure()
            opt.step()


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "stepped-before-load"])
@pytest.mark.parametrize("name,kwargs", LOAD_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(LOAD_CASES)])
def test_load_casts_state_to_the_parameter_dtype(name, kwargs, warm):
    """A float32 state (every non-``step`` tensor, 0-d ones included) loaded for float64
    parameters becomes float64, as torch casts it; the following steps compute in it -- also
    into an optimizer that had already stepped (whatever the fused path cached is replaced)."""
    sparse = name == "SparseAdam"
    src_params = [torch.randn(3, 2, generator=torch.Generator().manual_seed(1)).requires_grad_()]
    src = getattr(torch.optim, name)(src_params, **kwargs)
    _train(src, src_params, 3, sparse=sparse)
    saved = src.state_dict()
    results = []
    for lib in (torch.optim, ts_optim):
        params = [src_params[0].detach().double().requires_grad_()]
        opt = getattr(lib, name)(params, **kwargs)
        if warm:
            _train(opt, params, 2, start=5, sparse=sparse)
        opt.load_state_dict(copy.deepcopy(saved))
        dtypes = {k: v.dtype for k, v in opt.state[params[0]].items() if isinstance(v, torch.Tensor)}
        _train(opt, params, 4, start=10, sparse=sparse)
        after = {k: v.dtype for k, v in opt.state[params[0]].items() if isinstance(v, torch.Tensor)}
        results.append((dtypes, after, params[0].detach()))
    (t_dtypes, t_after, t_p), (s_dtypes, s_after, s_p) = results
    assert s_dtypes == t_dtypes and s_after == t_after
    assert all(d == torch.float64 for k, d in t_dtypes.items() if k != "step")
    torch.testing.assert_close(s_p, t_p, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["LBFGS", "SparseAdam", "Muon", "Adafactor", "Adam", "SGD"])
def test_load_adds_differentiable_to_defaults_and_later_groups(name):
    """torch's base ``__setstate__`` puts ``differentiable: False`` into ``defaults``; a group
    added after a load then carries it too."""
    out = []
    for lib in (torch.optim, ts_optim):
        opt = getattr(lib, name)([torch.zeros(2, 2, requires_grad=True)])
        opt.load_state_dict(opt.state_dict())
        if name != "LBFGS":
            opt.add_param_group({"params": [torch.zeros(3, 3, requires_grad=True)]})
        out.append((dict(opt.defaults), [sorted(g) for g in opt.param_groups]))
    assert out[0][0]["differentiable"] is False
    assert out[1][0].keys() == out[0][0].keys() and out[1][0]["differentiable"] is False
    assert out[1][1] == out[0][1]


def _phase_of_load(lib, name, kwargs, mutate, params_fn=lambda: [torch.ones(3, requires_grad=True)]):
    """Train 2 steps, mutate the state_dict, load it into a fresh optimizer and step:
    (where it raised: "load" / "step" / "ok", exception, ...)."""
    params = params_fn()
    opt = getattr(lib, name)(params, **kwargs)
    _train(opt, params, 2)
    sd = copy.deepcopy(opt.state_dict())
    mutate(sd)
    params2 = params_fn()
    opt2 = getattr(lib, name)(params2, **kwargs)
    try:
        opt2.load_state_dict(sd)
    except Exception as exc:  # noqa: BLE001
        return "load", exc
    try:
        _train(opt2, params2, 1)
    except Exception as exc:  # noqa: BLE001
        return "step", exc
    return "ok", None


def _drop_state(key):
    def mutate(sd):
        for st in sd["state"].values():
            st.pop(key, None)
    return mutate


def _drop_group(key):
    def mutate(sd):
        for g in sd["param_groups"]:
            g.pop(key, None)
    return mutate


def _sgd_state(sd):
    sd["state"] = {0: {"momentum_buffer": torch.zeros(3)}}


INCOMPLETE = [
    ("Adam", _drop_state("exp_avg_sq"), "exp_avg_sq"), ("Adam", _drop_state("step"), "step"),
    ("Adam", _drop_group("lr"), "lr"), ("Adam", _drop_group("betas"), "betas"), ("Adam", _sgd_state, "step"),
    ("AdamW", _drop_group("weight_decay"), "weight_decay"), ("NAdam", _drop_state("mu_product"), "mu_product"),
    ("ASGD", _drop_state("eta"), "eta"), ("ASGD", _drop_state("ax"), "ax"), ("RMSprop", _drop_state("square_avg"), "square_avg"),
    ("Rprop", _drop_state("prev"), "prev"), ("Adadelta", _drop_state("acc_delta"), "acc_delta"),
    ("Adamax", _drop_state("exp_inf"), "exp_inf"), ("RAdam", _drop_group("eps"), "eps"), ("SGD", _drop_group("lr"), "lr"),
    ("Adagrad", _drop_state("step"), "step"), ("Adam", _drop_group("amsgrad"), None), ("SGD", _drop_group("nesterov"), None),
    ("RMSprop", _drop_group("centered"), None), ("SGD", _drop_state("momentum_buffer"), None),
]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name,mutate,key", INCOMPLETE, ids=[f"{n}-{k}-{i}" for i, (n, _, k) in enumerate(INCOMPLETE)])
def test_incomplete_state_dict_like_torch(name, mutate, key):
    """torch raises KeyError at the load (a state entry its ``__setstate__`` reads) or at the step
    (an entry or group option the step reads), and fills in only its own list of options;
    torchstep raises the same, at the same moment, naming the key."""
    kwargs = dict(momentum=0.9) if name == "SGD" else {}
    t_phase, t_exc = _phase_of_load(torch.optim, name, kwargs, mutate)
    s_phase, s_exc = _phase_of_load(ts_optim, name, kwargs, mutate)
    assert (s_phase, type(s_exc)) == (t_phase, type(t_exc)), (t_phase, t_exc, s_phase, s_exc)
    if key is not None:
        assert t_phase != "ok" and isinstance(t_exc, KeyError)
        assert repr(key) in str(s_exc)
    else:
        assert t_phase == "ok"


# -- differentiable=True: gradients reach tensor hyperparameters -----------------------------------


def _meta_gradient(lib, name, hyper: dict, extra: dict, steps: int = 2):
    """Two differentiable steps on ``sum(p)``-regression (the gradient is itself a function of
    ``p``, as in meta-learning), then d(loss after the steps) / d(hyperparameters)."""
    p0 = torch.rand(6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    leaves = [x for v in hyper.values() for x in (v if isinstance(v, tuple) else (v,))]
    p = p0.clone()
    opt = getattr(lib, name)([p], differentiable=True, **hyper, **extra)
    y = torch.tensor(2.0, dtype=torch.float64)
    for _ in range(steps):
        (g,) = torch.autograd.grad((p.sum() - y) ** 2, p, create_graph=True)
        p.grad = g.clone()
        opt.step()
    return torch.autograd.grad((p.sum() - y) ** 2, leaves)


def _hyper(spec: dict) -> dict:
    def leaf(v):
        return torch.tensor(v, dtype=torch.float64, requires_grad=True)
    return {k: tuple(leaf(x) for x in v) if isinstance(v, tuple) else leaf(v) for k, v in spec.items()}


# what torch 2.13's differentiable paths support (its own test suite checks these)
TORCH_DIFFERENTIABLE_HYPER = [
    ("SGD", dict(lr=0.05), {}), ("SGD", dict(weight_decay=0.3), {}), ("SGD", dict(lr=0.05, weight_decay=0.3), {}),
    ("Adam", dict(lr=0.01), {}), ("Adam", dict(weight_decay=0.2), {}), ("Adam", dict(betas=(0.9, 0.99)), {}),
    ("Adam", dict(lr=0.01, weight_decay=0.2, betas=(0.8, 0.95)), {}), ("Adam", dict(lr=0.01), dict(amsgrad=True)),
    ("AdamW", dict(lr=0.01), {}), ("AdamW", dict(weight_decay=0.2), {}), ("AdamW", dict(betas=(0.9, 0.99)), {}),
    ("AdamW", dict(lr=0.01, weight_decay=0.2, betas=(0.8, 0.95)), {}), ("RAdam", dict(lr=0.01), {}),
]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name,spec,extra", TORCH_DIFFERENTIABLE_HYPER,
                         ids=[f"{n}-{'-'.join(s)}-{i}" for i, (n, s, _) in enumerate(TORCH_DIFFERENTIABLE_HYPER)])
def test_hyperparameter_gradients_match_torch(name, spec, extra):
    expected = _meta_gradient(torch.optim, name, _hyper(spec), extra)
    got = _meta_gradient(ts_optim, name, _hyper(spec), extra)
    assert all(g is not None and g.abs().sum() > 0 for g in got)
    for a, b in zip(expected, got):
        # torch computes Adam's bias corrections from a float32 step when differentiable
        torch.testing.assert_close(b, a, rtol=2e-5, atol=1e-12)


# torchstep also differentiates where torch's differentiable path refuses a tensor hyperparameter
# (TypeError: "argument 'alpha' must be Number"); checked numerically
OURS_ONLY = [
    ("RMSprop", dict(lr=0.01, weight_decay=0.1), dict(momentum=0.5, centered=True)),
    ("Adagrad", dict(lr=0.1, weight_decay=0.1), {}), ("Adamax", dict(lr=0.01, weight_decay=0.1), {}),
    ("NAdam", dict(lr=0.01, weight_decay=0.1), {}), ("RAdam", dict(weight_decay=0.1), {}),
    ("Adadelta", dict(lr=0.5, weight_decay=0.1), {}), ("ASGD", dict(weight_decay=0.1), {}),
    ("SGD", dict(lr=0.05, weight_decay=0.3), dict(momentum=0.9, nesterov=True)),
]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name,spec,extra", TORCH_DIFFERENTIABLE_HYPER + OURS_ONLY,
                         ids=[f"{n}-{'-'.join(s)}-{i}" for i, (n, s, _) in enumerate(TORCH_DIFFERENTIABLE_HYPER + OURS_ONLY)])
def test_hyperparameter_gradients_gradcheck(name, spec, extra):
    keys = list(spec)
    flat = [x for v in _hyper(spec).values() for x in (v if isinstance(v, tuple) else (v,))]

    def loss_after_steps(*leaves):
        it = iter(leaves)
        hyper = {k: tuple(next(it) for _ in spec[k]) if isinstance(spec[k], tuple) else next(it) for k in keys}
        p = torch.rand(6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_().clone()
        opt = getattr(ts_optim, name)([p], differentiable=True, **hyper, **extra)
        for _ in range(2):
            (g,) = torch.autograd.grad((p.sum() - 2.0) ** 2, p, create_graph=True)
            p.grad = g.clone()
            opt.step()
        return (p.sum() - 2.0) ** 2

    assert torch.autograd.gradcheck(loss_after_steps, tuple(flat))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kwargs", [dict(lr=0.9), dict(lr=0.9, decoupled_weight_decay=True, weight_decay=0.1)])
def test_nadam_mu_product_stays_in_the_graph(kwargs):
    """A differentiable NAdam step with a ``mu_product`` state that requires grad: torch's step
    coefficients depend on it as a tensor, and so do torchstep's."""
    grads = []
    for lib in (torch.optim, ts_optim):
        gen = torch.Generator().manual_seed(0)
        p = torch.rand(5, dtype=torch.float64, generator=gen).requires_grad_().clone()
        p.grad = torch.rand(5, dtype=torch.float64, generator=gen)
        mu_product = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
        opt = lib.NAdam([p], differentiable=True, **kwargs)
        opt.state[p].update(step=torch.tensor(10.0, dtype=torch.float64), mu_product=mu_product.clone(),
                            exp_avg=torch.rand(5, dtype=torch.float64, generator=gen),
                            exp_avg_sq=torch.rand(5, dtype=torch.float64, generator=gen))
        opt.step()
        grads.append(torch.autograd.grad(p.sum(), mu_product)[0])
    assert grads[0] != 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "Adagrad"])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.float16, torch.float64])
def test_fused_flag_with_non_floating_parameters(name, dtype):
    """``fused=True`` and a complex parameter: RuntimeError at the step in torch and here; a
    floating one of any width steps the same in both."""
    out = []
    for lib in (torch.optim, ts_optim):
        p = torch.ones(3, 2, dtype=dtype, requires_grad=True)
        p.grad = torch.full_like(p, 0.5)
        opt = getattr(lib, name)([p], lr=0.1, fused=True)
        try:
            opt.step()
        except RuntimeError as exc:
            out.append(("raised", str(exc)))
        else:
            out.append(("ok", p.detach().clone()))
    (t_kind, t_val), (s_kind, s_val) = out
    assert s_kind == t_kind
    if t_kind == "raised":
        assert dtype.is_complex and s_val.startswith("`fused=True` requires all the params to be floating point")
    else:
        torch.testing.assert_close(s_val, t_val)


# -- a group's own implementation flags, which torch checks only when the step picks its path ----

_GROUP_FLAGS = [
    dict(foreach=True, differentiable=True), dict(fused=True, differentiable=True), dict(fused=True, foreach=True),
    dict(fused=True, foreach=True, differentiable=True), dict(foreach=True, lr=torch.tensor(0.01)),
    dict(foreach=True, betas=(torch.tensor(0.9), torch.tensor(0.99))),
]
_FLAG_CLASSES = ["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "Adamax", "ASGD", "NAdam", "RAdam", "RMSprop", "Rprop"]


def _flag_step(lib, name, defaults, group, sparse, grads):
    p, q = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    group = {k: (v.clone() if torch.is_tensor(v) else tuple(t.clone() for t in v) if isinstance(v, tuple) else v)
             for k, v in group.items()}
    opt = getattr(lib, name)([{"params": [p]}, {"params": [q], **group}], **defaults)
    if grads:
        for t in (p, q):
            t.grad = torch.sparse_coo_tensor([[0]], [1.0], (3,)) if sparse else torch.ones(3)
    try:
        opt.step()
    except Exception as exc:  # noqa: BLE001 -- compared with torch's
        return type(exc)
    return None


@pytest.mark.parametrize(
    "name,group",
    # tensor betas: only Adam and AdamW take them (the others crash inside torch's kernels)
    [(n, g) for n in _FLAG_CLASSES for g in _GROUP_FLAGS if "betas" not in g or n in ("Adam", "AdamW")],
    ids=lambda v: "+".join(v) if isinstance(v, dict) else v,
)
def test_group_flags_raise_at_the_step_like_torch(name, group):
    """foreach with differentiable (AssertionError), fused with differentiable or a sparse
    gradient, a tensor lr/betas on the foreach path: the exception type torch raises at the step,
    with and without gradients, from a group's own flags or the defaults'."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for sparse in ([False, True] if name in ("SGD", "Adagrad") else [False]):
            for grads in (True, False):
                for defaults in ({}, {"differentiable": True}, {"foreach": True}):
                    want = _flag_step(torch.optim, name, defaults, group, sparse, grads)
                    got = _flag_step(ts_optim, name, defaults, group, sparse, grads)
                    assert got is want, (defaults, sparse, grads)


def test_group_flag_error_names_the_group():
    p = torch.ones(2, requires_grad=True)
    opt = ts_optim.RMSprop([{"params": [p], "foreach": True, "differentiable": True}])
    p.grad = torch.ones(2)
    with pytest.raises(AssertionError, match=r"_foreach ops don't support autograd \(parameter group 0 has foreach=True"):
        opt.step()


def test_adagrad_accumulator_starts_at_the_constructors_value():
    """torch fills every accumulator -- a group's given at construction or added later -- with
    the constructor's initial_accumulator_value; a group's own value stays in the group unused."""
    def run(lib):
        p, q = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
        opt = lib.Adagrad([{"params": [p], "initial_accumulator_value": 0.5}], initial_accumulator_value=0.25)
        opt.add_param_group({"params": [q], "initial_accumulator_value": 2.0})
        sums = [opt.state[p]["sum"].clone()]
        p.grad, q.grad = torch.ones(2), torch.ones(2)
        opt.step()
        return sums + [opt.state[p]["sum"], opt.state[q]["sum"], p.detach(), q.detach()], opt.state_dict()["param_groups"]

    (want, want_groups), (got, got_groups) = run(torch.optim), run(ts_optim)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert [g["initial_accumulator_value"] for g in got_groups] == [0.5, 2.0]
    assert got_groups == want_groups


@pytest.mark.parametrize("name,key,value", [
    ("RMSprop", "momentum", 0.9), ("RMSprop", "centered", True), ("Adam", "amsgrad", True), ("AdamW", "amsgrad", True),
])
@pytest.mark.parametrize("late", [False, True], ids=["next-step", "first-grad-later"])
def test_option_turned_on_by_hand_raises_keyerror_like_torch(name, key, value, late):
    """An option that adds a state entry, set by hand after steps: torch's next step with a
    gradient raises KeyError for the missing entry (a step without gradients does not)."""
    def run(lib):
        p = torch.ones(3, requires_grad=True)
        opt = getattr(lib, name)([p])
        p.grad = torch.ones(3)
        opt.step()
        opt.param_groups[0][key] = value
        if late:
            p.grad = None
            opt.step()
            p.grad = torch.ones(3)
        with pytest.raises(KeyError) as info:
            opt.step()
        return info.value

    want, got = run(torch.optim), run(ts_optim)
    assert want.args[0] in str(got) and "parameter 0 of group 0" in str(got)


def test_option_turned_off_and_on_again_keeps_its_state():
    """The entry made while the option was on stays in the state: turning it on again is fine
    (as in torch, which keeps the entry too)."""
    for lib in (torch.optim, ts_optim):
        p = torch.ones(3, requires_grad=True)
        opt = lib.Adam([p], amsgrad=True)
        for flag in (True, False, True):
            opt.param_groups[0]["amsgrad"] = flag
            p.grad = torch.ones(3)
            opt.step()
        assert "max_exp_avg_sq" in opt.state[p]


@pytest.mark.parametrize("name,group,kwargs", [
    ("Rprop", {"etas": (0.0, 1.2)}, {"lr": 0.01, "step_sizes": (0.002, 0.02)}),
    ("Rprop", {"etas": (0.5, 0.0)}, {"lr": 0.01, "step_sizes": (0.002, 0.02)}),
    ("Rprop", {"etas": (0.5, -1.0)}, {"lr": 0.01, "step_sizes": (0.002, 0.02)}),
    ("Rprop", {"etas": (1.0, 2.0)}, {"lr": 0.01}),
    ("Muon", {"adjust_lr_fn": "bogus"}, {"lr": 0.01}),
])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_unvalidated_group_options_compute_as_torch(name, group, kwargs, backend):
    """Options given in a group skip the constructor's checks; torch's step uses them as they
    are (Rprop's sign replacement makes an eta of 0 act as 1, Muon's unknown adjust_lr_fn
    leaves lr as it is), and so does torchstep's, on every path."""
    def run(lib):
        p = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 4).requires_grad_()
        opt = getattr(lib, name)([{"params": [p], **group}], **kwargs)
        for k in range(4):
            p.grad = torch.sin(torch.arange(12.0, dtype=torch.float64) * (k + 1)).reshape(3, 4)
            p.grad[0, k % 4] = 0
            opt.step()
        return [p.detach()] + [v for v in opt.state[p].values() if torch.is_tensor(v)]

    want = run(torch.optim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with dispatch.use(backend):
            got = run(ts_optim)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=0)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "RMSprop", "Adamax", "NAdam",
                                  "RAdam", "ASGD", "Rprop"])
@pytest.mark.parametrize("key", ["lr", "weight_decay"])
@pytest.mark.parametrize("foreach", [None, True])
def test_group_hyper_of_several_elements_raises_like_torch(name, key, foreach):
    """A group's own lr / weight_decay given as a 2-element tensor (never validated, as in torch):
    the step raises torch's exception type -- which depends on the path the group's ``foreach``
    picks in torch (the fused path leaves such a group to the per-tensor one). Rprop has no
    weight_decay: there the key is the user's own and the step runs."""
    raised = []
    for module in (torch.optim, ts_optim):
        p, q = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
        opt = getattr(module, name)([{"params": [p]}, {"params": [q], key: torch.tensor([0.1, 0.2])}],
                                    foreach=foreach)
        p.grad, q.grad = torch.ones(3), torch.ones(3)
        try:
            opt.step()
            raised.append(None)
        except Exception as exc:  # noqa: BLE001 -- the type is what is compared
            raised.append(type(exc))
    assert raised[1] is raised[0]


@pytest.mark.parametrize("name,kwargs", [("Rprop", {}), ("LBFGS", {}), ("SparseAdam", {})])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_user_keys_named_like_options_are_not_applied(name, kwargs, backend):
    """``weight_decay`` / ``decoupled_weight_decay`` in the group of an algorithm that has no such
    option are the user's own data: torch's step ignores them, so the update is the plain one."""
    results = []
    for module in (torch.optim, ts_optim):
        torch.manual_seed(0)
        p = torch.randn(50, requires_grad=True)
        target = torch.randn(50) * 3
        group = {"params": [p], "weight_decay": 5.0, "decoupled_weight_decay": True}
        opt = getattr(module, name)([group], **kwargs)
        for _ in range(3):
            if name == "SparseAdam":
                p.grad = (target * (p.detach() - 1)).to_sparse()
                step = opt.step
            else:
                def closure():
                    opt.zero_grad()
                    loss = (p * target).sum() + (p ** 2).sum()
                    loss.backward()
                    return loss
                step = lambda: opt.step(closure)  # noqa: E731
            with dispatch.use(backend) if module is ts_optim else contextlib.nullcontext():
                step()
        results.append(p.detach().clone())
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-7)
