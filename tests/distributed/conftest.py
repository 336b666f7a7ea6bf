"""The distributed runs, each started once per session and read by many tests.

``two_ranks``: one 2-rank gloo job runs every case the 2-rank tests read (FSDP2, FSDP2 with CPU
offload, FSDP2 with ignored parameters, tensor parallel, DCP, ZeroRedundancyOptimizer);
``four_ranks``: one 4-rank job, FSDP2 + tensor parallel on a 2 x 2 mesh. Starting processes and a
process group takes seconds on a loaded 2-core machine, so the tests only read these results.
"""

from __future__ import annotations

import pytest
import torch.distributed

from registry import ALGORITHMS

from . import harness

# a torch built without distributed support (or without gloo) has nothing to run here
if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    collect_ignore_glob = ["test_*.py"]

NAMES = list(ALGORITHMS)

# options for the classes the registry gives no representative configuration: the option-rich
# end of their launch-count configurations; own-module classes get what their own tests use
_OWN_OPTIONS = {
    "Lookahead": dict(k=2, alpha=0.5),  # around AdamW(lr=1e-2, weight_decay=0.1): synchronises twice in STEPS
    # L-BFGS at its default max_iter=20 runs 120 float32 iterations in STEPS, a trajectory so
    # ill-conditioned that a relative change of 1e-7 in one weight moves the result by 1e-2 (and
    # float32 against float64 by as much): tensor parallel's other summation order of the same
    # products can't meet a float32 tolerance. 2 iterations a step keep the comparison meaningful
    # (the same change then moves the parameters by 6e-8 and H_diag by 2e-7 relative; at 3
    # iterations a step the two-loop scratch values ``al`` still differ by 3e-5 relative under
    # tensor parallel).
    "LBFGS": dict(max_iter=2),
}


def spec(name: str, lib: str = "torchstep", **extra) -> dict:
    """What a rank needs to build ``name``'s optimizer: class, library, options, model."""
    algo = ALGORITHMS.get(name)
    if name in _OWN_OPTIONS:
        kwargs = _OWN_OPTIONS[name]
    elif algo is not None:
        kwargs = algo.representative or algo.launch_configs[-1]
    else:
        kwargs = {}
    out = dict(name=name if lib == "torchstep" else f"torch.{name}", algo=name, lib=lib, kwargs=dict(kwargs))
    if name == "Muon":
        out["bias"] = False  # Muon takes 2-D parameters only
    if name == "SparseAdam":
        out["model"] = "embedding"  # sparse gradients
    out.update(extra)
    return out


# cases that may leave the ranks out of step (a rank-dependent number of closure calls), or fail
# inside FSDP2 itself: run after everything else, so a hang loses only them
LATE = ("LBFGS", "SparseAdam")
SETUPS = ("fsdp", "offload", "mixed", "tp")
# setup -> classes it does not run, and why (the tests skip those with this reason)
NOT_RUN = {
    "mixed": {"SparseAdam": "the embedding model has one module: ignoring its parameters leaves nothing sharded"},
    "tp": {"SparseAdam": "no tensor-parallel plan for a sparse embedding (DTensor has no sparse COO strategy)"},
    "fsdp_tp": {"SparseAdam": "no tensor-parallel plan for a sparse embedding (DTensor has no sparse COO strategy)"},
}
# torch.optim runs in the same job: the layout convention the tests hold torchstep to
# (torch.optim.Adam), whether FSDP2 can produce sparse gradients at all (torch.optim.SparseAdam),
# and CPU offload against torch.optim (AdamW)
TORCH_CASES = [("fsdp", "Adam"), ("fsdp", "SparseAdam"), ("offload", "AdamW"), ("tp", "Adam"), ("tp", "SGD")]
DCP_NAMES = ["Adam", "AdamW", "SGD", "Lion", "Adan", "Lamb", "Adafactor", "Prodigy", "Muon"]
ZERO_NAMES = ["AdamW", "Adam", "SGD", "Lion", "Lamb", "Adafactor", "Muon"]


def setup_spec(setup: str, name: str, lib: str = "torchstep") -> dict:
    extra = dict(model="tp_mlp") if setup == "tp" else {}
    return spec(name, lib, **extra)


def _plan(setups: tuple, late: bool) -> list[tuple[str, dict]]:
    plan = [(setup, setup_spec(setup, name)) for setup in setups for name in NAMES
            if (name in LATE) == late and name not in NOT_RUN.get(setup, {})]
    if not late:
        plan += [(setup, setup_spec(setup, name, "torch")) for setup, name in TORCH_CASES if name not in LATE]
    else:
        plan += [(setup, setup_spec(setup, name, "torch")) for setup, name in TORCH_CASES if name in LATE]
    return plan


@pytest.fixture(scope="session")
def ckpt_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("dcp"))


@pytest.fixture(scope="session")
def two_ranks(ckpt_root) -> dict:
    from . import jobs

    (result, _) = harness.run_on_ranks(
        jobs.two_rank_job, _plan(SETUPS, late=False), [spec(n) for n in DCP_NAMES], [spec(n) for n in ZERO_NAMES],
        _plan(SETUPS, late=True), ckpt_root, world=2, timeout=200)
    return result


@pytest.fixture(scope="session")
def four_ranks() -> dict:
    from . import jobs

    plan = [("fsdp_tp", spec(n)) for n in NAMES if n not in NOT_RUN["fsdp_tp"]]
    plan += [("fsdp_tp", spec(n, "torch")) for n in ("Adam", "SGD")]
    (result, *_) = harness.run_on_ranks(jobs.matrix_job, plan, (2, 2), ("dp", "tp"), world=4, timeout=200)
    return result
