"""Seeded differential fuzzing of torchstep's schedulers against torch 2.13's.

Per class and seed, ``scheduler_draws.draw_case`` draws constructor arguments (edge values
included), 1-3 param groups (float or tensor lrs), a number of steps, sometimes a resume with
``last_epoch``, a deprecated ``step(epoch)``, metrics for ReduceLROnPlateau and state_dict round
trips (into itself, through pickle, or crossed: torch's state into ours and ours into torch's).
Torch's scheduler runs on a ``torch.optim.SGD``, ours on a ``torchstep.optim.SGD``, in lockstep.
After construction and after every step the lrs, momentum / beta1, ``get_last_lr()`` and the
warnings given must agree (floats exactly or within 1e-12 relative), at every round trip the
state_dicts must hold the same keys and values, and where torch raises ours must raise the same
exception type at the same point. A configuration torch rejects is checked that way and redrawn.

CI runs a small fixed seed set; ``TORCHSTEP_FUZZ_SEEDS="0-2000"`` (or ``"3,17,40-60"``) runs more
and ``TORCHSTEP_FUZZ_REPORT=1`` prints the numbers of cases per class.
"""

from __future__ import annotations

import cmath
import copy
import math
import os
import pickle
import random
import types
import warnings
from typing import Any

import pytest
import torch
import torch.optim.lr_scheduler
import torch.optim.swa_utils
from .scheduler_draws import DRAWS, Case, draw_case  # tests/differential is a package (python -m tests.differential.optim_cases)

import torchstep.optim
import torchstep.optim.lr_scheduler
import torchstep.optim.swa_utils

LIBS = {
    "torch": (types.SimpleNamespace(**vars(torch.optim.lr_scheduler), SWALR=torch.optim.swa_utils.SWALR),
              torch.optim),
    "torchstep": (types.SimpleNamespace(**vars(torchstep.optim.lr_scheduler), SWALR=torchstep.optim.swa_utils.SWALR),
                  torchstep.optim),
}
REL = 1e-12
MAX_REDRAWS = 30


def seeds_from_env(default: str = "0-59") -> list[int]:
    spec = os.environ.get("TORCHSTEP_FUZZ_SEEDS", default)
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    return out


class Raised(Exception):
    """An action raised in one library: carries the exception type name."""


def value(x: Any) -> Any:
    return x.item() if isinstance(x, torch.Tensor) else x


def close(a: Any, b: Any) -> bool:
    a, b = value(a), value(b)
    if isinstance(a, (bool, str, type(None))) or isinstance(b, (bool, str, type(None))):
        return a == b
    if isinstance(a, complex) or isinstance(b, complex):
        return cmath.isclose(a, b, rel_tol=REL)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=REL, abs_tol=0.0)
    return True  # functions, objects: not compared by value


def same_type(a: Any, b: Any) -> bool:
    """A tensor lr stays a tensor, an int stays an int (torch keeps the group's value where it can)."""
    return type(a) is type(b) or (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor))


def state_difference(a: Any, b: Any, path: str = "state") -> str | None:
    """The first place two state_dicts differ in keys or in numeric values, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{path}: keys differ: torch-only {sorted(set(a) - set(b))}, ours-only {sorted(set(b) - set(a))}"
        for k in a:
            found = state_difference(a[k], b[k], f"{path}[{k!r}]")
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            found = state_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(a, (dict, list, tuple)) != isinstance(b, (dict, list, tuple)):
        return f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
        return f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape != b.shape:
        return f"{path}: tensor shapes {tuple(a.shape)} != {tuple(b.shape)}"
    return None if close(a, b) else f"{path}: torch {a!r} != torchstep {b!r}"


class Side:
    """One library's optimizer and scheduler for a case."""

    def __init__(self, lib: str, case: Case) -> None:
        self.lib, self.case = lib, case
        self.L, optim = LIBS[lib]
        groups = [{"params": [torch.nn.Parameter(torch.zeros(1))],
                   "lr": torch.tensor(lr, dtype=torch.float64) if t else lr}
                  for lr, t in zip(case.lrs, case.tensor_lr)]
        if case.optimizer == "Adam":
            self.opt = optim.Adam(groups, lr=0.1, betas=(case.momentum, 0.999))
        else:
            self.opt = optim.SGD(groups, lr=0.1, momentum=case.momentum)
        self.sched: Any = None

    def snapshot(self) -> list[Any]:
        out: list[Any] = []
        for g in self.opt.param_groups:
            out.append(g["lr"])
            out.append(g["betas"][0] if "betas" in g else g.get("momentum"))
        out.extend(self.sched.get_last_lr() if self.sched is not None else [])
        out.extend(self.__dict__.pop("direct", []))
        return out

    def step(self, i: int) -> None:
        self.opt.step()
        if self.case.kind == "ReduceLROnPlateau":
            self.sched.step(self.case.metrics[i], *([self.case.epochs[i]] if i in self.case.epochs else []))
        elif i in self.case.epochs:
            self.sched.step(self.case.epochs[i])
        else:
            self.sched.step()


def attempt(fn) -> tuple[Any, list[str]]:
    """Run ``fn``; return (its result or a Raised, the warning texts it gave)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 -- torch's exception type is the reference
            result = Raised(type(exc).__name__)
    return result, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


class Difference(AssertionError):
    pass


def lockstep(theirs: Side, ours: Side, where: str, action) -> bool:
    """Apply ``action`` to both sides and compare; False when both raised (the case ends there)."""
    a, wa = attempt(lambda: action(theirs))
    b, wb = attempt(lambda: action(ours))
    if isinstance(a, Raised) or isinstance(b, Raised):
        if not (isinstance(a, Raised) and isinstance(b, Raised) and a.args == b.args):
            raise Difference(f"{where}: torch -> {a!r}, torchstep -> {b!r}")
        return False
    if wa != wb:
        raise Difference(f"{where}: warnings differ\n  torch:     {wa}\n  torchstep: {wb}")
    sa, sb = theirs.snapshot(), ours.snapshot()
    if len(sa) != len(sb) or not all(close(x, y) and same_type(x, y) for x, y in zip(sa, sb)):
        raise Difference(f"{where}: torch {sa}\n  != torchstep {sb}")
    return True


def roundtrip(theirs: Side, ours: Side, i: int, how: str) -> bool:
    sa, sb = theirs.sched.state_dict(), ours.sched.state_dict()
    found = state_difference(sa, sb)
    if found:
        raise Difference(f"state_dict after step {i}: {found}")
    if how == "pickle":
        def load(side):
            side.sched.load_state_dict(pickle.loads(pickle.dumps(side.sched.state_dict())))
    elif how == "cross":
        crossed = {"torch": copy.deepcopy(sb), "torchstep": copy.deepcopy(sa)}

        def load(side):
            side.sched.load_state_dict(crossed[side.lib])
    else:
        def load(side):
            side.sched.load_state_dict(copy.deepcopy(side.sched.state_dict()))
    return lockstep(theirs, ours, f"load_state_dict ({how}) after step {i}", load)


def get_lr(side: Side) -> None:
    """A direct ``get_lr()`` call: its values go into ``_direct`` (compared with the snapshot)."""
    side.direct = side.sched.get_lr()


def construct(theirs: Side, ours: Side) -> bool:
    """Build both schedulers (after a fresh run of ``resume + 1`` steps when resuming)."""
    case = theirs.case

    def build(last_epoch):
        def act(side):
            side.sched = case.build(side.L, side.opt, last_epoch)
        return act

    if case.resume < 0:
        return lockstep(theirs, ours, "construction", build(-1))
    if not lockstep(theirs, ours, "construction before resume", build(-1)):
        return False
    for i in range(case.resume + 1):
        if not lockstep(theirs, ours, f"pre-resume step {i}", lambda side: side.step(i)):
            return False
    return lockstep(theirs, ours, f"construction with last_epoch={case.resume}", build(case.resume))


def run_case(case: Case) -> bool:
    """Compare one case; True when torch accepted the configuration (constructed it)."""
    theirs, ours = Side("torch", case), Side("torchstep", case)
    if not construct(theirs, ours):
        return False
    for i in range(case.steps):
        if not lockstep(theirs, ours, f"step {i}", lambda side: side.step(i)):
            return True
        if i in case.get_lr_at and not lockstep(theirs, ours, f"get_lr() after step {i}", get_lr):
            return True
        if i in case.roundtrip and not roundtrip(theirs, ours, i, case.roundtrip[i]):
            return True
    found = state_difference(theirs.sched.state_dict(), ours.sched.state_dict())
    if found:
        raise Difference(f"final state_dict: {found}")
    return True


def fuzz(kind: str, seeds: list[int]) -> tuple[int, int, list[str]]:
    """(accepted cases, rejected configurations, failures) over ``seeds``."""
    accepted = rejected = 0
    failures: list[str] = []
    for seed in seeds:
        rng = random.Random(f"{kind}:{seed}")
        for _ in range(MAX_REDRAWS):
            case = draw_case(kind, rng)
            try:
                ok = run_case(case)
            except Difference as diff:
                failures.append(f"seed {seed}: {case.text} {case.optimizer} lrs={case.lrs} tensor={case.tensor_lr} "
                                f"resume={case.resume} steps={case.steps} epochs={case.epochs} "
                                f"roundtrip={case.roundtrip}\n  {diff}")
                break
            if ok:
                accepted += 1
                break
            rejected += 1
    return accepted, rejected, failures


@pytest.mark.parametrize("kind", sorted(DRAWS))
def test_scheduler_matches_torch(kind):
    seeds = seeds_from_env()
    accepted, rejected, failures = fuzz(kind, seeds)
    if os.environ.get("TORCHSTEP_FUZZ_REPORT"):
        print(f"\n{kind}: {len(seeds)} seeds, {accepted} cases run, {rejected} rejected configurations "
              f"compared, {len(failures)} differences")
    assert not failures, f"{len(failures)} of {len(seeds)} seeds differ from torch:\n" + "\n".join(failures[:5])
    assert accepted >= len(seeds) * 0.9, f"only {accepted} of {len(seeds)} seeds drew a configuration torch accepts"
