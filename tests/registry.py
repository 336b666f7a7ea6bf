"""The one registry the optimizer tests run over.

``CASES`` lists, per algorithm, every option of torch 2.13's constructor and the combinations
torch allows (as a product of small grids, filtered to the valid ones). ``ERRORS`` lists every
invalid argument torch rejects, with the exception type and a pattern the message must match.
``TOLERANCE`` gives the parity tolerances per dtype.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float64: dict(rtol=1e-10, atol=1e-12),
}


@dataclass(frozen=True)
class Case:
    """One optimizer configuration: ``kwargs`` for the constructor, ``group2`` overrides for a
    second parameter group; ``torch_kwargs`` replaces kwargs for the torch oracle where torch can
    only run a different (result-equivalent) implementation on this machine."""

    algo: str
    kwargs: dict
    group2: dict = field(default_factory=dict)
    torch_kwargs: dict | None = None

    @property
    def id(self) -> str:
        def fmt(v: Any) -> str:
            if isinstance(v, torch.Tensor):
                return f"T{v.item():g}"
            if isinstance(v, tuple):
                return "(" + ",".join(fmt(x) for x in v) + ")"
            return f"{v}"

        return self.algo + "-" + "-".join(f"{k}={fmt(v)}" for k, v in self.kwargs.items())


def _grid(algo: str, group2: dict, **axes: list) -> list[Case]:
    keys = list(axes)
    return [Case(algo, dict(zip(keys, values)), group2) for values in itertools.product(*axes.values())]


# implementation switches: they choose a code path, never a different result
_IMPL_SGD = [dict(), dict(foreach=True), dict(fused=True), dict(foreach=False)]
_IMPL_ADAM = [dict(), dict(foreach=True), dict(fused=True), dict(capturable=True)]
_IMPL_PLAIN = [dict(), dict(foreach=True)]
_IMPL_CAPTURABLE = [dict(), dict(foreach=True), dict(capturable=True)]


def _with_impl(cases: list[Case], impls: list[dict]) -> list[Case]:
    out = []
    for c, impl in itertools.product(cases, impls):
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
# rows where torch fails with another exception type before its own check runs (here: comparing a
# 2-element tensor with a float); torchstep raises the ValueError torch's check intends
TORCH_FAILS_DIFFERENTLY: dict[str, type] = {}  # pattern -> the type torch raises, where it differs

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
