"""Differential fuzzer: torchstep.optim against torch.optim 2.13, one seeded random case at a time.

A *case* is ``(cls, seed)``. From it a ``random.Random`` draws, for that optimizer class:

- constructor options from every keyword torch's signature has (tensor ``lr`` / ``betas`` /
  ``weight_decay`` where torch takes them, every implementation switch: ``foreach``, ``fused``,
  ``capturable``, ``differentiable``; ordinary, edge (0, tiny, large) and -- rarely -- invalid
  values);
- 1-3 parameter groups, each with its own options and extra user keys, 1-3 parameters per group
  with shapes such as ``()``, ``(0,)``, ``(0, 3)``, ``(1,)``, ``(7,)``, ``(3, 5)``, ``(2, 3, 4)``
  and float32/float64 mixed within a group; sometimes named parameters, sometimes a parameter
  listed twice;
- a gradient stream: per step and parameter a seeded random gradient (dense, or sparse COO with
  duplicate indices where torch takes sparse gradients), all zeros, ``None``, or the gradient left
  as it is; sometimes (LBFGS always) a closure ``loss = sum(c*p + p*p/2)`` whose returned loss is
  compared;
- events between steps: lr changed by hand, another option changed, ``add_param_group``,
  ``zero_grad``, and a state *swap*: torch's ``state_dict()`` goes through
  ``torch.save``/``torch.load(weights_only=True)`` into ours and ours into torch, then training
  continues.

If torch rejects the drawn configuration at construction, ours must raise the same exception type;
the configuration is then re-drawn (``attempt`` counts the draws). If torch raises at ``step()``,
ours must raise the same type there, and the case ends.

After every step (and every swap) the runner compares, against torch, the return value, every
parameter, every ``.grad`` and the whole ``state_dict()``: the set of entries, each value's type,
each tensor's layout, dtype and shape, and the values. ``param_groups`` entries must be equal
exactly (they are hyperparameters, not results), and so are ints, bools, strings and the ``step``
counters.

Tolerance rule (floating-point values)
--------------------------------------
torch itself has several code paths for one configuration and they round differently. For every
case torch runs the configuration as drawn (the *primary*) and, besides, with ``foreach=False``,
``foreach=True`` and ``fused=True`` (where the class has the switch and torch accepts the
combination); all get the same initial parameters and the same gradient stream. A value of ours
``o_i`` (element ``i`` of an entry) matches if it is equal to some torch path's value (NaN matching
NaN, infinities by sign) or lies in the envelope of the finite torch values widened by a few ulps::

    min_paths(t_i) - tol_i  <=  o_i  <=  max_paths(t_i) + tol_i
    tol_i = spread_i + ULPS * eps(dtype) * n * (|t_i| + rms(t) + rms_prev)
    spread_i = max_paths(t_i) - min_paths(t_i)

with ``ULPS = 4``, ``eps`` the machine epsilon of the entry's dtype (float32 for Python floats in
the state), ``n`` the number of updates so far (steps taken, times ``max_iter`` for LBFGS), ``t``
the primary's whole tensor (``rms`` over its finite elements) and ``rms_prev`` the largest rms the
same entry had at earlier comparisons (so a value that cancels to near zero keeps the scale of its
inputs: a rounding error made while a parameter was at 30 stays there after it returns to 1).
The spread between torch's own paths therefore sets the tolerance where torch disagrees with
itself (the envelope is widened by its own width once), and only a few ulps per step where it does
not. Other paths count by value even where their dtype differs from the primary's (a path that has
not been through a load keeps float32 scalar state where a loaded one has the param's dtype); the
dtype itself is checked against the primary. After a swap, the primary goes on from ours' state and
a clone of the primary from torch's own state, so ours (now on torch's path) still has a torch path
to match.

Deliberate differences documented in README.md ("Known differences from torch") are honoured, not
hidden: ``capturable=True`` on CPU runs the default path in torchstep, so the torch oracle runs
with ``capturable=False`` (and ``param_groups`` must still show the drawn ``capturable``); an
argument torch only trips over at the first step may be rejected by ours at construction with the
same exception type; the few values README lists as rejected by ours although torch accepts them
(LBFGS ``history_size < 1`` and negative tolerances, Muon ``eps < 0``) count as rejections.

Reproduce one case: ``python -m tests.differential.optim_cases --seed N --cls Adam`` (``-v`` prints
every step). Campaign: ``--seeds 0-2000 --cls all`` prints failures grouped by signature.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import inspect
import io
import math
import pprint
import random
import sys
import time
import warnings
import zlib
from typing import Any

import torch

import torchstep.optim as ts_optim
from torchstep.backends import dispatch

CLASSES = ["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "RMSprop", "SparseAdam", "Adamax", "NAdam",
           "RAdam", "ASGD", "Rprop", "LBFGS", "Adafactor", "Muon"]
FUSED = {"SGD", "Adam", "AdamW", "Adagrad"}  # torch's CPU fused kernels
SPARSE_OK = {"SGD", "Adagrad", "SparseAdam"}
IMPL_KEYS = ("foreach", "fused", "capturable", "differentiable")
ULPS = 4
MAX_ATTEMPTS = 40

T = torch.tensor


def _t64(v):
    return torch.tensor(v, dtype=torch.float64)


# -- option pools: (normal, edge, invalid) per keyword ---------------------------------------------
# drawn 75 % / 21 % / 4 % (an empty pool is skipped)

_LR = ([1e-3, 1e-2, 0.1], [0.0, 1e-30, 3.0, lambda: T(0.01), lambda: T([0.05]), lambda: _t64(0.02)],
       [-1.0, float("nan"), lambda: T([0.1, 0.2])])
_WD = ([0.0, 0.01, 0.1], [1e-30, 5.0], [-0.1])
_EPS = ([1e-8, 1e-3], [0.0, 1e-30, 1.0], [-1e-8])
_BOOL = ([False, True], [], [])
_BETAS = ([(0.9, 0.999), (0.8, 0.99)], [(0.0, 0.0), (0.0, 0.999), (0.9, 0.9), (0.5, 0.5)],
          [(1.0, 0.999), (0.9, -0.1), (-0.1, 0.999), (0.9, 1.5)])
_TBETAS = (_BETAS[0], _BETAS[1] + [lambda: (T(0.9), T(0.999)), lambda: (T([0.8]), T(0.99))],
           _BETAS[2] + [lambda: (T(0.9), 0.999), lambda: (T([0.9, 0.8]), T(0.99))])
_FOREACH = ([None, False, True], [], [])
_FUSED = ([None, None, False, True], [], [])
_CAPT = ([False, False, True], [], [])
_DIFF = ([False] * 12 + [True], [], [])

SPECS: dict[str, dict[str, tuple]] = {
    "SGD": dict(lr=_LR, momentum=([0.0, 0.9, 0.5], [1.0, 1e-30], [-0.5]), dampening=([0.0, 0.1], [1.0], []),
                weight_decay=(_WD[0], _WD[1] + [lambda: T(0.01)], _WD[2]), nesterov=_BOOL, maximize=_BOOL,
                foreach=_FOREACH, differentiable=_DIFF, fused=_FUSED),
    "Adam": dict(lr=_LR, betas=_TBETAS, eps=_EPS, weight_decay=_WD, amsgrad=_BOOL, foreach=_FOREACH,
                 maximize=_BOOL, capturable=_CAPT, differentiable=_DIFF, fused=_FUSED,
                 decoupled_weight_decay=_BOOL),
    "AdamW": dict(lr=_LR, betas=_TBETAS, eps=_EPS, weight_decay=_WD, amsgrad=_BOOL, maximize=_BOOL,
                  foreach=_FOREACH, capturable=_CAPT, differentiable=_DIFF, fused=_FUSED),
    "Adagrad": dict(lr=_LR, lr_decay=([0.0, 0.05], [10.0], [-1.0]),
                    weight_decay=_WD, initial_accumulator_value=([0.0, 0.5], [1e-30], [-1.0]),
                    eps=([1e-10, 1e-3], [0.0], [-1e-10]), foreach=_FOREACH, maximize=_BOOL,
                    differentiable=_DIFF, fused=_FUSED),
    "Adadelta": dict(lr=_LR, rho=([0.9, 0.5], [0.0, 1.0], [1.5, -0.1]), eps=([1e-6, 1e-3], [1e-30], [-1e-6]),
                     weight_decay=_WD, foreach=_FOREACH, capturable=_CAPT, maximize=_BOOL, differentiable=_DIFF),
    "RMSprop": dict(lr=_LR, alpha=([0.99, 0.9], [0.0, 1.0], [-0.1]), eps=_EPS, weight_decay=_WD,
                    momentum=([0.0, 0.9], [1e-30], [-0.1]), centered=_BOOL, capturable=_CAPT,
                    foreach=_FOREACH, maximize=_BOOL, differentiable=_DIFF),
    "SparseAdam": dict(lr=(_LR[0], [1e-30, 3.0, lambda: T(0.01)], [0.0, -1.0, lambda: T([0.1, 0.2])]),
                       betas=_BETAS, eps=([1e-8, 1e-3], [1e-30], [0.0]), maximize=_BOOL),
    "Adamax": dict(lr=_LR, betas=_BETAS, eps=_EPS, weight_decay=_WD, foreach=_FOREACH, maximize=_BOOL,
                   differentiable=_DIFF, capturable=_CAPT),
    "NAdam": dict(lr=_LR, betas=_BETAS, eps=_EPS, weight_decay=_WD, momentum_decay=([4e-3, 0.2], [0.0], [-1e-3]),
                  decoupled_weight_decay=_BOOL, foreach=_FOREACH, maximize=_BOOL, capturable=_CAPT,
                  differentiable=_DIFF),
    "RAdam": dict(lr=_LR, betas=_BETAS, eps=_EPS, weight_decay=_WD, decoupled_weight_decay=_BOOL,
                  foreach=_FOREACH, maximize=_BOOL, capturable=_CAPT, differentiable=_DIFF),
    "ASGD": dict(lr=_LR, lambd=([1e-4, 0.5], [0.0], []), alpha=([0.75, 1.0, 0.5], [0.0], []),
                 t0=([1e6, 2.0, 5.5], [0.0], []), weight_decay=_WD, foreach=_FOREACH, maximize=_BOOL,
                 differentiable=_DIFF, capturable=_CAPT),
    "Rprop": dict(lr=_LR, etas=([(0.5, 1.2), (0.3, 1.5)], [(1e-30, 1e30)], [(1.5, 2.0), (0.0, 1.2), (0.5, 1.0)]),
                  step_sizes=([(1e-6, 50), (2e-3, 0.02)], [(0.0, 1e30)], []), capturable=_CAPT,
                  foreach=_FOREACH, maximize=_BOOL, differentiable=_DIFF),
    "LBFGS": dict(lr=([1, 0.5, 0.1], [lambda: T(0.5), 1e-30], [-1.0, lambda: T([0.1, 0.2])]),
                  max_iter=([1, 2, 3, 5], [], []), max_eval=([None, 2, 10], [1], []),
                  tolerance_grad=([1e-7, 1e-2], [0.0], []), tolerance_change=([1e-9, 1e-3], [0.0], []),
                  history_size=([100, 2, 5], [1], [0]), line_search_fn=([None, "strong_wolfe"], [], ["bogus"])),
    "Adafactor": dict(lr=_LR, beta2_decay=([-0.8, -0.5], [0.0], [0.5]),
                      eps=([(None, 1e-3), (1e-30, 1e-3)], [(None, 0.0), (1e-3, 1.0)], [(-1.0, 1e-3), (None, -1.0)]),
                      d=([1.0, 2.0], [1e30], [0.5]), weight_decay=_WD, foreach=_FOREACH, maximize=_BOOL),
    "Muon": dict(lr=([1e-3, 1e-2], [0.0, lambda: T(0.01)], [-1.0]), weight_decay=([0.1, 0.0, 0.01], [5.0], [-0.1]),
                 momentum=([0.95, 0.9, 0.0], [1.0], [-1.0]), nesterov=_BOOL,
                 ns_coefficients=([(3.4445, -4.775, 2.0315), (2.0, -1.5, 0.5)], [], [(1.0, 2.0)]),
                 eps=([1e-7, 1e-3], [0.0], []), ns_steps=([5, 1, 3], [0], []),
                 adjust_lr_fn=([None, "original", "match_rms_adamw"], [], ["bogus"])),
}

SHAPES = [(), (1,), (7,), (3, 5), (2, 3, 4), (4,), (1, 1)]
SHAPES_2D = [(3, 5), (1, 1), (4, 4), (5, 2), (2, 7)]
EMPTY = [(0,), (0, 3)]  # zero-element parameters, drawn with probability P_EMPTY per parameter
P_EMPTY = 0.06


def _draw(rng: random.Random, pools: tuple, allow_invalid: bool = True):
    normal, edge, invalid = pools
    r = rng.random()
    pool = normal if (r < 0.75 or not edge) else edge
    if allow_invalid and invalid and rng.random() < 0.04:
        pool = invalid
    v = rng.choice(pool)
    return v() if callable(v) else v


def _materialise(v):
    """Option values are stored as data (callables for tensors) in the config and built fresh per
    optimizer, so no tensor hyperparameter is shared between the twins."""
    return copy.deepcopy(v)


# -- the drawn configuration ----------------------------------------------------------------------

@dataclasses.dataclass
class Config:
    cls: str
    seed: int
    attempt: int
    defaults: dict
    groups: list  # [{"params": [param index, ...], "options": {...}, "extra": {...}}]
    params: list  # [(shape, dtype name, grad scale)]
    named: bool
    as_plain_list: bool
    sparse: bool
    closure: bool
    steps: int
    events: dict  # step -> event dict
    grad_kinds: dict  # (step, param) -> "value" | "zero" | "none" | "keep"

    def describe(self) -> str:
        d = dataclasses.asdict(self)
        d["grad_kinds"] = {k: v for k, v in self.grad_kinds.items() if v != "value"}
        return pprint.pformat(d, width=110, compact=True)


def _draw_param(rng, cls, idx_list, params):
    # torch's Adafactor divides by sqrt(numel) (ZeroDivisionError on an empty parameter, as ours):
    # drawn rarely there, so the rest of the case is exercised
    if rng.random() < (P_EMPTY / 4 if cls == "Adafactor" else P_EMPTY):
        shape = rng.choice(EMPTY[1:] if cls == "Muon" else EMPTY)
    elif cls == "Muon":
        shape = rng.choice(SHAPES_2D) if rng.random() > 0.03 else rng.choice([(), (7,), (2, 3, 4)])
    elif cls == "SparseAdam":
        shape = rng.choice([s for s in SHAPES if len(s) >= 1]) if rng.random() > 0.03 else ()
    else:
        shape = rng.choice(SHAPES)
    dtype = rng.choice(["float32", "float64"])
    scale = rng.choice([1.0, 1.0, 1.0, 1e-3, 1e3])
    params.append((shape, dtype, scale))
    idx_list.append(len(params) - 1)


def _draw_group_options(rng, cls, n_max=2, exclude=()):
    spec = SPECS[cls]
    keys = [k for k in spec if k not in exclude]
    opts = {}
    for k in rng.sample(keys, rng.randint(0, min(n_max, len(keys)))):
        opts[k] = _draw(rng, spec[k], allow_invalid=rng.random() < 0.3)
    return opts


def draw_config(cls: str, seed: int, attempt: int = 0) -> Config:
    rng = random.Random(f"{cls}/{seed}/{attempt}")
    spec = SPECS[cls]
    defaults = {}
    for k, pools in spec.items():
        if rng.random() < 0.5:
            defaults[k] = _draw(rng, pools)
    params: list = []
    n_groups = 1 if (cls == "LBFGS" and rng.random() < 0.93) else rng.randint(1, 3)
    groups = []
    for gi in range(n_groups):
        idx: list = []
        for _ in range(rng.randint(1, 3)):
            _draw_param(rng, cls, idx, params)
        if rng.random() < 0.02:
            idx.append(idx[0])  # the same parameter twice in one group
        options = _draw_group_options(rng, cls) if (n_groups > 1 or rng.random() < 0.3) else {}
        extra = {}
        if rng.random() < 0.3:
            extra = rng.choice([{"name": f"group{gi}"}, {"tag": "decay", "scale": 0.5}, {"layer": gi, "frozen": False}])
        groups.append({"params": idx, "options": options, "extra": extra})
    named = rng.random() < 0.2
    as_plain_list = n_groups == 1 and not groups[0]["options"] and not groups[0]["extra"] and rng.random() < 0.5
    sparse = rng.random() < {"SparseAdam": 0.95, "SGD": 0.3, "Adagrad": 0.3}.get(cls, 0.02)
    closure = cls == "LBFGS" or (not sparse and rng.random() < 0.25)
    steps = rng.randint(3, 8)
    events: dict = {}
    for s in range(1, steps):
        if rng.random() < 0.3:
            kind = rng.choice(["lr", "option", "add_param_group", "swap", "swap", "zero_grad"])
            ev: dict = {"kind": kind}
            if kind == "lr":
                ev["group"] = rng.randrange(64)
                ev["value"] = rng.choice([1e-3, 0.05, 0.0, 0.3])
            elif kind == "option":
                ev["group"] = rng.randrange(64)
                key = rng.choice([k for k in spec if k not in IMPL_KEYS and k != "lr"])
                ev["key"], ev["value"] = key, _draw(rng, (spec[key][0], [], []))
            elif kind == "add_param_group":
                idx = []
                for _ in range(rng.randint(1, 2)):
                    _draw_param(rng, cls, idx, params)
                ev["group"] = {"params": idx, "options": _draw_group_options(rng, cls, exclude=IMPL_KEYS),
                               "extra": {"added_at": s} if rng.random() < 0.5 else {}}
            elif kind == "zero_grad":
                ev["set_to_none"] = rng.random() < 0.5
            events[s] = ev
    grad_kinds = {}
    for s in range(steps):
        for i in range(len(params)):
            r = rng.random()
            grad_kinds[(s, i)] = "none" if r < 0.08 else "zero" if r < 0.14 else "keep" if r < 0.18 else "value"
    return Config(cls, seed, attempt, defaults, groups, params, named, as_plain_list, sparse, closure, steps,
                  events, grad_kinds)


# -- building optimizers --------------------------------------------------------------------------

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _param_value(cfg: Config, i: int) -> torch.Tensor:
    shape, dtype, _ = cfg.params[i]
    gen = torch.Generator().manual_seed(zlib.crc32(f"p/{cfg.cls}/{cfg.seed}/{cfg.attempt}/{i}".encode()))
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(_DTYPES[dtype])


def _grad_value(cfg: Config, step: int, i: int, shape) -> torch.Tensor:
    """The stream's gradient for parameter ``i`` at ``step`` (dense, or sparse COO with possibly
    repeated, unsorted row indices)."""
    _, dtype, scale = cfg.params[i]
    dtype = _DTYPES[dtype]
    gen = torch.Generator().manual_seed(zlib.crc32(f"g/{cfg.cls}/{cfg.seed}/{cfg.attempt}/{step}/{i}".encode()))
    if cfg.sparse and len(shape) >= 1 and shape[0] > 0:
        nnz = int(torch.randint(1, shape[0] + 2, (1,), generator=gen))
        rows = torch.randint(0, shape[0], (1, nnz), generator=gen)
        vals = (torch.randn((nnz, *shape[1:]), generator=gen, dtype=torch.float64) * scale).to(dtype)
        return torch.sparse_coo_tensor(rows, vals, shape)
    if cfg.sparse and len(shape) >= 1:
        return torch.sparse_coo_tensor(torch.zeros((1, 0), dtype=torch.long), torch.zeros((0, *shape[1:]), dtype=dtype), shape)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def _with_impl(options: dict, impl: dict | None) -> dict:
    out = {k: _materialise(v) for k, v in options.items()}
    if impl is not None:
        for k in ("foreach", "fused"):
            out.pop(k, None)
        out.update(impl)
    return out


def _oracle_options(options: dict, forloop: bool = False) -> dict:
    """README: capturable=True on CPU runs the default path in torchstep; torch raises. The oracle
    runs capturable=False; where torch refuses that combination (a tensor lr/betas with
    foreach=True is only allowed with capturable=True), the for-loop path, which torchstep follows."""
    out = {k: (False if k == "capturable" else v) for k, v in options.items()}
    if forloop and "foreach" in out:
        out["foreach"] = False
    return out


def _standin(drawn: dict) -> dict:
    """The flags the for-loop oracle runs for options ``drawn`` (defaults merged with a group's own)
    that ask for ``capturable=True``. torch's multi-tensor path refuses ``differentiable=True``
    with an AssertionError before it looks at anything capturable does; such a group keeps its
    drawn flags, so torch raises that itself. Any other such group runs the for-loop stand-in."""
    if not drawn.get("capturable"):
        return {}
    autograd = bool(drawn.get("foreach") and drawn.get("differentiable"))
    out = {"capturable": autograd}
    if "foreach" in drawn:
        out["foreach"] = autograd
    return out


def _capturable_drawn(cfg) -> bool:
    return any(o.get("capturable") for o in [cfg.defaults] + [g["options"] for g in cfg.groups])


class Twin:
    """One optimizer instance and its own copy of the parameters."""

    def __init__(self, lib, cfg: Config, impl: dict | None, oracle: bool, forloop: bool = False):
        self.cfg, self.impl, self.oracle, self.forloop = cfg, impl, oracle, forloop
        self.lib = lib
        self.tensors: dict[int, torch.Tensor] = {}
        groups = [self._group_arg(g) for g in cfg.groups]
        params_arg: Any = groups
        if cfg.as_plain_list:
            params_arg = groups[0]["params"]
        defaults = _with_impl(cfg.defaults, impl if impl is not None else None)
        if oracle:
            defaults = _oracle_options(defaults, forloop and bool(cfg.defaults.get("capturable")))
            if forloop and impl is None:
                defaults.update(_standin(cfg.defaults))
        self.opt = getattr(lib, cfg.cls)(params_arg, **defaults)

    def _tensor(self, i):
        if i not in self.tensors:
            self.tensors[i] = _param_value(self.cfg, i).requires_grad_()
        return self.tensors[i]

    def _group_arg(self, g):
        ps = [self._tensor(i) for i in g["params"]]
        if self.cfg.named:
            ps = [(f"p{i}", p) for i, p in zip(g["params"], ps)]
        opts = _with_impl(g["options"], {} if self.impl is not None else None)
        if self.oracle:
            # the for-loop path only for a group that asked for capturable=True (where torch would
            # refuse its tensor lr/betas with foreach=True); any other group keeps its foreach
            capturable = g["options"].get("capturable", self.cfg.defaults.get("capturable", False))
            opts = _oracle_options(opts, self.forloop and bool(capturable))
            if (self.forloop and not capturable and self.impl is None and "foreach" not in opts
                    and "foreach" in self.cfg.defaults and self.cfg.defaults.get("capturable")):
                opts["foreach"] = self.cfg.defaults["foreach"]
            if self.forloop and self.impl is None:
                opts.update(_standin({**self.cfg.defaults, **g["options"]}))
        return {"params": ps, **opts, **copy.deepcopy(g["extra"])}

    def add_group(self, g):
        self.opt.add_param_group(self._group_arg(g))

    def order(self):
        """Parameter indices in the optimizer's order (each once)."""
        seen = []
        for g in self.cfg.groups:
            for i in g["params"]:
                if i not in seen:
                    seen.append(i)
        return seen


# -- flattening and comparing ---------------------------------------------------------------------

def _flatten(obj, path, out):
    if isinstance(obj, dict):
        out[path] = ("dict", sorted(map(repr, obj)))
        for k, v in obj.items():
            _flatten(v, path + (k,), out)
    elif isinstance(obj, (list, tuple)):
        out[path] = (type(obj).__name__, len(obj))
        for i, v in enumerate(obj):
            _flatten(v, path + (i,), out)
    else:
        out[path] = obj


def snapshot(tw: Twin, ret, tracked: list[int]) -> dict:
    out: dict = {}
    _flatten(ret, ("return",), out)
    for i in tracked:
        p = tw.tensors[i]
        out[("param", i)] = p.detach()
        out[("grad", i)] = p.grad
    _flatten(tw.opt.state_dict(), ("state_dict",), out)
    return out


def _kind(v):
    if isinstance(v, torch.Tensor):
        return ("Tensor", str(v.layout), str(v.dtype), tuple(v.shape))
    if isinstance(v, tuple) and len(v) == 2 and v[0] in ("dict", "list", "tuple"):
        return v
    return (type(v).__name__,)


def _fmt(v, limit=300):
    if isinstance(v, torch.Tensor):
        d = v.detach()
        if d.layout != torch.strided:
            d = d.to_dense()
        s = f"tensor(shape={tuple(v.shape)}, dtype={v.dtype}, layout={v.layout}, values={d.flatten()[:8].tolist()})"
    else:
        s = repr(v)
    return s if len(s) <= limit else s[:limit] + "..."


@dataclasses.dataclass
class Difference(Exception):
    kind: str       # signature part for grouping
    where: str      # entry path
    detail: str

    def __str__(self):
        return f"{self.kind} at {self.where}: {self.detail}"


def _path_str(path):
    return ".".join(str(p) for p in path)


def _sig_path(path):
    """The entry path with parameter / group indices folded, for grouping failures."""
    out = []
    for i, p in enumerate(path):
        if isinstance(p, int) and (i == 0 or path[i - 1] in ("state", "param_groups", "params", "param_names", "param", "grad")):
            out.append("*")
        else:
            out.append(str(p))
    return ".".join(out)


class Scales:
    def __init__(self):
        self.prev: dict = {}


def _dense64(v: torch.Tensor) -> torch.Tensor:
    v = v.detach()
    if v.layout != torch.strided:
        v = v.to_dense()
    return v.to(torch.float64) if v.is_floating_point() else v


def _cancellation(cfg: Config) -> float:
    """1 / (1 - beta) for the largest beta drawn: how much rounding ``beta`` to float32 grows in
    ``1 - beta**t`` (torch's differentiable path computes its bias corrections in float32)."""
    betas = [float(b) for o in [cfg.defaults] + [g["options"] for g in cfg.groups]
             for b in (o.get("betas") or ()) if isinstance(b, (int, float, torch.Tensor)) and float(b) < 1]
    return 1.0 / (1.0 - max(betas, default=0.9))


def _close(path, ref, others, ours, eps, n, scales: Scales):
    """True if ``ours`` matches a torch path or lies in their envelope widened by the rule's tol."""
    r = _dense64(ref)
    o = _dense64(ours)
    if not r.is_floating_point():
        return torch.equal(r, o), None
    P = torch.stack([r] + [_dense64(x) for x in others]) if r.numel() else r.unsqueeze(0)
    if r.numel() == 0:
        return True, None
    exact = ((P == o) | (torch.isnan(P) & torch.isnan(o))).any(0)
    fin = torch.isfinite(P)
    lo = torch.where(fin, P, torch.full_like(P, math.inf)).min(0).values
    hi = torch.where(fin, P, torch.full_like(P, -math.inf)).max(0).values
    rf = torch.where(torch.isfinite(r), r, torch.zeros_like(r))
    rms = float(rf.square().mean().sqrt())
    key = _sig_path(path)
    prev = scales.prev.get(path, 0.0)
    scales.prev[path] = max(prev, rms)  # an error made at a large scale outlives the scale
    spread = torch.where(torch.isfinite(hi - lo), hi - lo, torch.zeros_like(lo))
    tol = spread + ULPS * eps * n * (rf.abs() + rms + prev)
    ok = exact | (torch.isfinite(o) & (o >= lo - tol) & (o <= hi + tol))
    if bool(ok.all()):
        return True, None
    j = int((~ok).flatten().nonzero()[0])
    return False, (f"element {j}: torch={r.flatten()[j].item()!r} (paths {[float(x) for x in P.reshape(P.shape[0], -1)[:, j]]}) "
                   f"ours={o.flatten()[j].item()!r} tol={float(tol.flatten()[j]):.3g}; {key}")


def compare(ref: dict, ours: dict, others: list[dict], cfg: Config, n: int, scales: Scales, expect_groups):
    missing = [p for p in ref if p not in ours]
    extra = [p for p in ours if p not in ref]
    if missing or extra:
        # report the shortest (outermost) path first
        first = min(missing + extra, key=lambda p: (len(p), str(p)))
        which = "missing in ours" if first in missing else "extra in ours"
        v = ref.get(first, ours.get(first))
        raise Difference(f"entry {which}", _path_str(first), f"{_sig_path(first)} = {_fmt(v)}")
    eps32 = torch.finfo(torch.float32).eps
    # README: with differentiable=True torchstep computes Adam's, AdamW's and NAdam's bias
    # corrections in double where torch's differentiable path rounds them to float32
    widen = cfg.cls in ("Adam", "AdamW", "NAdam") and any(
        o.get("differentiable") for o in [cfg.defaults] + [g["options"] for g in cfg.groups])
    for path, r in ref.items():
        o = ours[path]
        if path and path[0] == "state_dict" and len(path) >= 4 and path[1] == "param_groups" \
                and path[3] in IMPL_KEYS and expect_groups is not None:
            # the oracle ran with capturable=False; ours must show what was asked for
            r = expect_groups(path[2], path[3], r)
        kr, ko = _kind(r), _kind(o)
        if kr != ko:
            if kr[0] == ko[0] == "dict":
                raise Difference("dict keys differ", _path_str(path), f"torch {kr[1]} ours {ko[1]}")
            raise Difference("type/dtype/shape differs", _path_str(path),
                             f"{_sig_path(path)}: torch {kr} ours {ko}; torch={_fmt(r)} ours={_fmt(o)}")
        if isinstance(r, tuple) and kr == r:
            continue
        in_groups = len(path) >= 2 and path[0] == "state_dict" and path[1] == "param_groups"
        exact = in_groups or (path[-1] == "step") or isinstance(r, (bool, int, str, type(None)))
        if isinstance(r, torch.Tensor):
            if widen and r.is_floating_point():
                # 1 - beta**t rounded to float32 loses log10(1 / (1 - beta)) digits to cancellation
                eps_floor = torch.finfo(torch.float32).eps * _cancellation(cfg)
            else:
                eps_floor = 0.0
            if path == ("return",) and r.is_floating_point():
                r, o = r.detach(), o.detach()
                eps = max(torch.finfo(_DTYPES[d]).eps for _, d, _ in cfg.params)
                ok, msg = _close(path, r, [x[path] for x in others if _kind(x.get(path)) == kr], o, eps, n, scales)
                if not ok:
                    raise Difference("value differs", _path_str(path), msg)
                continue
            if exact:
                rr, oo = _dense64(r), _dense64(o)
                same = torch.equal(rr, oo) or bool(((rr == oo) | (torch.isnan(rr) & torch.isnan(oo))).all())
                if not same:
                    raise Difference("value differs (exact entry)", _path_str(path), f"torch={_fmt(r)} ours={_fmt(o)}")
                continue
            # other torch paths count by value (a path that has not been through a load keeps
            # e.g. its float32 scalar state where the loaded one has the param's dtype)
            alts = [x[path] for x in others if path in x and isinstance(x[path], torch.Tensor)
                    and x[path].shape == r.shape and x[path].layout == r.layout]
            eps = max(torch.finfo(r.dtype).eps, eps_floor) if r.is_floating_point() else 0.0
            ok, msg = _close(path, r, alts, o, eps, n, scales)
            if not ok:
                raise Difference("value differs", _path_str(path), msg)
        elif isinstance(r, float) and not exact:
            alts = [x[path] for x in others if path in x and isinstance(x[path], float)]
            ok, msg = _close(path, T(r, dtype=torch.float64), [T(a, dtype=torch.float64) for a in alts],
                             T(o, dtype=torch.float64), eps32, n, scales)
            if not ok:
                raise Difference("value differs", _path_str(path), msg)
        else:
            if not (r == o or (isinstance(r, float) and math.isnan(r) and math.isnan(o))):
                raise Difference("value differs (exact entry)", _path_str(path), f"{_sig_path(path)}: torch={_fmt(r)} ours={_fmt(o)}")


# -- running one case -----------------------------------------------------------------------------

def _through_disk(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@dataclasses.dataclass
class Outcome:
    cls: str
    seed: int
    status: str               # "pass" | "fail"
    note: str = ""            # how the case ended
    attempts: int = 1
    config: Config | None = None
    step: int | None = None
    signature: str = ""
    message: str = ""

    @property
    def tags(self) -> str:
        """Case features that explain many differences at once (for grouping, not for hiding)."""
        c = self.config
        if c is None:
            return ""
        t = []
        if any(len(set(g["params"])) < len(g["params"]) for g in c.groups):
            t.append("dup")
        if any(0 in c.params[i][0] for g in c.groups for i in g["params"]):
            t.append("empty")
        if c.sparse:
            t.append("sparse")
        past = [e for s, e in c.events.items() if self.step is not None and s <= self.step]
        if any(e["kind"] == "swap" for e in past):
            t.append("after-swap")
        if any(e["kind"] == "option" for e in past):
            t.append("option-changed")
        if any(e["kind"] == "add_param_group" for e in past):
            t.append("added-group")
        return "[" + ",".join(t) + "]" if t else ""

    def report(self) -> str:
        return (f"optimizer fuzz difference: seed={self.seed} cls={self.cls} attempt={self.config.attempt if self.config else '?'}"
                f" step={self.step}\n{self.message}\nconfig:\n{self.config.describe() if self.config else ''}\n"
                f"reproduce: python -m tests.differential.optim_cases --seed {self.seed} --cls {self.cls} -v")


def _try(fn):
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - we compare exception types with torch's
        return None, e


def _documented_early_rejection(cfg: Config, err: Exception) -> bool:
    """README 'Known differences': values torch accepts (or trips over only at a later step) but
    torchstep rejects at construction -- "Arguments torch only trips over at the first step
    (LBFGS ``line_search_fn`` and ``history_size`` ...) are rejected at construction, with the
    exception type torch raises at the step": ``history_size < 1`` is torch's IndexError at the
    second iteration (so a step of one iteration runs in torch)."""
    allopts = [cfg.defaults] + [g["options"] for g in cfg.groups]
    for o in allopts:
        if cfg.cls == "LBFGS":
            if o.get("history_size", 1) < 1 and isinstance(err, IndexError):
                return True
            if (o.get("tolerance_grad", 0) < 0 or o.get("tolerance_change", 0) < 0) and isinstance(err, ValueError):
                return True
        if cfg.cls == "Muon" and o.get("eps", 0) < 0 and isinstance(err, ValueError):
            return True
        coefficients = o.get("ns_coefficients")
        if cfg.cls == "Muon" and isinstance(coefficients, (tuple, list)) and len(coefficients) != 3 \
                and isinstance(err, ValueError):  # README: Muon's ns_coefficients rejected at construction
            return True
    return False


def _fused_sgd_late_buffer(cfg: Config, err: Exception) -> bool:
    """README 'Known differences': torch's fused SGD with momentum raises TypeError when a
    parameter gets its first gradient after others of its group already have momentum buffers
    (its buffer list then holds None); torchstep creates that buffer and steps."""
    fused = any(o.get("fused") for o in [cfg.defaults] + [g["options"] for g in cfg.groups])
    return cfg.cls == "SGD" and fused and isinstance(err, TypeError) and "but got NoneType" in str(err)


def _sqrt_amplified(cfg: Config) -> bool:
    """README 'Known differences' (torch's CPU ``sqrt``): RMSprop with ``centered=True`` and
    ``alpha=0`` takes the square root of ``square_avg - grad_avg**2``, which is pure rounding error
    there, and divides by it; the 1-ulp difference between torch's sqrt (MKL's, not correctly
    rounded) and the fused kernel's IEEE sqrt is amplified without bound. Such a case runs ours on
    the reference path (torch's own ops), which README names as the one matching torch there."""
    if cfg.cls != "RMSprop":
        return False
    opts = [cfg.defaults] + [g["options"] for g in cfg.groups]
    events = [e for e in cfg.events.values() if e["kind"] == "option"]
    zero_alpha = any(o.get("alpha") == 0 for o in opts) or any(e["key"] == "alpha" and e["value"] == 0 for e in events)
    centered = any(o.get("centered") for o in opts) or any(e["key"] == "centered" and e["value"] for e in events)
    return zero_alpha and centered


def _impls(cls: str, cfg: Config):
    sig = inspect.signature(getattr(torch.optim, cls)).parameters
    out = []
    if "foreach" in sig:
        out += [{"foreach": False}, {"foreach": True}]
    if cls in FUSED:
        out.append({"fused": True})
    return out


def _closure_for(tw: Twin, cfg: Config, step: int, present: list[int]):
    present = present or list(tw.tensors)  # a loss of no parameter cannot be backpropagated
    coeff = {i: _grad_value(cfg, step, i, cfg.params[i][0]) for i in present}

    def closure():
        tw.opt.zero_grad(set_to_none=True)
        loss = torch.zeros((), dtype=torch.float64)
        for i in present:
            p = tw.tensors[i]
            c = coeff[i].to_dense() if coeff[i].layout != torch.strided else coeff[i]
            loss = loss + ((c * p).sum() + 0.5 * (p * p).sum()).to(torch.float64)
        loss.backward()
        return loss
    return closure


def _set_grads(tw: Twin, cfg: Config, step: int, tracked: list[int]):
    for i in tracked:
        kind = cfg.grad_kinds.get((step, i), "value")
        p = tw.tensors[i]
        if kind == "none":
            p.grad = None
        elif kind == "zero":
            p.grad = torch.zeros_like(p)
            if cfg.sparse and p.dim() >= 1:
                p.grad = p.grad.to_sparse()
        elif kind == "value":
            p.grad = _grad_value(cfg, step, i, p.shape)


def run_case(cls: str, seed: int, verbose: bool = False) -> Outcome:
    warnings.simplefilter("ignore")
    attempt = 0
    while True:
        cfg = draw_config(cls, seed, attempt)
        t_opt, t_err = _try(lambda: Twin(torch.optim, cfg, None, oracle=False))
        o_opt, o_err = _try(lambda: Twin(ts_optim, cfg, None, oracle=False))
        if t_err is not None or o_err is not None:
            if t_err is not None and o_err is None:
                return Outcome(cls, seed, "fail", "construct", attempt + 1, cfg, None,
                               f"{cls}: construct: torch {type(t_err).__name__}, ours accepts",
                               f"torch raised {type(t_err).__name__}: {t_err}\nours constructed without error")
            if t_err is not None and type(t_err) is not type(o_err):
                return Outcome(cls, seed, "fail", "construct", attempt + 1, cfg, None,
                               f"{cls}: construct: torch {type(t_err).__name__}, ours {type(o_err).__name__}",
                               f"torch raised {type(t_err).__name__}: {t_err}\nours raised {type(o_err).__name__}: {o_err}")
            if t_err is None:
                # ours rejects at construction what torch accepts: fine if torch trips over it at
                # the first step with the same type, or README lists it
                verdict = _early_rejection(cfg, t_opt, o_err)
                if verdict is not None:
                    verdict.attempts = attempt + 1
                    return verdict
            attempt += 1
            if attempt >= MAX_ATTEMPTS:
                return Outcome(cls, seed, "pass", "all draws rejected", attempt, cfg)
            continue
        break
    return _run(cfg, verbose, attempt + 1)


def _early_rejection(cfg: Config, t_twin: Twin, o_err: Exception) -> Outcome | None:
    if _documented_early_rejection(cfg, o_err):
        return None
    tracked = t_twin.order()
    _set_grads(t_twin, cfg, 0, tracked)
    closure = _closure_for(t_twin, cfg, 0, tracked) if cfg.closure else None
    _, t_err = _try(lambda: t_twin.opt.step(closure) if closure else t_twin.opt.step())
    if t_err is not None and type(t_err) is type(o_err):
        return None
    return Outcome(cfg.cls, cfg.seed, "fail", "construct", 1, cfg, None,
                   f"{cfg.cls}: construct: ours {type(o_err).__name__}, torch accepts"
                   + (f" (raises {type(t_err).__name__} at step)" if t_err else ""),
                   f"ours raised {type(o_err).__name__} at construction: {o_err}\n"
                   f"torch constructed it; its first step {'raised ' + type(t_err).__name__ + ': ' + str(t_err) if t_err else 'ran'}")


def _run(cfg: Config, verbose: bool, attempts: int) -> Outcome:
    cls = cfg.cls
    forloop = _capturable_drawn(cfg) and any(
        isinstance(v, torch.Tensor) or (isinstance(v, tuple) and any(isinstance(x, torch.Tensor) for x in v))
        for o in [cfg.defaults] + [g["options"] for g in cfg.groups] for v in o.values())
    primary = Twin(torch.optim, cfg, None, oracle=True, forloop=forloop)
    ours = Twin(ts_optim, cfg, None, oracle=False)
    variants = []
    for impl in _impls(cls, cfg):
        v, err = _try(lambda: Twin(torch.optim, cfg, impl, oracle=True))
        if err is None:
            variants.append(v)
    drawn_groups = [dict(cfg.defaults, **g["options"]) for g in cfg.groups]

    def expect_groups(gi, key, torch_value):
        # the oracle could not run the drawn capturable (and foreach) flags; ours shows them
        if gi < len(drawn_groups) and drawn_groups[gi].get("capturable") and (
                key == "capturable" or (key == "foreach" and forloop)):
            return drawn_groups[gi].get(key, torch_value)
        return torch_value

    scales = Scales()
    per_update = cfg.defaults.get("max_iter", 20) if cls == "LBFGS" else 1
    if cls == "LBFGS":
        per_update = max(per_update, (cfg.defaults.get("max_eval") or 0))
    n_updates = 0

    def fail(step, d: Difference | str, sig=None):
        if isinstance(d, Difference):
            return Outcome(cls, cfg.seed, "fail", "diff", attempts, cfg, step,
                           f"{cls}: {d.kind} {_sig_path(tuple(d.where.split('.')))}" if sig is None else sig, str(d))
        return Outcome(cls, cfg.seed, "fail", "diff", attempts, cfg, step, sig or d, d)

    def check(step, rets):
        tracked = primary.order()
        snaps = [snapshot(tw, r, tracked) for tw, r in zip([primary, ours] + variants, rets)]
        try:
            compare(snaps[0], snaps[1], snaps[2:], cfg, max(n_updates, 1), scales, expect_groups)
        except Difference as d:
            sig = f"{cls}: {d.kind} {_sig_path(_split(d.where))}"
            return fail(step, d, sig)
        return None

    for step in range(cfg.steps):
        ev = cfg.events.get(step)
        if ev:
            if verbose:
                print(f"-- event before step {step}: {ev}")
            res = _apply_event(ev, cfg, primary, ours, variants, drawn_groups)
            if isinstance(res, tuple):  # ours rejected add_param_group, torch took it
                oe = res[1]
                tracked = primary.order()
                _set_grads(primary, cfg, step, tracked)
                closure = _closure_for(primary, cfg, step, tracked) if cfg.closure else None
                _, te = _try(lambda: primary.opt.step(closure) if closure else primary.opt.step())
                if te is not None and type(te) is type(oe):
                    return Outcome(cls, cfg.seed, "pass", "ours rejected add_param_group early, torch raised the same type at step",
                                   attempts, cfg, step)
                return fail(step, f"ours raised {type(oe).__name__} at add_param_group: {oe}\ntorch accepted the group; "
                            f"its next step {'raised ' + repr(te) if te else 'ran'}",
                            f"{cls}: add_param_group: ours {type(oe).__name__}, torch accepts"
                            + (f" (raises {type(te).__name__} at step)" if te else ""))
            if isinstance(res, Outcome):
                res.step = step
                return res
            if ev["kind"] == "swap":
                out = check(step, [None] * (2 + len(variants)))
                if out:
                    out.message = "after the state swap (before the step): " + out.message
                    return out
        tracked = primary.order()
        rets = []
        errs = []
        for tw in [primary, ours] + variants:
            _set_grads(tw, cfg, step, tracked)
            closure = _closure_for(tw, cfg, step, [i for i in tracked if cfg.grad_kinds.get((step, i)) != "none"]) \
                if cfg.closure else None
            path = dispatch.use("reference") if tw is ours and _sqrt_amplified(cfg) else contextlib.nullcontext()
            with path:
                r, e = _try(lambda: tw.opt.step(closure) if closure else tw.opt.step())
            rets.append(r)
            errs.append(e)
        n_updates += per_update
        t_err, o_err = errs[0], errs[1]
        if verbose:
            print(f"-- step {step}: torch {'raised ' + repr(t_err) if t_err else 'ok'}, ours {'raised ' + repr(o_err) if o_err else 'ok'}")
        if t_err is not None and o_err is None and _fused_sgd_late_buffer(cfg, t_err):
            return Outcome(cls, cfg.seed, "pass", "README: torch's fused SGD fails on a late first gradient",
                           attempts, cfg, step)
        if t_err is not None:
            if o_err is None:
                return fail(step, f"torch raised {type(t_err).__name__} at step(): {t_err}\nours did not raise",
                            f"{cls}: step: torch {type(t_err).__name__}, ours runs")
            if type(o_err) is not type(t_err):
                return fail(step, f"torch raised {type(t_err).__name__}: {t_err}\nours raised {type(o_err).__name__}: {o_err}",
                            f"{cls}: step: torch {type(t_err).__name__}, ours {type(o_err).__name__}")
            return Outcome(cls, cfg.seed, "pass", f"both raised {type(t_err).__name__} ({str(t_err)[:40]}) at step {step}",
                           attempts, cfg, step)
        if o_err is not None:
            return fail(step, f"ours raised {type(o_err).__name__} at step(): {o_err}\ntorch did not raise",
                        f"{cls}: step: ours {type(o_err).__name__}, torch runs")
        keep = [i for i, e in enumerate(errs[2:]) if e is None]
        variants = [variants[i] for i in keep]
        rets = rets[:2] + [rets[2 + i] for i in keep]
        out = check(step, rets)
        if out:
            return out
    return Outcome(cls, cfg.seed, "pass", "ran", attempts, cfg, cfg.steps)


def _split(where: str):
    out = []
    for p in where.split("."):
        out.append(int(p) if p.isdigit() else p)
    return tuple(out)


def _apply_event(ev, cfg, primary: Twin, ours: Twin, variants: list, drawn_groups: list):
    kind = ev["kind"]
    all_tw = [primary, ours] + variants
    if kind in ("lr", "option"):
        for tw in all_tw:
            g = tw.opt.param_groups[ev["group"] % len(tw.opt.param_groups)]
            key = "lr" if kind == "lr" else ev["key"]
            v = _materialise(ev["value"])
            if key == "lr" and isinstance(g.get("lr"), torch.Tensor):
                g["lr"].fill_(v)
            else:
                g[key] = v
    elif kind == "zero_grad":
        for tw in all_tw:
            tw.opt.zero_grad(set_to_none=ev["set_to_none"])
    elif kind == "add_param_group":
        errs = []
        for tw in all_tw:
            _, e = _try(lambda: tw.add_group(ev["group"]))
            errs.append(e)
        cfg.groups.append(ev["group"])
        drawn_groups.append(dict(cfg.defaults, **ev["group"]["options"]))
        te, oe = errs[0], errs[1]
        if te is None and oe is not None:
            return ("early-reject", oe)
        if te is not None or oe is not None:
            if te is None or oe is None or type(te) is not type(oe):
                return Outcome(cfg.cls, cfg.seed, "fail", "diff", 1, cfg, None,
                               f"{cfg.cls}: add_param_group: torch {type(te).__name__ if te else 'ok'}, ours {type(oe).__name__ if oe else 'ok'}",
                               f"add_param_group({ev['group']}): torch {te!r}, ours {oe!r}")
            return Outcome(cfg.cls, cfg.seed, "pass", f"both rejected add_param_group ({type(te).__name__})", 1, cfg, None)
    elif kind == "swap":
        sd_t = primary.opt.state_dict()
        sd_o = ours.opt.state_dict()
        # torch's into ours (with the drawn capturable flag, which the oracle could not run)
        into_ours = _through_disk(sd_t)
        for gi, g in enumerate(into_ours["param_groups"]):
            if gi < len(ours.opt.param_groups):
                for k in (("capturable", "foreach") if primary.forloop else ("capturable",)):
                    if k in g and k in ours.opt.param_groups[gi]:
                        g[k] = ours.opt.param_groups[gi][k]
        _, oe = _try(lambda: ours.opt.load_state_dict(into_ours))
        if oe is not None:
            return Outcome(cfg.cls, cfg.seed, "fail", "diff", 1, cfg, None,
                           f"{cfg.cls}: load torch state_dict into ours: {type(oe).__name__}",
                           f"ours.load_state_dict(torch's state_dict) raised {type(oe).__name__}: {oe}")
        # torch's own paths go on in clones that load the primary's state (each keeping its own
        # implementation switches: where torch's paths disagree, as with a duplicated parameter,
        # ours is on one of them); the other torch paths go on undisturbed
        clones = []
        for impl in [None, *_impls(cfg.cls, cfg)]:
            clone, err = _try(lambda: Twin(torch.optim, cfg, impl, oracle=True,
                                           forloop=primary.forloop if impl is None else False))
            if err is not None:
                continue
            for i, p in primary.tensors.items():
                with torch.no_grad():
                    clone.tensors[i].copy_(p)
                clone.tensors[i].grad = None if p.grad is None else p.grad.clone()
            sd_clone = _through_disk(sd_t)
            for gi, g in enumerate(sd_clone["param_groups"]):
                if impl is not None and gi < len(clone.opt.param_groups):
                    for k in IMPL_KEYS:
                        if k in clone.opt.param_groups[gi]:
                            g[k] = clone.opt.param_groups[gi][k]
            _, ce = _try(lambda: clone.opt.load_state_dict(sd_clone))
            if ce is None:
                clones.append(clone)
        variants[:] = clones + variants  # all kept: ours may be on an older path (a duplicate, rounding)
        # ours into torch (the primary keeps its own implementation switches)
        sd = _through_disk(sd_o)
        for gi, g in enumerate(sd["param_groups"]):
            if gi < len(primary.opt.param_groups):
                for k in IMPL_KEYS:
                    if k in primary.opt.param_groups[gi]:
                        g[k] = primary.opt.param_groups[gi][k]
        _, te = _try(lambda: primary.opt.load_state_dict(sd))
        if te is not None:
            return Outcome(cfg.cls, cfg.seed, "fail", "diff", 1, cfg, None,
                           f"{cfg.cls}: load ours' state_dict into torch: {type(te).__name__}",
                           f"torch.load_state_dict(ours' state_dict) raised {type(te).__name__}: {te}")
    return None


# -- command line ---------------------------------------------------------------------------------

def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b)))
        else:
            out.append(int(part))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, help="one case (with --cls)")
    ap.add_argument("--seeds", default=None, help="range/list, e.g. 0-2000 or 1,5,9")
    ap.add_argument("--cls", default="all", help="class name, comma list, or 'all'")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--show", type=int, default=1, help="example failures printed per signature")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    classes = CLASSES if args.cls == "all" else args.cls.split(",")
    seeds = [args.seed] if args.seed is not None else parse_seeds(args.seeds or "0-20")
    if args.seed is not None:
        rc = 0
        for cls in classes:
            out = run_case(cls, args.seed, verbose=args.verbose)
            if args.verbose and out.config is not None:
                print(out.config.describe())
            print(f"{cls} seed={args.seed}: {out.status} ({out.note}, attempts={out.attempts})")
            if out.status == "fail":
                print(out.report())
                rc = 1
        return rc
    groups: dict = {}
    counts: dict = {}
    t0 = time.time()
    for cls in classes:
        c = counts.setdefault(cls, {"pass": 0, "fail": 0, "notes": {}})
        for seed in seeds:
            try:
                out = run_case(cls, seed)
            except Exception as e:  # a crash of the runner itself is a finding too
                out = Outcome(cls, seed, "fail", "runner crash", 0, None, None, f"{cls}: runner crash {type(e).__name__}", repr(e))
            c[out.status] += 1
            note = out.note.split(" at step")[0]
            c["notes"][note] = c["notes"].get(note, 0) + 1
            if out.status == "fail":
                groups.setdefault(f"{out.signature} {out.tags}", []).append(out)
        print(f"{cls}: {c['pass']} pass, {c['fail']} fail; {c['notes']} ({time.time() - t0:.0f}s)", flush=True)
    print(f"\n{len(groups)} failure signatures")
    for sig, outs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        print(f"\n=== [{len(outs)}] {sig}  seeds: {[o.seed for o in outs[:16]]}")
        for o in outs[:args.show]:
            print(o.message[:1500])
    return 1 if groups else 0


if __name__ == "__main__":
    sys.exit(main())
