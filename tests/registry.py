"""The one registry the optimizer tests run over.

``ALGORITHMS`` maps every optimizer class of ``torchstep.optim`` to an :class:`Algorithm`: the
class, the oracle it is checked against (torch.optim 2.13's class of the same name, or a reference
package for the algorithms torch lacks), its option-grid rows, its invalid-argument cases
(exception type and a pattern the message must match), per-backend tolerance overrides, whether
it claims a fused path, and a representative configuration. Parity, error and launch-count tests
are parametrized from it; ``CASES`` / ``ROWS`` / ``ERRORS`` / ``REPRESENTATIVE`` are views of it.

Rows differ in what torchstep computes: ``foreach`` / ``fused`` / ``capturable`` select the same
torchstep code for every option (``fused=False`` / ``foreach=False`` the reference path, which
the parity tests also run as a backend), so each flag value appears in one row per algorithm --
proof that it is accepted and matches torch -- instead of being crossed with the whole grid.

``TOLERANCE`` is the one tolerance table (per dtype); :func:`tolerance` applies an algorithm's
per-backend and a row's own overrides to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

import adabelief_pytorch
import lion_pytorch
import pytorch_optimizer
import torch

import torchstep.optim as ts_optim
from helpers import SHAPES

TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float64: dict(rtol=1e-10, atol=1e-12),
}
BACKENDS = ("fused", "reference")
IMPL_FLAGS = frozenset({"foreach", "fused", "capturable"})

Oracle = Callable[[list, dict], Any]  # (param groups, constructor kwargs) -> an optimizer


@dataclass(frozen=True)
class Case:
    """One configuration: ``kwargs`` for the constructor, ``group2`` overrides for a second
    parameter group; ``torch_kwargs`` replaces kwargs for the oracle where it can only run a
    different (result-equivalent) implementation on this machine; ``oracle`` replaces the
    algorithm's oracle for this row; ``skipping``: may a parameter skip steps (only where the
    oracle counts steps per parameter); ``tol``: dtype -> tolerance, where this row needs its own."""

    algo: str
    kwargs: dict
    group2: dict = field(default_factory=dict)
    torch_kwargs: dict | None = None
    oracle: Oracle | None = None
    skipping: bool = True
    shapes: tuple = tuple(SHAPES)
    tol: dict | None = None

    @property
    def oracle_kwargs(self) -> dict:
        return self.kwargs if self.torch_kwargs is None else self.torch_kwargs

    @property
    def id(self) -> str:
        def fmt(v: Any) -> str:
            if isinstance(v, torch.Tensor):
                return f"T{v.item():g}"
            if isinstance(v, tuple):
                return "(" + ",".join(fmt(x) for x in v) + ")"
            if callable(v):
                return getattr(v, "__name__", "fn")
            return f"{v}"

        return self.algo + "-" + ("-".join(f"{k}={fmt(v)}" for k, v in self.kwargs.items()) or "defaults")


Row = Case


@dataclass
class Algorithm:
    """An optimizer and everything the tests check it against."""

    name: str
    oracle: Oracle | None  # None: checked in its own test module (named in ``checked_in``)
    oracle_name: str
    rows: list[Case] = field(default_factory=list)
    errors: list[tuple[dict, type, str]] = field(default_factory=list)
    representative: dict | None = None
    fused: bool = False  # claims a fused path (tests/test_fused_launches.py counts its kernel launches)
    launch_configs: list[dict] = field(default_factory=lambda: [{}])  # configurations whose launches are counted
    state_names: dict | None = None  # our state key -> the oracle's (None: the same keys, compared whole)
    tolerance: dict = field(default_factory=dict)  # backend -> dtype -> tolerance override
    checked_in: str = "tests/test_parity.py"
    # constructor options no parity row can show (the oracle lacks them or deliberately differs):
    # option -> the test that checks them
    tested_elsewhere: dict = field(default_factory=dict)

    @property
    def cls(self) -> type:
        return getattr(ts_optim, self.name)


def torch_oracle(name: str) -> Oracle:
    def build(groups: list, kwargs: dict):
        return getattr(torch.optim, name)(groups, **kwargs)

    build.__name__ = f"torch.optim.{name}"
    return build


def tolerance(algo: str, dtype: torch.dtype, backend: str = "reference", row: Case | None = None) -> dict:
    """The parity tolerance of ``algo`` in ``dtype`` on ``backend``: the row's own, else the
    algorithm's for that backend, else the table's."""
    if row is not None and row.tol and dtype in row.tol:
        return row.tol[dtype]
    return ALGORITHMS[algo].tolerance.get(backend, {}).get(dtype, TOLERANCE[dtype])


def _grid(algo: str, group2: dict, **axes: list) -> list[Case]:
    keys = list(axes)
    return [Case(algo, dict(zip(keys, values)), group2) for values in itertools.product(*axes.values())]


# implementation switches: torchstep runs the same code for every value (fused=False /
# foreach=False: the reference path, which the parity tests also run as a backend), so each value
# is one row per algorithm, not a copy of the whole grid
_IMPL_SGD = [dict(foreach=True), dict(fused=True), dict(foreach=False), dict(fused=False)]
_IMPL_ADAM = [dict(foreach=True), dict(fused=True), dict(capturable=True), dict(foreach=False), dict(fused=False)]
_IMPL_CAPTURABLE = [dict(foreach=True), dict(capturable=True), dict(foreach=False)]


def _with_impl(cases: list[Case], impls: list[dict]) -> list[Case]:
    """``cases`` and, for each flag value of ``impls``, one row: the flag on a grid row, taken
    from the option-rich end of the grid and a different row for each flag."""
    out = list(cases)
    for i, impl in enumerate(impls):
        c = cases[-1 - (i * len(cases)) // len(impls)]
        torch_kwargs = None
        if impl.get("capturable"):
            # torch refuses capturable=True on CPU tensors; on CPU it is the same math as the default
            torch_kwargs = {**c.kwargs}
        out.append(Case(c.algo, {**c.kwargs, **impl}, c.group2, torch_kwargs))
    return out


def _sgd() -> list[Case]:
    base = _grid(
        "SGD", dict(lr=0.05, weight_decay=0.0),
        lr=[0.1], momentum=[0.0, 0.9], dampening=[0.0, 0.1], weight_decay=[0.0, 0.01],
        nesterov=[False, True], maximize=[False, True],
    )
    base = [c for c in base if not (c.kwargs["nesterov"] and (c.kwargs["momentum"] <= 0 or c.kwargs["dampening"] != 0))]
    extra = [Case("SGD", dict(lr=torch.tensor(0.1), momentum=0.9)), Case("SGD", dict(lr=torch.tensor([0.1])))]
    return _with_impl(base, _IMPL_SGD) + extra


def _adam(algo: str) -> list[Case]:
    base = _grid(
        algo, dict(lr=5e-3, betas=(0.8, 0.99)),
        lr=[1e-2], weight_decay=[0.0, 0.1], amsgrad=[False, True], maximize=[False, True],
    )
    if algo == "Adam":
        base += _grid(algo, dict(lr=5e-3), lr=[1e-2], weight_decay=[0.1], decoupled_weight_decay=[True],
                      amsgrad=[False, True])
    extra = [
        Case(algo, dict(lr=1e-2, betas=(0.5, 0.9), eps=1e-3)),
        Case(algo, dict(lr=torch.tensor(1e-2))),
        Case(algo, dict(lr=torch.tensor(1e-2), betas=(torch.tensor(0.9), torch.tensor(0.99)))),
        # torch's fused CPU kernel does its scalar arithmetic in double, its for-loop path in the
        # tensor lr's float32; torchstep follows the for-loop path, whatever the flags
        Case(algo, dict(lr=torch.tensor(1e-2), fused=True), torch_kwargs=dict(lr=torch.tensor(1e-2))),
    ]
    return _with_impl(base, _IMPL_ADAM) + extra


def _adagrad() -> list[Case]:
    base = _grid(
        "Adagrad", dict(lr=0.05, lr_decay=0.0),
        lr=[0.1], lr_decay=[0.0, 0.05], weight_decay=[0.0, 0.1], initial_accumulator_value=[0.0, 0.5],
        maximize=[False, True],
    )
    extra = [Case("Adagrad", dict(lr=0.1, eps=1e-3)), Case("Adagrad", dict(lr=torch.tensor(0.1)))]
    return _with_impl(base, _IMPL_SGD) + extra


def _adadelta() -> list[Case]:
    base = _grid(
        "Adadelta", dict(lr=0.5, rho=0.5),
        lr=[1.0], rho=[0.9, 0.0, 1.0], weight_decay=[0.0, 0.1], maximize=[False, True],
    )
    extra = [Case("Adadelta", dict(lr=1.0, eps=1e-3)), Case("Adadelta", dict(lr=torch.tensor(0.9)))]
    return _with_impl(base, _IMPL_CAPTURABLE) + extra


def _rmsprop() -> list[Case]:
    base = _grid(
        "RMSprop", dict(lr=5e-3, alpha=0.9),
        lr=[1e-2], momentum=[0.0, 0.9], centered=[False, True], weight_decay=[0.0, 0.1], maximize=[False, True],
    )
    extra = [Case("RMSprop", dict(lr=1e-2, alpha=0.5, eps=1e-3)), Case("RMSprop", dict(lr=torch.tensor(1e-2)))]
    return _with_impl(base, _IMPL_CAPTURABLE) + extra


CASES: list[Case] = _sgd() + _adam("Adam") + _adam("AdamW") + _adagrad() + _adadelta() + _rmsprop()

# algorithm -> one representative, option-rich configuration (for the slower tests)
REPRESENTATIVE = {
    "SGD": dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "Adam": dict(lr=1e-2, amsgrad=True, weight_decay=0.1),
    "AdamW": dict(lr=1e-2, weight_decay=0.1),
    "Adagrad": dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
    "Adadelta": dict(lr=1.0, rho=0.9, weight_decay=0.01),
    "RMSprop": dict(lr=1e-2, momentum=0.5, centered=True),
}

# (algorithm, kwargs, exception type, pattern the message must match).
# Each pattern names the argument and the offending value; torch must reject the same input with
# the same exception type (checked by the test).
ERRORS: list[tuple[str, dict, type, str]] = []
for _algo in ["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "RMSprop", "SparseAdam"]:
    ERRORS += [
        (_algo, dict(lr=-1.0), ValueError, r"Invalid learning rate: -1\.0 \(lr must be"),
        (_algo, dict(lr=torch.tensor([0.1, 0.2])), ValueError, r"Tensor lr must be 1-element \(lr has shape \(2,\)"),
    ]
for _algo in ["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "RMSprop"]:
    ERRORS.append((_algo, dict(weight_decay=-0.1), ValueError, r"Invalid weight_decay value: -0\.1 \(weight_decay must be"))
for _algo in ["Adam", "AdamW", "Adagrad", "Adadelta", "RMSprop", "SparseAdam"]:
    ERRORS.append((_algo, dict(eps=-1e-8), ValueError, r"Invalid epsilon value: -1e-08 \(eps must be"))
for _algo in ["Adam", "AdamW", "SparseAdam"]:
    ERRORS += [
        (_algo, dict(betas=(1.0, 0.999)), ValueError, r"Invalid beta parameter at index 0: 1\.0 \(betas\[0\] must be in \[0\.0, 1\.0\)"),
        (_algo, dict(betas=(0.9, -0.1)), ValueError, r"Invalid beta parameter at index 1: -0\.1 \(betas\[1\] must be in"),
    ]
for _algo in ["Adam", "AdamW"]:
    ERRORS += [
        (_algo, dict(betas=(torch.tensor(0.9), 0.999)), ValueError, r"betas must be either both floats or both Tensors \(got Tensor and float\)"),
        (_algo, dict(lr=torch.tensor(0.01), foreach=True), ValueError, r"lr as a Tensor is not supported for capturable=False and foreach=True"),
        (_algo, dict(betas=(torch.tensor(0.9), torch.tensor(0.99)), foreach=True), ValueError, r"betas\[0\] as a Tensor is not supported"),
        (_algo, dict(betas=(torch.tensor([0.9, 0.8]), torch.tensor(0.99))), RuntimeError, r"Boolean value of Tensor with more than one value is ambiguous \(betas\[0\] must be a number in \[0\.0, 1\.0\); got tensor"),
    ]
for _algo in ["SGD", "Adam", "AdamW", "Adagrad"]:
    ERRORS += [
        (_algo, dict(fused=True, differentiable=True), RuntimeError, r"`fused` does not support `differentiable`"),
        (_algo, dict(fused=True, foreach=True), RuntimeError, r"`fused` and `foreach` cannot be `True` together"),
    ]
ERRORS += [
    ("SGD", dict(momentum=-0.5), ValueError, r"Invalid momentum value: -0\.5 \(momentum must be"),
    ("SGD", dict(nesterov=True), ValueError, r"Nesterov momentum requires a momentum and zero dampening \(got momentum=0"),
    ("SGD", dict(nesterov=True, momentum=0.9, dampening=0.1), ValueError, r"got momentum=0\.9, dampening=0\.1"),
    ("Adagrad", dict(lr_decay=-1.0), ValueError, r"Invalid lr_decay value: -1\.0 \(lr_decay must be"),
    ("Adagrad", dict(initial_accumulator_value=-1.0), ValueError, r"Invalid initial_accumulator_value value: -1\.0 \(initial_accumulator_value must be"),
    ("Adadelta", dict(rho=1.5), ValueError, r"Invalid rho value: 1\.5 \(rho must be in \[0\.0, 1\.0\]\)"),
    ("Adadelta", dict(rho=-0.1), ValueError, r"Invalid rho value: -0\.1"),
    ("RMSprop", dict(momentum=-0.1), ValueError, r"Invalid momentum value: -0\.1 \(momentum must be"),
    ("RMSprop", dict(alpha=-0.1), ValueError, r"Invalid alpha value: -0\.1 \(alpha must be"),
    ("SparseAdam", dict(lr=0.0), ValueError, r"Invalid learning rate: 0\.0 \(lr must be > 0\)"),
    ("SparseAdam", dict(eps=0.0), ValueError, r"Invalid epsilon value: 0\.0 \(eps must be > 0\)"),
]


# -- Adamax, NAdam, RAdam, ASGD, Rprop ------------------------------------------------------------

# the weight-decay / maximize combinations the five cross with their own options (both wrappers
# act before the update, so each alone and both together cover the order they are applied in)
_WD_MAX = [dict(), dict(weight_decay=0.1), dict(maximize=True), dict(weight_decay=0.1, maximize=True)]
_WD_DECOUPLED = _WD_MAX + [dict(weight_decay=0.1, decoupled_weight_decay=True),
                           dict(weight_decay=0.1, decoupled_weight_decay=True, maximize=True)]


def _crossed(algo: str, group2: dict, wrappers: list[dict], **axes: list) -> list[Case]:
    return [Case(c.algo, {**c.kwargs, **w}, c.group2) for c in _grid(algo, group2, **axes) for w in wrappers]


def _adamax() -> list[Case]:
    base = _grid("Adamax", dict(lr=5e-3, betas=(0.8, 0.99)), lr=[1e-2], weight_decay=[0.0, 0.1], maximize=[False, True])
    extra = [Case("Adamax", dict(lr=1e-2, betas=(0.5, 0.9), eps=1e-3)), Case("Adamax", dict(lr=torch.tensor(1e-2)))]
    return _with_impl(base, _IMPL_CAPTURABLE) + extra


def _nadam() -> list[Case]:
    base = _crossed("NAdam", dict(lr=5e-3, betas=(0.8, 0.99), momentum_decay=0.05), _WD_DECOUPLED[1:],
                    lr=[1e-2], momentum_decay=[4e-3, 0.2])
    base.append(Case("NAdam", dict(lr=1e-2)))
    extra = [
        Case("NAdam", dict(lr=1e-2, betas=(0.5, 0.9), eps=1e-3, momentum_decay=0.0)),
        Case("NAdam", dict(lr=torch.tensor(1e-2), weight_decay=0.1, decoupled_weight_decay=True)),
        # torch's foreach path takes a tensor lr as a double (lr.item()), its for-loop path does the
        # step-size arithmetic in the tensor's float32; torchstep follows the for-loop path
        Case("NAdam", dict(lr=torch.tensor([1e-2]), foreach=True), torch_kwargs=dict(lr=torch.tensor([1e-2]))),
    ]
    return _with_impl(base, _IMPL_CAPTURABLE) + extra


def _radam() -> list[Case]:
    # beta2 = 0.9, 0.99 and 0.999 rectify from step 6 on (rho_t > 5), 0.5 never (rho_inf = 3)
    base = _crossed("RAdam", dict(lr=5e-3, betas=(0.8, 0.99)), _WD_DECOUPLED[1:],
                    lr=[1e-2], betas=[(0.9, 0.9), (0.9, 0.999)])
    base.append(Case("RAdam", dict(lr=1e-2)))
    extra = [
        Case("RAdam", dict(lr=1e-2, betas=(0.5, 0.5), eps=1e-3)),
        Case("RAdam", dict(lr=torch.tensor(1e-2), betas=(0.9, 0.9), weight_decay=0.1, decoupled_weight_decay=True)),
        # as NAdam: torch's foreach path takes a tensor lr as a double, its for-loop path as float32
        Case("RAdam", dict(lr=torch.tensor(1e-2), betas=(0.9, 0.9), foreach=True),
             torch_kwargs=dict(lr=torch.tensor(1e-2), betas=(0.9, 0.9))),
    ]
    return _with_impl(base, _IMPL_CAPTURABLE) + extra


def _asgd() -> list[Case]:
    # t0=5 starts the averaging inside 25 steps (mu = 1, then 1/2, 1/3, ...); t0=5.5 gives mu in (0.5, 1)
    wrappers = [dict(), dict(weight_decay=0.1), dict(weight_decay=0.1, maximize=True)]
    base = _crossed("ASGD", dict(lr=5e-3, t0=3.0), wrappers, lr=[1e-2], lambd=[1e-4, 0.5], t0=[1e6, 5.0])
    base.append(Case("ASGD", dict(lr=1e-2, maximize=True)))
    extra = [
        Case("ASGD", dict(lr=0.05, t0=5.5, lambd=0.1, alpha=1.0)),
        Case("ASGD", dict(lr=0.05, t0=1.0, lambd=0.05, alpha=0.5)),
        Case("ASGD", dict(lr=torch.tensor(0.05), t0=5.0, lambd=0.1)),
        Case("ASGD", dict(lr=torch.tensor([0.05]), t0=2.0, foreach=True)),
    ]
    # torch's foreach ASGD computes the next eta from the float32 step tensor (float32 arithmetic,
    # ~1e-8 off its for-loop path in float64); torchstep follows the for-loop path, so the oracle
    # of every implementation switch is torch's default path
    cases = _with_impl(base, _IMPL_CAPTURABLE) + extra
    return [Case(c.algo, c.kwargs, c.group2, {k: v for k, v in c.kwargs.items() if k not in ("foreach", "capturable")})
            for c in cases]


def _rprop() -> list[Case]:
    base = _grid(
        "Rprop", dict(lr=5e-3, etas=(0.4, 1.1)),
        lr=[1e-2], etas=[(0.5, 1.2), (0.3, 1.5)], step_sizes=[(1e-6, 50), (2e-3, 0.02)], maximize=[False, True],
    )
    extra = [Case("Rprop", dict(lr=torch.tensor(1e-2))), Case("Rprop", dict(lr=torch.tensor([1e-2]), foreach=True))]
    return _with_impl(base, _IMPL_CAPTURABLE) + extra


CASES += _adamax() + _nadam() + _radam() + _asgd() + _rprop()

REPRESENTATIVE.update({
    "Adamax": dict(lr=1e-2, weight_decay=0.1),
    "NAdam": dict(lr=1e-2, weight_decay=0.1, momentum_decay=0.1),
    "RAdam": dict(lr=1e-2, betas=(0.9, 0.9), weight_decay=0.1, decoupled_weight_decay=True),
    "ASGD": dict(lr=0.05, lambd=0.1, t0=5.0, weight_decay=0.01),
    "Rprop": dict(lr=1e-2, etas=(0.4, 1.3), step_sizes=(1e-4, 0.05)),
})

for _algo in ["Adamax", "NAdam", "RAdam", "ASGD", "Rprop"]:
    ERRORS += [
        (_algo, dict(lr=-1.0), ValueError, r"Invalid learning rate: -1\.0 \(lr must be"),
        (_algo, dict(lr=torch.tensor([0.1, 0.2])), ValueError, r"Tensor lr must be 1-element \(lr has shape \(2,\)"),
    ]
for _algo in ["Adamax", "NAdam", "RAdam", "ASGD"]:
    ERRORS.append((_algo, dict(weight_decay=-0.1), ValueError, r"Invalid weight_decay value: -0\.1 \(weight_decay must be"))
for _algo in ["Adamax", "NAdam", "RAdam"]:
    ERRORS += [
        (_algo, dict(eps=-1e-8), ValueError, r"Invalid epsilon value: -1e-08 \(eps must be"),
        (_algo, dict(betas=(1.0, 0.999)), ValueError, r"Invalid beta parameter at index 0: 1\.0 \(betas\[0\] must be in \[0\.0, 1\.0\)"),
        (_algo, dict(betas=(-0.1, 0.999)), ValueError, r"Invalid beta parameter at index 0: -0\.1 \(betas\[0\] must be in"),
        (_algo, dict(betas=(0.9, 1.5)), ValueError, r"Invalid beta parameter at index 1: 1\.5 \(betas\[1\] must be in"),
    ]
ERRORS += [
    ("NAdam", dict(momentum_decay=-1e-3), ValueError, r"Invalid momentum_decay value: -0\.001 \(momentum_decay must be >= 0\.0\)"),
    ("Rprop", dict(etas=(1.5, 2.0)), ValueError, r"Invalid eta values: 1\.5, 2\.0 \(etas must satisfy 0\.0 < etas\[0\] < 1\.0 < etas\[1\]\)"),
    ("Rprop", dict(etas=(0.0, 1.2)), ValueError, r"Invalid eta values: 0\.0, 1\.2 \(etas must satisfy"),
    ("Rprop", dict(etas=(0.5, 1.0)), ValueError, r"Invalid eta values: 0\.5, 1\.0 \(etas must satisfy"),
    ("Rprop", dict(etas=(0.5, 0.9)), ValueError, r"Invalid eta values: 0\.5, 0\.9 \(etas must satisfy"),
]


# -- Lion, Adan, AdaBelief, ADOPT, AdEMAMix: checked against reference packages -----------------
# The authors' package where one is published (adabelief-pytorch), lion-pytorch for Lion,
# pytorch-optimizer otherwise (the authors' Adan, ADOPT and AdEMAMix code is not packaged). A
# reference takes other argument names; each builder maps ours to its.

def _renamed(options: dict, names: dict) -> dict:
    return {names.get(k, k): v for k, v in options.items()}


def _pytorch_optimizer(cls_name: str, names: dict, fixed: dict) -> Callable:
    """A builder for ``pytorch_optimizer.<cls_name>``: our option names mapped by ``names``, plus
    ``fixed`` options; its per-parameter (not foreach) path, whose operation order ours follows."""
    cls = getattr(pytorch_optimizer, cls_name)

    def build(groups: list[dict], kwargs: dict):
        renamed = [_renamed(g, names) for g in groups]
        return cls(renamed, **{**fixed, **_renamed(kwargs, names), "foreach": False})

    return build


def lion_reference(groups: list[dict], kwargs: dict):
    return lion_pytorch.Lion(groups, **kwargs)


def adabelief_reference(groups: list[dict], kwargs: dict):
    names = {"decoupled_weight_decay": "weight_decouple"}
    with contextlib.redirect_stdout(io.StringIO()):  # the package announces its options
        return adabelief_pytorch.AdaBelief(groups, **_renamed(kwargs, names), print_change_log=False)


def ademamix_reference(groups: list[dict], kwargs: dict):
    """pytorch-optimizer has one warmup length for alpha and beta3 (rows set both alike), and its
    default alpha is 5 where the authors' is 2."""
    def rename(options: dict) -> dict:
        out = {k: v for k, v in options.items() if k not in ("alpha_warmup", "beta3_warmup")}
        if "alpha_warmup" in options:
            out["t_alpha_beta3"] = options["alpha_warmup"]
        return out

    return pytorch_optimizer.AdEMAMix([rename(g) for g in groups], **{"alpha": 2.0, **rename(kwargs)},
                                      weight_decouple=True, foreach=False)


PYOPT_LION = _pytorch_optimizer("Lion", {}, dict(weight_decouple=True))
PYOPT_ADAN = _pytorch_optimizer("Adan", {"no_prox": "weight_decouple"}, {})
PYOPT_ADOPT = _pytorch_optimizer("ADOPT", {"decoupled_weight_decay": "weight_decouple"}, {})

# our state key -> the reference's, per algorithm
STATE_NAMES = {
    "Lion": {"exp_avg": "exp_avg"},
    "Adan": {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "exp_avg_diff": "exp_avg_diff",
             "neg_pre_grad": "previous_grad"},
    "AdaBelief": {"exp_avg": "exp_avg", "exp_avg_var": "exp_avg_var", "max_exp_avg_var": "max_exp_avg_var"},
    "ADOPT": {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"},
    "AdEMAMix": {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "exp_avg_slow": "exp_avg_slow"},
}



def _quarter_plus_half(step: float) -> float:
    return 0.5 + step**0.25


def _ref(algo: str, kwargs: dict, group2: dict, oracle: Oracle, skipping: bool = False, **more) -> Case:
    """A reference-package row; ``skipping`` only where the reference counts steps per parameter."""
    return Case(algo, kwargs, group2, oracle=oracle, skipping=skipping, **more)


MODERN_ROWS = [
    # Lion: lion-pytorch, and pytorch-optimizer for maximize / cautious
    _ref("Lion", {}, {"lr": 3e-4, "betas": (0.95, 0.98), "weight_decay": 0.1}, lion_reference, skipping=True),
    _ref("Lion", {"lr": 1e-3, "weight_decay": 0.5}, {"weight_decay": 0.0}, lion_reference, skipping=True),
    _ref("Lion", {"lr": 1e-3, "weight_decay": 0.1, "maximize": True}, {"lr": 2e-3}, PYOPT_LION),
    _ref("Lion", {"lr": 1e-3, "weight_decay": 0.1, "cautious": True}, {"lr": 2e-3, "weight_decay": 0.0}, PYOPT_LION),
    _ref("Lion", {"lr": 1e-3, "maximize": True, "cautious": True}, {"betas": (0.5, 0.9)}, PYOPT_LION),
    # Adan: pytorch-optimizer (its weight_decouple is the authors' no_prox)
    _ref("Adan", {}, {"lr": 3e-3, "betas": (0.9, 0.9, 0.999)}, PYOPT_ADAN),
    _ref("Adan", {"lr": 1e-2, "weight_decay": 0.05}, {"weight_decay": 0.0, "eps": 1e-6}, PYOPT_ADAN),
    _ref("Adan", {"lr": 1e-2, "weight_decay": 0.05, "no_prox": True}, {"no_prox": False}, PYOPT_ADAN),
    # pytorch-optimizer sums the squared norms in float32, so float64 agrees to about 1e-7; its
    # clip factor has shape [1], which its in-place multiply cannot broadcast into a 0-d gradient
    _ref("Adan", {"lr": 1e-2, "max_grad_norm": 1.0}, {"lr": 3e-3}, PYOPT_ADAN,
         tol={torch.float64: dict(rtol=1e-6, atol=1e-8)}, shapes=tuple(SHAPES[1:])),
    # AdaBelief: the authors' package (its options are per optimizer, so group 2 varies the rest)
    _ref("AdaBelief", {}, {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-12}, adabelief_reference, skipping=True),
    _ref("AdaBelief", {"lr": 1e-2, "weight_decay": 0.1}, {"weight_decay": 0.0}, adabelief_reference, skipping=True),
    _ref("AdaBelief", {"decoupled_weight_decay": False, "weight_decay": 0.1}, {"lr": 3e-3}, adabelief_reference,
         skipping=True),
    _ref("AdaBelief", {"rectify": False, "eps": 1e-8}, {"betas": (0.5, 0.9)}, adabelief_reference, skipping=True),
    _ref("AdaBelief", {"rectify": False, "amsgrad": True}, {"amsgrad": False, "lr": 3e-3}, adabelief_reference,
         skipping=True),
    _ref("AdaBelief", {"degenerated_to_sgd": False}, {"betas": (0.9, 0.99)}, adabelief_reference, skipping=True),
    # ADOPT: pytorch-optimizer
    _ref("ADOPT", {}, {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-8}, PYOPT_ADOPT),
    _ref("ADOPT", {"clip_lambda": None, "lr": 1e-2}, {"betas": (0.5, 0.5)}, PYOPT_ADOPT),
    _ref("ADOPT", {"clip_lambda": _quarter_plus_half}, {"lr": 3e-3}, PYOPT_ADOPT),
    _ref("ADOPT", {"weight_decay": 0.1}, {"weight_decay": 0.0}, PYOPT_ADOPT),
    _ref("ADOPT", {"weight_decay": 0.1, "decoupled_weight_decay": True}, {"decoupled_weight_decay": False}, PYOPT_ADOPT),
    _ref("ADOPT", {"maximize": True, "weight_decay": 0.1}, {"lr": 3e-3}, PYOPT_ADOPT),
    _ref("ADOPT", {"cautious": True, "lr": 1e-2}, {"lr": 3e-3}, PYOPT_ADOPT),
    # AdEMAMix: pytorch-optimizer (one warmup length for both, so rows keep them equal)
    _ref("AdEMAMix", {}, {"lr": 3e-3, "betas": (0.8, 0.99, 0.999), "alpha": 5.0, "eps": 1e-6}, ademamix_reference),
    _ref("AdEMAMix", {"alpha": 5.0, "alpha_warmup": 10, "beta3_warmup": 10, "lr": 1e-2},
         {"alpha_warmup": 20, "beta3_warmup": 20}, ademamix_reference),
    _ref("AdEMAMix", {"weight_decay": 0.1, "lr": 1e-2}, {"weight_decay": 0.0}, ademamix_reference),
    _ref("AdEMAMix", {"maximize": True, "weight_decay": 0.1}, {"lr": 3e-3}, ademamix_reference),
    # cautious: pytorch-optimizer masks only the fast term, which is the whole step when alpha = 0
    _ref("AdEMAMix", {"cautious": True, "alpha": 0.0, "lr": 1e-2}, {"lr": 3e-3}, ademamix_reference),
]


def _with_foreach(rows: list[Case]) -> list[Case]:
    """``rows`` and, per algorithm, its first row with foreach=True and with foreach=False (the
    reference packages take no such flag: their oracle gets the row's other options)."""
    out = list(rows)
    for algo in dict.fromkeys(r.algo for r in rows):
        first = next(r for r in rows if r.algo == algo)
        for value in (True, False):
            out.append(dataclasses.replace(first, kwargs={**first.kwargs, "foreach": value}, torch_kwargs=first.kwargs))
    return out


MODERN_ROWS = _with_foreach(MODERN_ROWS)
_MAXIMIZE_ELSEWHERE = "tests/test_modern_elementwise.py::test_maximize_is_minimizing_the_negated_objective"
_CAUTIOUS_ELSEWHERE = "tests/test_cautious.py (the cautious stage against the authors' formula)"
# the low-bit options every constructor takes (torch has none of them): their own modules
_LOWBIT_ELSEWHERE = {k: "tests/test_lowbit.py, tests/test_lowbit_random.py (fused against the reference path)"
                     for k in ("state_dtype", "stochastic_rounding", "kahan")}
_ELSEWHERE = {
    "Adan": {"maximize": _MAXIMIZE_ELSEWHERE + " (pytorch-optimizer's differs: tests/test_modern_differences.py)",
             "cautious": _CAUTIOUS_ELSEWHERE},
    "AdaBelief": {"maximize": _MAXIMIZE_ELSEWHERE + " (adabelief-pytorch has none)", "cautious": _CAUTIOUS_ELSEWHERE},
}

MODERN_ERRORS = [
    ("Lion", dict(lr=-1.0), ValueError, r"Invalid learning rate: -1.0 \(lr must be >= 0.0\)"),
    ("Lion", dict(betas=(0.9, 1.0)), ValueError, r"Invalid beta parameter at index 1: 1.0 \(betas\[1\] must be in \[0.0, 1.0\)\)"),
    ("Lion", dict(weight_decay=-0.1), ValueError, r"Invalid weight_decay value: -0.1 \(weight_decay must be >= 0.0\)"),
    ("Adan", dict(betas=(0.9, 0.9)), ValueError, r"Invalid betas.*betas must have 3 items"),
    ("Adan", dict(betas=(0.9, 0.9, -0.1)), ValueError, r"beta parameter at index 2: -0.1 \(betas\[2\] must be in"),
    ("Adan", dict(max_grad_norm=-1.0), ValueError, r"Invalid max_grad_norm value: -1.0 \(max_grad_norm must be >= 0.0\)"),
    ("Adan", dict(eps=-1e-8), ValueError, r"Invalid epsilon value: -1e-08 \(eps must be >= 0.0\)"),
    ("Adan", dict(betas=0.9), TypeError, r"Invalid betas.*must be a sequence"),
    ("AdaBelief", dict(eps=-1.0), ValueError, r"Invalid epsilon value: -1.0 \(eps must be >= 0.0\)"),
    ("AdaBelief", dict(betas=(1.5, 0.999)), ValueError, r"beta parameter at index 0: 1.5"),
    ("AdaBelief", dict(lr=float("nan")), ValueError, r"Invalid learning rate: nan"),
    ("ADOPT", dict(clip_lambda=0.25), TypeError, r"Invalid clip_lambda: 0.25 \(clip_lambda must be a callable or None"),
    ("ADOPT", dict(weight_decay=-1), ValueError, r"Invalid weight_decay value: -1"),
    # as torch indexes Adam's betas
    ("ADOPT", dict(betas=(0.9,)), IndexError, r"tuple index out of range \(betas must be a pair \(beta1, beta2\); got \(0.9,\)\)"),
    ("AdEMAMix", dict(alpha=-1.0), ValueError, r"Invalid alpha value: -1.0 \(alpha must be >= 0.0\)"),
    ("AdEMAMix", dict(alpha_warmup=0), ValueError, r"alpha_warmup must be an integer >= 1; got 0"),
    ("AdEMAMix", dict(beta3_warmup=2.5), ValueError, r"beta3_warmup must be an integer >= 1; got 2.5"),
    ("AdEMAMix", dict(betas=(0.9, 0.999, 1.0)), ValueError, r"beta parameter at index 2: 1.0"),
]


# -- the registry ------------------------------------------------------------------------------

_TORCH = ["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "RMSprop", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop"]
_MODERN = {"Lion": "lion-pytorch 0.2.5; pytorch-optimizer 4.1.0", "Adan": "pytorch-optimizer 4.1.0",
           "AdaBelief": "adabelief-pytorch 0.2.1", "ADOPT": "pytorch-optimizer 4.1.0", "AdEMAMix": "pytorch-optimizer 4.1.0"}
# algorithms whose parity lives in a module of their own (their oracles need more than a row:
# train/eval modes, closures, per-tensor references, a wrapped optimizer): oracle, module, fused?
_OWN_MODULE = {
    "SparseAdam": ("torch.optim.SparseAdam", "tests/test_sparse.py", False),
    "LBFGS": ("torch.optim.LBFGS", "tests/test_lbfgs.py", False),
    "Adafactor": ("torch.optim.Adafactor", "tests/test_adafactor.py", True),
    "Muon": ("torch.optim.Muon", "tests/test_muon.py", True),
    "Lamb": ("pytorch-optimizer 4.1.0", "tests/test_modern_trust.py", True),
    "LARS": ("pytorch-optimizer 4.1.0", "tests/test_modern_trust.py", True),
    "Prodigy": ("prodigyopt 1.1.2", "tests/test_prodigy.py", True),
    "SGDScheduleFree": ("schedulefree 1.4.1", "tests/test_schedulefree.py", True),
    "AdamWScheduleFree": ("schedulefree 1.4.1", "tests/test_schedulefree.py", True),
    "Lookahead": ("pytorch-optimizer 4.1.0", "tests/test_lookahead.py", False),
}
# configurations whose kernel launches are counted: a plain one, and each option that adds a
# stage or changes the kernel's structure
_LAUNCHES = {
    "SGD": [dict(lr=0.1), dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True)],
    "Adam": [dict(lr=1e-2), dict(lr=1e-2, amsgrad=True, weight_decay=0.1), dict(lr=1e-2, cautious=True)],
    "AdamW": [dict(lr=1e-2, weight_decay=0.1)],
    "Adagrad": [dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)],
    "Adadelta": [dict(lr=1.0, weight_decay=0.01)],
    "RMSprop": [dict(lr=1e-2), dict(lr=1e-2, momentum=0.5, centered=True)],
    "Adamax": [dict(lr=1e-2, weight_decay=0.1)],
    "NAdam": [dict(lr=1e-2, momentum_decay=0.1), dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)],
    "RAdam": [dict(lr=1e-2, betas=(0.9, 0.9))],
    "ASGD": [dict(lr=0.05, lambd=0.1, t0=2.0)],
    "Rprop": [dict(lr=1e-2)],
    "Lion": [dict(lr=1e-3, weight_decay=0.1), dict(lr=1e-3, cautious=True)],
    "Adan": [dict(lr=1e-2, weight_decay=0.05), dict(lr=1e-2, max_grad_norm=1.0, no_prox=True, weight_decay=0.05)],
    "AdaBelief": [dict(lr=1e-2), dict(lr=1e-2, amsgrad=True, rectify=False, decoupled_weight_decay=False, weight_decay=0.1)],
    "ADOPT": [dict(lr=1e-2), dict(lr=1e-2, cautious=True, weight_decay=0.1)],
    "AdEMAMix": [dict(lr=1e-2, alpha_warmup=3, beta3_warmup=3)],
    "Lamb": [dict(lr=1e-2, weight_decay=0.1), dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True,
                                                 bias_correction=False, maximize=True)],
    "LARS": [dict(lr=0.5, weight_decay=0.01, nesterov=True), dict(lr=0.5, momentum=0.0)],
    "Prodigy": [dict(lr=1.0), dict(lr=1.0, weight_decay=0.1, decouple=False, safeguard_warmup=True, betas=(0.0, 0.99))],
    "Adafactor": [dict(lr=1e-2), dict(lr=1e-2, weight_decay=0.1, maximize=True, eps=(1e-30, 1e-2))],
    "Muon": [dict(lr=0.02), dict(lr=0.02, nesterov=False, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")],
    "SGDScheduleFree": [dict(lr=0.1, momentum=0.5, weight_decay=0.01)],
    "AdamWScheduleFree": [dict(lr=0.01, weight_decay=0.05, warmup_steps=3)],
}


def _register() -> dict[str, Algorithm]:
    out: dict[str, Algorithm] = {}
    for name in _TORCH:
        out[name] = Algorithm(name, torch_oracle(name), f"torch.optim.{name} (torch 2.13)",
                              rows=[c for c in CASES if c.algo == name], representative=REPRESENTATIVE[name], fused=True,
                              tested_elsewhere=dict(_LOWBIT_ELSEWHERE))
    for name, source in _MODERN.items():
        out[name] = Algorithm(name, None, source, rows=[r for r in MODERN_ROWS if r.algo == name], fused=True,
                              state_names=STATE_NAMES[name], tested_elsewhere={**_LOWBIT_ELSEWHERE, **_ELSEWHERE.get(name, {})})
    for name, (source, module, fused) in _OWN_MODULE.items():
        out[name] = Algorithm(name, None, source, fused=fused, checked_in=module)
    for algo, kwargs, exc, pattern in ERRORS + MODERN_ERRORS:
        out[algo].errors.append((kwargs, exc, pattern))
    for name, configs in _LAUNCHES.items():
        out[name].launch_configs = configs
    return out


ALGORITHMS: dict[str, Algorithm] = _register()

# views of the registry
CASES = [c for a in ALGORITHMS.values() if a.name in _TORCH for c in a.rows]  # the torch.optim rows
ROWS = [c for a in ALGORITHMS.values() if a.name in _MODERN for c in a.rows]  # the reference-package rows
PARITY_ROWS = CASES + ROWS
ERRORS = [(a.name, *e) for a in ALGORITHMS.values() for e in a.errors]
REPRESENTATIVE = {a.name: a.representative for a in ALGORITHMS.values() if a.representative is not None}


def oracle_for(row: Case) -> Oracle:
    """The optimizer ``row`` is checked against: its own, else its algorithm's."""
    return row.oracle or ALGORITHMS[row.algo].oracle
