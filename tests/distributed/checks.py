"""Assertions over the snapshots :mod:`jobs` returns (tests/distributed)."""

from __future__ import annotations

import re

import pytest
import torch

from registry import tolerance


def tol_for(name: str) -> dict:
    """The registry's float32 tolerance for ``name`` (torch's classes are held to the table's)."""
    try:
        return tolerance(name, torch.float32)
    except KeyError:
        return tolerance("Adam", torch.float32)


def require_ok(case: dict, where: str) -> None:
    if case.get("error"):
        pytest.fail(f"{where} raised {case['error']}\n\n{case.get('traceback', '')}", pytrace=False)


def lbfgs_refused_clearly(case: dict, where: str) -> bool:
    """LBFGS either matches the unsharded run (False: check it as any other) or refuses DTensor
    parameters with an error that names itself and the cause (True: nothing more to check)."""
    if not case.get("error"):
        return False
    message = case["error"]
    assert re.search(r"LBFGS", message) and re.search(r"DTensor|distributed", message), \
        f"LBFGS on {where}: an unclear error (it should name LBFGS and DTensor/distributed):\n{case['traceback']}"
    return True


def assert_tensors_close(got: dict, want: dict, tol: dict, what: str) -> None:
    assert sorted(got) == sorted(want), f"{what}: entries {sorted(got)} != {sorted(want)}"
    for key in want:
        assert_value_close(got[key], want[key], tol, f"{what}[{key}]")


def assert_value_close(g, w, tol: dict, what: str) -> None:
    """One entry: tensors and floats within ``tol``, lists and tuples (LBFGS's history of
    tensors) element by element, anything else equal."""
    if isinstance(w, torch.Tensor):
        assert isinstance(g, torch.Tensor), f"{what}: {type(g).__name__}, expected a tensor"
        assert g.shape == w.shape, f"{what}: shape {tuple(g.shape)} (gathered) != {tuple(w.shape)}"
        torch.testing.assert_close(g.to(w.dtype), w, **tol, msg=lambda m: f"{what}: {m}")
    elif isinstance(w, float):
        assert g == pytest.approx(w, rel=tol["rtol"], abs=tol["atol"]), f"{what}: {g} != {w}"
    elif isinstance(w, (list, tuple)):
        assert type(g) is type(w), f"{what}: {type(g).__name__}, expected a {type(w).__name__}"
        assert len(g) == len(w), f"{what}: {len(g)} entries, expected {len(w)}"
        for i, (a, b) in enumerate(zip(g, w)):
            assert_value_close(a, b, tol, f"{what}[{i}]")
    else:
        assert g == w, f"{what}: {g!r} != {w!r}"


def assert_same_params(got: dict, want: dict, tol: dict, what: str) -> None:
    assert_tensors_close(got["params"], want["params"], tol, f"{what} params")


def assert_same_state(got: dict, want: dict, tol: dict, what: str) -> None:
    assert sorted(got["state"]) == sorted(want["state"]), \
        f"{what}: state for {sorted(got['state'])}, expected {sorted(want['state'])}"
    for name in want["state"]:
        assert_tensors_close(got["state"][name], want["state"][name], tol, f"{what} state[{name}]")


def layout_problems(snap: dict, ref: dict) -> list[str]:
    """How ``snap``'s optimizer state departs from the layout torch.optim keeps on DTensors:
    an entry the unsharded run (``ref``) keeps parameter-shaped must have the parameter's layout
    (a DTensor on the parameter's mesh with its placements, for a DTensor parameter; a plain
    tensor otherwise); a scalar or counter (``step``) stays what it is unsharded (never a
    DTensor); and the entries are the unsharded run's."""
    problems = []
    for name, entries in ref["state_layout"].items():
        param, ref_param = snap["param_layout"][name], ref["param_layout"][name]
        got = snap["state_layout"].get(name)
        if got is None:
            problems.append(f"{name}: no state (unsharded: {sorted(entries)})")
            continue
        if sorted(got) != sorted(entries):
            problems.append(f"{name}: state entries {sorted(got)}, unsharded {sorted(entries)}")
        for key, r in entries.items():
            g = got.get(key)
            if g is None:
                continue
            if r["kind"] == "Tensor" and len(r["shape"]) > 0 and r["shape"] == ref_param["shape"]:
                if param["kind"] == "DTensor":
                    want = {k: param[k] for k in ("kind", "shape", "mesh", "placements")}
                    have = {k: g.get(k) for k in want}
                    if have != want:
                        problems.append(f"{name}[{key!r}] is {have}; the parameter is {want}")
                    elif not snap["same_mesh"][name].get(key, False):
                        problems.append(f"{name}[{key!r}]: a mesh equal in shape but not the parameter's mesh")
                elif g["kind"] != "Tensor" or g["shape"] != ref_param["shape"]:
                    problems.append(f"{name}[{key!r}] is {g}; the parameter is a plain tensor of {ref_param['shape']}")
            elif r["kind"] != "Tensor" or r["shape"] == ():
                if g["kind"] != r["kind"]:
                    problems.append(f"{name}[{key!r}] is a {g['kind']}; unsharded it is a {r['kind']} "
                                    "(scalars and counters such as step stay plain)")
    return problems
