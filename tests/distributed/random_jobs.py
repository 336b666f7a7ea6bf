"""Random legal configurations under FSDP2 (the 2-rank job :mod:`test_random_configs` reads).

The option sets come from the differential fuzzer's generator (``tests/differential``): for each
element-wise class torch has and each seed, the drawn ``defaults`` and per-group options, kept if
torch.optim accepts them (the fuzzer also draws invalid ones) and if torch's step runs with them
on plain tensors. Each kept configuration trains an FSDP2-sharded model (uneven shards: one rank
holds an empty shard of the last layer) with torchstep and, from the same start and batches, an
unsharded model with torchstep, and a sharded one with torch.optim (its for-loop path, the oracle
of the parity fuzzer); with lr changes between steps. The rank reports per case: the largest
relative difference of the gathered parameters from each, or the error.
"""

from __future__ import annotations

import copy
import warnings

import torch

from differential.optim_cases import _materialise, draw_config

from . import harness

CLASSES = ["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "RMSprop", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop"]
# options that choose torch's implementation or autograd mode: torchstep maps them to the same
# code, and torch's fused / capturable paths want devices this CPU test does not have
_LEFT_OUT = ("foreach", "fused", "capturable", "differentiable")
STEPS = 4


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5), torch.nn.Tanh(),
                               torch.nn.Linear(5, 1))


def _options(drawn: dict) -> dict:
    out = {}
    for k, v in drawn.items():
        if k in _LEFT_OUT:
            continue
        v = _materialise(v)
        if callable(v):  # a tensor hyperparameter, stored as a maker
            v = v()
        out[k] = v
    return out


def _groups(model: torch.nn.Module, group_options: list[dict]) -> list[dict]:
    layers = [m for m in model if isinstance(m, torch.nn.Linear)]
    first = {"params": list(layers[0].parameters()), **group_options[0]}
    rest = {"params": [p for m in layers[1:] for p in m.parameters()], **group_options[1]}
    return [first, rest]


def draw_cases(seeds: int) -> list[tuple]:
    """(class, defaults, [options of group 0, options of group 1]) per kept draw."""
    cases = []
    for cls in CLASSES:
        for seed in range(seeds):
            for attempt in range(20):
                cfg = draw_config(cls, seed, attempt)
                defaults = _options(cfg.defaults)
                groups = [_options(g["options"]) for g in cfg.groups[:2]] + [{}, {}]
                groups = groups[:2]
                try:  # legal for torch, and its step runs
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        model = _model()
                        opt = getattr(torch.optim, cls)(_groups(model, groups), **defaults)
                        model(torch.ones(2, 8)).sum().backward()
                        opt.step()
                except Exception:  # noqa: BLE001 -- an illegal draw: draw again
                    continue
                cases.append((cls, defaults, groups))
                break
    return cases


def _train(model, opt, lr_at: dict) -> None:
    gen = torch.Generator().manual_seed(3)
    for step in range(STEPS):
        if step in lr_at:
            for group in opt.param_groups:
                group["lr"] = lr_at[step] if not isinstance(group["lr"], torch.Tensor) else group["lr"].fill_(lr_at[step])
        x = torch.randn(6, 8, generator=gen)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def run_random_configs(rank: int, world: int, seeds: int) -> list[dict]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import torchstep.optim as ts

    mesh = init_device_mesh("cpu", (world,))
    out = []
    for k, (cls, defaults, groups) in enumerate(draw_cases(seeds)):
        harness.progress(f"case {k}: {cls} {defaults} {groups}")
        record = dict(cls=cls, defaults=repr(defaults), groups=repr(groups))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sharded, plain, theirs = _model(), _model(), _model()
                for model in (sharded, theirs):
                    for m in model:
                        if isinstance(m, torch.nn.Linear):
                            fully_shard(m, mesh=mesh)
                    fully_shard(model, mesh=mesh)
                lr_at = {2: 0.003}
                for model, lib in ((sharded, ts), (plain, ts), (theirs, torch.optim)):
                    # (fresh copies of the options: a tensor lr is changed in place); torch's
                    # for-loop path, whose rounding the parity fuzzer holds torchstep to
                    extra = {"foreach": False} if lib is torch.optim else {}
                    opt = getattr(lib, cls)(_groups(model, copy.deepcopy(groups)), **copy.deepcopy(defaults), **extra)
                    try:
                        _train(model, opt, lr_at)
                    except Exception as exc:  # noqa: BLE001
                        if lib is not torch.optim:
                            raise
                        # torch's own step fails on DTensors here (e.g. Rprop's index_put_)
                        record["torch_error"] = f"{type(exc).__name__}: {exc}"[:300]
            for key, other in (("diff", plain), ("diff_torch", theirs)):
                if key == "diff_torch" and "torch_error" in record:
                    continue
                diffs = []
                for p, q in zip(sharded.parameters(), other.parameters()):
                    full, want = p.full_tensor(), q.full_tensor() if other is theirs else q
                    diffs.append(((full - want).abs() / (want.abs() + 1e-2)).max().item())
                record[key] = max(diffs)
        except Exception as exc:  # noqa: BLE001 -- reported per case
            record["error"] = f"{type(exc).__name__}: {exc}"[:500]
        out.append(record)
    return out
