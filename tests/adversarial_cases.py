"""Adversarial cases for the fused default path, each meant to run in a process of its own
(``python tests/adversarial_cases.py NAME``), so that a crash -- a segfault, heap corruption,
SIGBUS -- is a failed test, not a dead test run. ``tests/test_adversarial.py`` runs them.

Correct means: the same result as torch.optim 2.13 (its default CPU path), or an exception
where torch raises. Every case exits 0 when it holds and raises (exit 1) otherwise.
"""

from __future__ import annotations

import copy
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

import torchstep.optim as ts_optim
from torchstep.backends import use

CASES: dict[str, Callable[[], None]] = {}
ELEMENTWISE = ["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "RMSprop", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop"]
MOMENTUM = {"SGD": dict(momentum=0.9, lr=0.1, dampening=0.1)}


def case(fn: Callable[[], None]) -> Callable[[], None]:
    CASES[fn.__name__] = fn
    return fn


def grads(step: int, shapes: list, dtype=torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]


def outcome(scenario: Callable[[Any], list[torch.Tensor]], module: Any) -> tuple[str, Any]:
    """("ok", tensors) or ("raised", the exception)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return "ok", [t.detach().clone() for t in scenario(module)]
        except Exception as exc:  # noqa: BLE001 -- any exception is an outcome to compare
            return "raised", exc


def agree(scenario: Callable[[Any], list[torch.Tensor]], rtol: float = 1e-5, atol: float = 1e-6) -> str:
    """Run ``scenario`` with torch.optim and with torchstep.optim; both must raise, or both give
    the same tensors. Returns which of the two happened."""
    theirs, ours = outcome(scenario, torch.optim), outcome(scenario, ts_optim)
    if theirs[0] == "raised":
        assert ours[0] == "raised", f"torch raised {theirs[1]!r}; torchstep did not"
        return "raised"
    assert ours[0] == "ok", f"torchstep raised {ours[1]!r} where torch gave a result"
    assert len(theirs[1]) == len(ours[1])
    for a, b in zip(theirs[1], ours[1]):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol, equal_nan=True)
    return "ok"


def train(module: Any, name: str, shapes: list, steps: int = 4, kwargs: dict | None = None,
          between: Callable[[Any, list, int], None] | None = None, dtype=torch.float32, params=None):
    """Steps of ``module.<name>`` over fresh parameters; ``between(opt, params, step)`` runs
    after each step. Returns parameters and every state tensor."""
    gen = torch.Generator().manual_seed(0)
    if params is None:
        params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]
    else:
        params = params()
    opt = getattr(module, name)(params, **(kwargs or {}))
    for step in range(steps):
        for p, g in zip(params, grads(step, [p.shape for p in params], params[0].dtype)):
            p.grad = g.to(p.dtype)
        opt.step()
        if between is not None:
            between(opt, params, step)
    state = [v for p in params for v in opt.state[p].values() if isinstance(v, torch.Tensor)]
    return [*params, *state]


# -- 1. compilers that fail: transactional fallback ----------------------------------------------


def _fake_cc(tmp: Path, body: str) -> str:
    path = tmp / "cc"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def _fallback_counts_once(expect_in_warning: str) -> None:
    """Adam and RMSprop over 3 steps on a failing compiler: one warning naming the cause,
    ``step`` == 3, torch's parameters."""
    for name in ("Adam", "RMSprop", "SGD"):
        kwargs = dict(MOMENTUM.get(name, {}))
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            p = torch.randn(10, generator=torch.Generator().manual_seed(1)).requires_grad_()
            q = p.detach().clone().requires_grad_()
            ours, theirs = getattr(ts_optim, name)([p], **kwargs), getattr(torch.optim, name)([q], **kwargs)
            for step in range(3):
                g = grads(step, [(10,)])[0]
                p.grad, q.grad = g.clone(), g.clone()
                ours.step()
                theirs.step()
        fallbacks = [str(w.message) for w in seen if "fused step unavailable" in str(w.message)]
        assert len(fallbacks) == 1, fallbacks
        assert expect_in_warning in fallbacks[0], fallbacks[0]
        if "step" in theirs.state[q]:
            assert float(ours.state[p]["step"]) == 3.0, ours.state[p]["step"]
        torch.testing.assert_close(p, q)
        for k, v in theirs.state[q].items():
            torch.testing.assert_close(ours.state[p][k].float(), v.float())


@case
def compiler_false() -> None:
    os.environ["CC"] = "false"
    _fallback_counts_once("false")


@case
def compiler_broken_script() -> None:
    os.environ["CC"] = _fake_cc(Path(os.environ["CASE_TMP"]), 'echo "fatal: this compiler is broken" >&2; exit 1')
    _fallback_counts_once("this compiler is broken")


@case
def compiler_broken_first_on_path() -> None:
    folder = Path(os.environ["CASE_TMP"])
    _fake_cc(folder, 'echo "fatal: the cc first on PATH is broken" >&2; exit 1')
    os.environ.pop("CC", None)
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ['PATH']}"
    _fallback_counts_once("the cc first on PATH is broken")


@case
def compiler_bad_cflags() -> None:
    os.environ["TORCHSTEP_CFLAGS"] = "-fno-such-flag-at-all"
    _fallback_counts_once("no-such-flag")


@case
def compiler_exits_0_without_output() -> None:
    os.environ["CC"] = _fake_cc(Path(os.environ["CASE_TMP"]), "exit 0")
    _fallback_counts_once("no loadable library")


@case
def compiler_writes_garbage() -> None:
    script = 'while [ $# -gt 0 ]; do if [ "$1" = "-o" ]; then echo garbage > "$2"; fi; shift; done; exit 0'
    os.environ["CC"] = _fake_cc(Path(os.environ["CASE_TMP"]), script)
    _fallback_counts_once("no loadable library")
    kernels = Path(os.environ["TORCHSTEP_CACHE"]) / "kernels"
    assert not list(kernels.glob("*.so")), "a bad build was installed in the cache"


@case
def radam_tensor_betas_then_float_betas() -> None:
    """Tensor betas make ``rectified`` a tensor: counted once, torch's numbers; and no later
    optimizer loses the fused path because of it."""
    kwargs = dict(betas=(torch.tensor(0.9), torch.tensor(0.999)), lr=0.01)
    assert agree(lambda m: train(m, "RAdam", [(10,), (3, 4)], 8, copy.deepcopy(kwargs))) == "ok"
    with use("fused"):  # raises if the fused path is unavailable
        train(ts_optim, "RAdam", [(10,)], 8, dict(lr=0.01))
        train(ts_optim, "RAdam", [(10,)], 8, copy.deepcopy(kwargs))


# -- 2./3. storage replaced under the plan ------------------------------------------------------


def _mutating(mutate: Callable[[torch.Tensor], None], on: str) -> None:
    for name in ("Adam", "RMSprop", "SGD", "Adagrad", "NAdam"):
        def between(opt, params, step, name=name):
            if step == 1:
                st = opt.state[params[0]]
                target = params[0] if on == "param" else next(v for k, v in st.items() if k != "step" and v.dim())
                mutate(target)

        kwargs = dict(MOMENTUM.get(name, {}), **({"centered": True, "momentum": 0.5} if name == "RMSprop" else {}))
        agree(lambda m, name=name, kwargs=kwargs: train(m, name, [(10,), (4, 5)], 5, copy.deepcopy(kwargs), between))


@case
def state_data_replaced() -> None:
    _mutating(lambda t: setattr(t, "data", t.data.clone()), "state")


@case
def state_set_to_new_storage() -> None:
    _mutating(lambda t: t.set_(t.detach().clone()), "state")


@case
def state_resized_smaller() -> None:
    _mutating(lambda t: t.data.resize_(t.numel() // 2), "state")


@case
def state_viewed_as_other_shape() -> None:
    _mutating(lambda t: setattr(t, "data", t.data.reshape(2, -1)), "state")


@case
def state_swapped_to_other_dtype() -> None:
    _mutating(lambda t: setattr(t, "data", t.data.double()), "state")


@case
def param_sliced() -> None:
    _mutating(lambda t: setattr(t, "data", t.data[:5]), "param")


@case
def param_swapped_to_other_dtype() -> None:
    _mutating(lambda t: setattr(t, "data", t.data.double()), "param")


@case
def param_made_non_contiguous() -> None:
    _mutating(lambda t: setattr(t, "data", t.data.view(-1).flip(0).view(t.shape) if t.dim() < 2 else t.data.t().contiguous().t()), "param")


@case
def state_as_strided_in_place() -> None:
    _mutating(lambda t: t.as_strided_((t.numel() // 2,), (2,)), "state")


@case
def state_set_to_offset_of_its_storage() -> None:
    _mutating(lambda t: t.set_(t.untyped_storage(), 2, (t.numel() - 2,), (1,)), "state")


@case
def param_moved_to_meta_device() -> None:
    _mutating(lambda t: setattr(t, "data", t.data.to("meta")), "param")


@case
def gradients_of_odd_layout() -> None:
    """Non-contiguous, wrong-dtype-by-.data, and self-aliasing gradients, mid-run."""
    def odd(kind):
        def scenario(m):
            a = torch.randn(6, 4, generator=torch.Generator().manual_seed(1)).requires_grad_()
            opt = m.Adam([a], lr=0.1)
            for step in range(4):
                g = torch.randn(4, 6, generator=torch.Generator().manual_seed(step)).t()
                a.grad = g if kind == "strided" or step < 2 else g.contiguous()
                if kind == "self" and step >= 2:
                    a.grad = a.detach()
                opt.step()
            return [a, *opt.state[a].values()]
        return scenario
    for kind in ("strided", "self"):
        agree(odd(kind))


@case
def mixed_dtype_group_after_load() -> None:
    """A float32 + float64 group: loaded 0-d state follows each parameter's dtype."""
    for name in ("NAdam", "ASGD", "Adam"):
        def scenario(m, name=name):
            ps = [torch.randn(3, generator=torch.Generator().manual_seed(1)).requires_grad_(),
                  torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_()]
            opt = getattr(m, name)(ps, lr=1e-2)
            for step in range(6):
                for p in ps:
                    p.grad = torch.full_like(p, 0.5 + step)
                opt.step()
                if step == 2:
                    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
            return [*ps] + [v for p in ps for v in opt.state[p].values()]
        agree(scenario, rtol=1e-6, atol=1e-9)


# -- 4. loaded state of the wrong shape ---------------------------------------------------------


def _lowbit_after(edit: Callable[[dict], None]) -> str:
    """int8 AdamW over a 5000-element parameter; ``edit`` tampers with its state after two
    steps; a third step must either run (and hold the state consistently again) or raise a
    clear error naming the state -- never crash or read past the block scales."""
    p = torch.nn.Parameter(torch.randn(5000))
    opt = ts_optim.AdamW([p], state_dtype="int8")
    for step in range(2):
        p.grad = grads(step, [(5000,)])[0]
        opt.step()
    edit(opt.state[p])
    p.grad = grads(2, [(5000,)])[0]
    try:
        opt.step()
    except RuntimeError as exc:
        assert "exp_avg" in str(exc), exc
        return "raised"
    st = opt.state[p]
    assert st["exp_avg"].dtype == torch.uint8 and st["exp_avg.absmax"].shape == (20,), {k: v.shape for k, v in st.items()}
    assert bool(torch.isfinite(p).all())
    return "ran"


@case
def lowbit_state_tampered() -> None:
    outcomes = {
        "scales truncated": _lowbit_after(lambda st: st.__setitem__("exp_avg.absmax", st["exp_avg.absmax"][:-1])),
        "scales resized in place": _lowbit_after(lambda st: st["exp_avg.absmax"].resize_(3)),
        "scales made float64": _lowbit_after(lambda st: st.__setitem__("exp_avg.absmax", st["exp_avg.absmax"].double())),
        "codes made float": _lowbit_after(lambda st: st.__setitem__("exp_avg", st["exp_avg"].float())),
        "codes of another shape": _lowbit_after(lambda st: st.__setitem__("exp_avg", st["exp_avg"][:100].clone())),
        "codes non-contiguous": _lowbit_after(lambda st: st.__setitem__("exp_avg", st["exp_avg"].view(50, 100).t())),
        "scales dropped": _lowbit_after(lambda st: st.pop("exp_avg.absmax")),
        "codes made int8": _lowbit_after(lambda st: st.__setitem__("exp_avg", st["exp_avg"].to(torch.int8))),
    }
    # codes without (enough) scales are no numbers, nor are codes turned into another dtype while their
    # scales stay beside them (codes cast to float would read as moments of 0..255): refused
    assert outcomes["scales truncated"] == outcomes["scales resized in place"] == outcomes["scales dropped"] == \
        outcomes["codes made int8"] == outcomes["codes made float"] == "raised", outcomes


@case
def lowbit_compact_checkpoint_tampered() -> None:
    p = torch.nn.Parameter(torch.randn(5000))
    opt = ts_optim.AdamW([p], state_dtype="int8")
    p.grad = torch.randn(5000)
    opt.step()
    saved = opt.state_dict(compact=True)
    short = copy.deepcopy(saved)
    short["state"][0]["exp_avg.absmax"] = short["state"][0]["exp_avg.absmax"][:5]
    orphan = copy.deepcopy(saved)
    del orphan["state"][0]["exp_avg_sq.absmax"]
    negative = copy.deepcopy(saved)
    negative["state"][0]["exp_avg.absmax"][3] = -1.0
    bad_option = copy.deepcopy(saved)
    bad_option["param_groups"][0]["state_dtype"] = "int4"
    fresh = ts_optim.AdamW([torch.nn.Parameter(torch.randn(5000))], state_dtype="int8")
    for damaged, message in ((short, "block scales hold 5 values where 20 are needed"),
                             (orphan, "without its block scales"),
                             (negative, "block scales must be non-negative"),
                             (bad_option, "state_dtype must be None, torch.float32")):
        try:
            fresh.load_state_dict(damaged)
        except ValueError as exc:
            assert message in str(exc), exc
        else:
            raise AssertionError(f"a damaged compact checkpoint was loaded (expected: {message})")


# random tampering of held low-bit state: what a bad script, a hand-edited checkpoint or a bug
# elsewhere could leave in ``opt.state``; the kernels take raw pointers, so each must be refused
# (a clear error naming the state) or be held consistently again -- never read out of bounds
_TAMPERS: dict[str, Callable[[torch.Tensor, torch.Generator], Any]] = {
    "float16": lambda t, g: t.to(torch.float16), "float64": lambda t, g: t.double(),
    "bfloat16": lambda t, g: t.bfloat16(), "int8": lambda t, g: t.to(torch.int8),
    "int32": lambda t, g: t.to(torch.int32), "uint8": lambda t, g: t.to(torch.uint8),
    "truncated": lambda t, g: t.reshape(-1)[: max(t.numel() // 2, 0)].clone(),
    "extended": lambda t, g: torch.cat([t.reshape(-1), t.reshape(-1)[:7]]),
    "reshaped": lambda t, g: t.reshape(-1, 1) if t.dim() else t.reshape(1),
    "transposed view": lambda t, g: t.reshape(-1, 3).t() if t.numel() % 3 == 0 and t.numel() else t.flip(0) if t.dim() else t,
    "strided view": lambda t, g: torch.cat([t.reshape(-1), t.reshape(-1)])[::2],
    "expanded": lambda t, g: t.reshape(-1)[:1].expand(t.numel()) if t.numel() else t,
    "0-d": lambda t, g: t.reshape(-1)[0].clone() if t.numel() else t.sum(),
    "empty": lambda t, g: t.reshape(-1)[:0].clone(),
    "nan": lambda t, g: torch.full_like(t, float("nan")) if t.is_floating_point() else t,
    "inf": lambda t, g: torch.full_like(t, float("inf")) if t.is_floating_point() else t,
    "negative": lambda t, g: -t.abs() - 1 if t.is_floating_point() else t,
    "zeros": lambda t, g: torch.zeros_like(t),
    "random bytes": lambda t, g: torch.randint(0, 256, t.shape, generator=g, dtype=torch.uint8).view(t.dtype)
    if t.element_size() == 1 else t,
    "python float": lambda t, g: 0.5,
    "dropped": lambda t, g: None,
}


@case
def lowbit_random_tampering() -> None:
    import random

    algorithms = ["Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Lion", "NAdam", "Adan"]
    counts = {"ran": 0, "raised": 0}
    for seed in range(int(os.environ.get("TAMPER_SEEDS", 1000))):
        rng = random.Random(seed)
        gen = torch.Generator().manual_seed(seed)
        name = rng.choice(algorithms)
        kwargs = dict(momentum=0.9) if name == "SGD" else {}
        shapes = rng.sample([(5000,), (4096,), (64, 65), (100,), (3, 2, 700)], rng.randint(1, 3))
        dtype = rng.choice([torch.float32, torch.float32, torch.bfloat16])
        params = [torch.nn.Parameter(torch.randn(sh, generator=gen).to(dtype)) for sh in shapes]
        options = dict(state_dtype=rng.choice(["int8", "int8", torch.bfloat16]))
        if dtype == torch.bfloat16 and rng.random() < 0.5:
            options[rng.choice(["stochastic_rounding", "kahan"])] = True
        opt = getattr(ts_optim, name)(params, lr=1e-3, **kwargs, **options)
        for _ in range(rng.randint(1, 2)):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(dtype)
            opt.step()
        what = []
        for _ in range(rng.randint(1, 2)):
            p = rng.choice(params)
            # the element-wise state, its block scales, the Kahan buffer (not scalar state such as
            # NAdam's mu_product, which torch.optim leaves to the user alike)
            keys = sorted(k for k, v in opt.state[p].items() if torch.is_tensor(v) and v.dim())
            if not keys:
                continue
            key = rng.choice(keys)
            tamper = rng.choice(sorted(_TAMPERS))
            value = _TAMPERS[tamper](opt.state[p][key], gen)
            if value is None:
                del opt.state[p][key]
            else:
                opt.state[p][key] = value
            what.append((tuple(p.shape), key, tamper))
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(dtype)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt.step()
                opt.step()
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            text = str(exc)
            # named -- or, for full-precision state written in place, torch's own refusal (torch.optim's alike)
            assert any(k in text for _, k, _ in what) or "state" in text or "single memory location" in text, \
                (seed, name, what, text)
            counts["raised"] += 1
            continue
        counts["ran"] += 1
        # it ran: then every state tensor is held consistently again (shape, codes with their scales)
        for p in params:
            st = opt.state[p]
            for key, value in st.items():
                if torch.is_tensor(value) and key != "step" and not key.endswith(".absmax") and value.dim():
                    assert tuple(value.shape) == tuple(p.shape), (seed, name, what, key, tuple(value.shape))
                    if value.dtype == torch.uint8:
                        assert st[key + ".absmax"].numel() == -(-p.numel() // 256), (seed, name, what, key)
    assert counts["ran"] and counts["raised"], counts


def _load_then_step(module: Any, donor_groups: Callable, target_groups: Callable, edit=None) -> list[torch.Tensor]:
    src_params = [torch.randn(s).requires_grad_() for s in [(3, 4), (7,)]]
    src = module.Adam(donor_groups(src_params))
    for p in src_params:
        p.grad = torch.randn_like(p)
    src.step()
    sd = src.state_dict()
    if edit is not None:
        edit(sd)
    dst_params = [torch.randn(s).requires_grad_() for s in [(3, 4), (7,)]]
    dst = module.Adam(target_groups(dst_params))
    dst.load_state_dict(sd)
    for p in dst_params:
        p.grad = torch.randn_like(p)
    dst.step()
    return dst_params


@case
def load_groups_in_other_order() -> None:
    two = lambda ps: [{"params": [ps[0]]}, {"params": [ps[1]]}]  # noqa: E731
    swapped = lambda ps: [{"params": [ps[1]]}, {"params": [ps[0]]}]  # noqa: E731
    assert agree(lambda m: _load_then_step(m, two, swapped)) == "raised"


@case
def load_truncated_state() -> None:
    def cut(sd):
        sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"].reshape(-1)[:5]
    assert agree(lambda m: _load_then_step(m, list, list, cut)) == "raised"


@case
def load_same_numel_other_shape() -> None:
    def reshape(sd):
        sd["state"][0]["exp_avg_sq"] = sd["state"][0]["exp_avg_sq"].reshape(4, 3)
    assert agree(lambda m: _load_then_step(m, list, list, reshape)) == "raised"


# -- 5. aliasing and duplicates -----------------------------------------------------------------


def _aliased(make: Callable[[], list[torch.Tensor]]) -> None:
    for name in ("SGD", "Adam", "RMSprop"):
        kwargs = MOMENTUM.get(name, {})
        results = [outcome(lambda m, name=name: train(m, name, [], 6, dict(kwargs), params=make), ts_optim) for _ in range(3)]
        assert all(r[0] == "ok" for r in results), results
        for r in results[1:]:  # deterministic: no data race
            for a, b in zip(results[0][1], r[1]):
                assert torch.equal(a, b)
        agree(lambda m, name=name: train(m, name, [], 6, dict(kwargs), params=make))


@case
def params_sharing_one_storage() -> None:
    def make():
        base = torch.randn(64, 1000, generator=torch.Generator().manual_seed(3))
        return [torch.nn.Parameter(base), torch.nn.Parameter(base)]
    _aliased(make)


@case
def overlapping_slices_as_leaves() -> None:
    def make():
        base = torch.randn(70000, generator=torch.Generator().manual_seed(3))
        return [base[:40000].requires_grad_(), base[30000:].requires_grad_(), base[::7].clone().requires_grad_()]
    _aliased(make)


@case
def overlapping_as_strided() -> None:
    def make():
        base = torch.randn(50000, generator=torch.Generator().manual_seed(3))
        return [base.as_strided((40000,), (1,), 0).requires_grad_(), base.as_strided((40000,), (1,), 9999).requires_grad_()]
    _aliased(make)


@case
def disjoint_slices_as_leaves() -> None:
    def make():
        base = torch.randn(3000, generator=torch.Generator().manual_seed(3))
        return [base[:1000].requires_grad_(), base[1000:2500].requires_grad_()]
    with use("fused"):  # disjoint views of one storage are safe to fuse
        train(ts_optim, "Adam", [], 3, params=make)
    _aliased(make)


@case
def same_tensor_twice_in_a_group() -> None:
    for name in ELEMENTWISE:
        def make():
            p = torch.randn(6, generator=torch.Generator().manual_seed(2)).requires_grad_()
            return [p, p]
        assert agree(lambda m, name=name: train(m, name, [], 4, dict(MOMENTUM.get(name, {})), params=make)) == "ok"


@case
def gradient_is_another_parameters_storage() -> None:
    def scenario(m):
        a, b = (torch.randn(8, generator=torch.Generator().manual_seed(i)).requires_grad_() for i in (1, 2))
        opt = m.Adam([a, b], lr=0.1)
        for _ in range(3):
            a.grad, b.grad = b.detach(), torch.ones(8)
            opt.step()
        return [a, b]
    agree(scenario)


# -- 6./7. the kernel cache ---------------------------------------------------------------------


def _kernels() -> Path:
    return Path(os.environ["TORCHSTEP_CACHE"]) / "kernels"


def _child(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (so nothing is loaded yet), same environment."""
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=300)


_FUSED_ADAM = """
import warnings, torch, torchstep.optim as o
from torchstep.backends import use
warnings.simplefilter("error")
p = torch.ones(5, requires_grad=True); opt = o.Adam([p], lr=0.5)
with use("fused"):
    for _ in range(2):
        p.grad = torch.ones(5); opt.step()
print(float(opt.state[p]["step"]), p.detach().tolist())
"""


def _fresh_build() -> list[Path]:
    out = _child(_FUSED_ADAM)
    assert out.returncode == 0, out.stderr
    libs = sorted(_kernels().glob("*.so"))
    assert libs
    return libs


def _expected() -> str:
    p = torch.ones(5, requires_grad=True)
    opt = torch.optim.Adam([p], lr=0.5)
    for _ in range(2):
        p.grad = torch.ones(5)
        opt.step()
    return f"{float(opt.state[p]['step'])} {p.detach().tolist()}"


def _damaged_cache_is_rebuilt(damage: Callable[[Path], None]) -> None:
    for lib in _fresh_build():
        damage(lib)
    out = _child(_FUSED_ADAM)
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-2000:]}"
    assert out.stdout.strip() == _expected(), out.stdout


@case
def cache_truncated_library() -> None:
    _damaged_cache_is_rebuilt(lambda lib: lib.write_bytes(lib.read_bytes()[:4096]))


@case
def cache_garbage_library() -> None:
    _damaged_cache_is_rebuilt(lambda lib: lib.write_bytes(b"\x7fELF" + os.urandom(20000)))


_PLANTED = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) { FILE *f = fopen("%s", "w"); if (f) { fputs("ran", f); fclose(f); } }
void step(void) {}
"""


def _plant(lib: Path, marker: Path) -> None:
    src = lib.with_suffix(".planted.c")
    src.write_text(_PLANTED % marker)
    subprocess.run(["cc", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    src.unlink()


@case
def cache_planted_library_never_runs() -> None:
    marker = Path(os.environ["CASE_TMP"]) / "planted-ran"
    libs = _fresh_build()
    for lib in libs:  # a planted file whose hash was not recorded by a build
        _plant(lib, marker)
    _damaged_cache_is_rebuilt(lambda lib: None)
    assert not marker.exists(), "a planted library was loaded"
    for lib in sorted(_kernels().glob("*.so")):  # planted with a matching hash, but writable by others
        _plant(lib, marker)
        import hashlib
        lib.with_suffix(".sha256").write_text(hashlib.sha256(lib.read_bytes()).hexdigest())
        lib.chmod(0o777)
    out = _child(_FUSED_ADAM)
    assert out.returncode == 0 and out.stdout.strip() == _expected(), out.stderr[-2000:]
    assert not marker.exists(), "a group/world-writable library was loaded"


@case
def cache_directory_is_private() -> None:
    _fresh_build()
    mode = stat.S_IMODE(_kernels().stat().st_mode)
    assert mode == 0o700, oct(mode)
    _kernels().chmod(0o777)  # opened up by someone: tightened again before use
    _fresh_build()
    assert stat.S_IMODE(_kernels().stat().st_mode) == 0o700
    if os.getuid() == 0:  # a directory owned by someone else is not used at all
        os.chown(_kernels(), 65534, 65534)
        out = _child(_FUSED_ADAM.replace('warnings.simplefilter("error")', ""))
        assert out.returncode == 0 and out.stdout.strip() == _expected(), out.stderr[-2000:]
        assert "kernel cache" in out.stderr, out.stderr


@case
def cache_not_writable() -> None:
    root = Path(os.environ["CASE_TMP"]) / "a-file"
    root.write_text("not a directory")
    out = _child(_FUSED_ADAM.replace('warnings.simplefilter("error")', ""), {"TORCHSTEP_CACHE": str(root)})
    assert out.returncode == 0 and out.stdout.strip() == _expected(), out.stderr[-2000:]
    assert "kernel cache" in out.stderr and "private directory" in out.stderr, out.stderr


@case
def cache_follows_xdg_cache_home() -> None:
    xdg = Path(os.environ["CASE_TMP"]) / "xdg"
    env = dict(os.environ)
    env.pop("TORCHSTEP_CACHE")
    env["XDG_CACHE_HOME"] = str(xdg)
    out = subprocess.run([sys.executable, "-c", _FUSED_ADAM], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    kernels = xdg / "torchstep" / "kernels"
    assert list(kernels.glob("*.so")) and stat.S_IMODE(kernels.stat().st_mode) == 0o700


# -- 8. no leaks --------------------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@case
def load_state_dict_cycles_keep_one_state() -> None:
    n = 10_000_000
    p = torch.zeros(n, requires_grad=True)
    opt = ts_optim.Adam([p], lr=1e-3)
    p.grad = torch.ones(n)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    state_bytes = 2 * n * 4
    base = _rss()
    for _ in range(5):
        opt.load_state_dict(saved)
        opt.step()
    grown = _rss() - base
    assert grown <= 1.5 * state_bytes, f"RSS grew {grown / 1e6:.0f} MB over 5 loads (one state: {state_bytes / 1e6:.0f} MB)"
    assert len(opt._fused_plans) == 1


@case
def regrouping_every_step_keeps_one_plan_per_group() -> None:
    params = [torch.randn(100, requires_grad=True) for _ in range(4)]
    opt = ts_optim.AdamW(params, lr=1e-3)
    for step in range(20):
        opt.param_groups = [dict(g) for g in opt.param_groups]  # e.g. a wrapper rebuilding the dicts
        for p in params:
            p.grad = torch.randn(100)
        opt.step()
        assert len(opt._fused_plans) == len(opt.param_groups)


# -- 9. DTensor ---------------------------------------------------------------------------------


def _dtensor_run(rank: int, world: int, port: int, fsdp: bool) -> None:
    import torch.distributed as dist
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        for name in ("Adam", "AdamW", "SGD", "RMSprop"):
            kwargs = dict(MOMENTUM.get(name, {}))
            finals = []
            for module in (torch.optim, ts_optim):
                torch.manual_seed(0)
                model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
                if fsdp:
                    from torch.distributed.fsdp import fully_shard
                    fully_shard(model, mesh=mesh)
                    params = list(model.parameters())
                else:
                    params = [torch.nn.Parameter(distribute_tensor(p.detach(), mesh, [Shard(0)])) for p in model.parameters()]
                with warnings.catch_warnings(record=True) as seen:
                    warnings.simplefilter("always")
                    opt = getattr(module, name)(params, **{"lr": 0.05, **kwargs})
                    for step in range(4):
                        if fsdp:
                            x = torch.randn(6, 8, generator=torch.Generator().manual_seed(step))
                            model(x).square().mean().backward()
                        else:
                            for p, g in zip(params, grads(step, [p.shape for p in params])):
                                p.grad = distribute_tensor(g, mesh, [Shard(0)])
                        opt.step()
                        opt.zero_grad()
                if module is ts_optim:
                    reasons = {str(w.message) for w in seen if "fused step unavailable" in str(w.message)}
                    assert len(reasons) <= 1, reasons
                finals.append([p.full_tensor() for p in params])
                state_types = {type(v).__name__ for st in opt.state.values() for k, v in st.items() if k != "step"}
                assert state_types <= {"DTensor"}, state_types
            for a, b in zip(*finals):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    finally:
        dist.destroy_process_group()


def _spawn(world: int, fsdp: bool) -> None:
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if world == 1:
        _dtensor_run(0, 1, port, fsdp)
    else:
        mp.spawn(_dtensor_run, args=(world, port, fsdp), nprocs=world, join=True)


@case
def dtensor_one_process() -> None:
    _spawn(1, fsdp=False)


@case
def dtensor_two_processes() -> None:
    _spawn(2, fsdp=False)


@case
def fsdp2_one_process() -> None:
    _spawn(1, fsdp=True)


@case
def fsdp2_two_processes() -> None:
    _spawn(2, fsdp=True)


# -- 11. zero-element tensors -------------------------------------------------------------------


@case
def zero_element_tensors() -> None:
    for name in ELEMENTWISE:
        kwargs = dict(MOMENTUM.get(name, {}))
        for shapes in ([(0,)], [(0, 3)], [(0,), (4,), (0, 3)]):
            assert agree(lambda m, name=name, shapes=shapes: train(m, name, shapes, 3, dict(kwargs))) == "ok"

        def two_groups(m, name=name, kwargs=kwargs):
            a, b, c = (torch.randn(s, generator=torch.Generator().manual_seed(5)).requires_grad_() for s in [(0,), (0, 3), (5,)])
            opt = getattr(m, name)([{"params": [a, b]}, {"params": [c]}], **kwargs)
            for step in range(3):
                for p in (a, b, c):
                    p.grad = torch.ones_like(p)
                opt.step()
            return [a, b, c] + [v for p in (a, b, c) for v in opt.state[p].values() if isinstance(v, torch.Tensor)]
        assert agree(two_groups) == "ok"


if __name__ == "__main__":
    torch.set_num_threads(2)
    CASES[sys.argv[1]]()
    print("ok", sys.argv[1])
