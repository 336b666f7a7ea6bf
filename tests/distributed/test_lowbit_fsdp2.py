"""Reduced-precision optimizer state (``state_dtype``) under FSDP2 on 2 ranks (gloo, CPU).

One 2-rank job (:func:`lowbit_jobs.lowbit_job`, ~15 s) trains AdamW(lr=1e-2, weight_decay=0.1)
with ``state_dtype="int8"``, ``torch.bfloat16`` and ``None`` on a ``fully_shard``-ed
``Linear(16, 257) -> Tanh -> Linear(257, 1)`` and on an unsharded copy, and takes its state
through DCP in torch's format and in the compact one. Only the first weight (4112 elements) is
quantized; FSDP2 cuts it 129 + 128 rows, so rank 1's int8 blocks straddle the whole tensor's
block boundaries (see the job module).

Tolerances. Adam moves an element by about ``lr`` per step at most (|m_hat / sqrt(v_hat)| <~ 1),
so ``LR * steps`` bounds how far any element travels (here the largest float32 move is 0.055 of
0.06). Int8 state perturbs each step's update by a few code steps of the dynamic map -- its
spacing is 0.9/64 of the block scale in the top decade and relatively coarser below, so an
element a decade under its block's maximum reads back within ~7% -- and the perturbations then
feed back through the loss into every gradient. We allow each element 10% of the largest
possible travel (``0.1 * LR * steps``; measured: 0.0023 of 0.006 after 6 steps) and the mean
absolute difference 1% of it (measured 2.5e-4 of 6e-4). A bug in how blocks map to shards
(scales of the wrong block, the global instead of the local block grid) misreads values by
factors, i.e. differences of the order of ``lr`` per step, far outside these bounds.
bfloat16 state rounds each write to 8 bits of mantissa (relative 2**-9): we allow 2% of the
travel (measured 2.0e-4 of 1.2e-3). bfloat16 state is element-wise, so the sharded run equals the
unsharded one to float32 tolerance (in fact bit for bit).
"""

from __future__ import annotations

import pytest
import torch

from torchstep.core import lowbit

from . import harness, lowbit_jobs
from .checks import require_ok, tol_for

LR, STEPS, SAVE_AT = lowbit_jobs.LR, lowbit_jobs.STEPS, lowbit_jobs.SAVE_AT
WEIGHT, SMALL = "0.weight", ("0.bias", "2.weight", "2.bias")
# the fraction of the largest possible travel (LR * steps) a reduced-precision run may differ by
BOUNDS = {"int8": dict(max=0.1, mean=0.01), "bf16": dict(max=0.02, mean=0.002)}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    root = str(tmp_path_factory.mktemp("lowbit-dcp"))
    return harness.run_on_ranks(lowbit_jobs.lowbit_job, root, world=2, timeout=200)


def _train(ranks, config: str, rank: int = 0) -> dict:
    case = ranks[rank]["train"][config]
    require_ok(case, f"AdamW state_dtype={config} on FSDP2 (rank {rank})")
    return case


def _assert_within_travel(got: dict, want: dict, bound: dict, steps: int, what: str) -> None:
    travel = LR * steps
    for name in want:
        diff = (got[name] - want[name]).abs()
        assert diff.max() <= bound["max"] * travel, \
            f"{what} {name}: max |diff| {diff.max():.3g} > {bound['max']} * lr * steps = {bound['max'] * travel:.3g}"
        assert diff.mean() <= bound["mean"] * travel, \
            f"{what} {name}: mean |diff| {diff.mean():.3g} > {bound['mean']} * lr * steps = {bound['mean'] * travel:.3g}"


def _plain_or_dtensor(layout: dict) -> bool:
    """A plain tensor, or a DTensor whose local tensor is plain (no Parameter, no other subclass)."""
    return layout["cls"] == "Tensor" or (layout["cls"] == "DTensor" and layout["local_cls"] == "Tensor")


# -- 1. training ------------------------------------------------------------------------------------

@pytest.mark.parametrize("rank", [0, 1])
def test_int8_state_layout_under_fsdp2(ranks, rank):
    """Codes: uint8 DTensors laid out as the parameter (same mesh, placements, local shape);
    block scales: plain float32 tensors, one per 256 elements of the *local* shard (rank 0:
    129 x 16 = 2064 elements, 9 blocks; rank 1: 2048, 8); the small parameters' state stays
    float32 DTensors; ``step`` a plain 0-d tensor; nothing of another tensor subclass."""
    snap = _train(ranks, "int8", rank)["state"]
    param = snap["param_layout"][WEIGHT]
    st = snap["state"][WEIGHT]
    assert sorted(st) == ["exp_avg", "exp_avg.absmax", "exp_avg_sq", "exp_avg_sq.absmax", "step"]
    local_numel = param["local_shape"][0] * param["local_shape"][1]
    for key in ("exp_avg", "exp_avg_sq"):
        codes, scales = st[key], st[key + lowbit.ABSMAX]
        assert codes["layout"]["cls"] == "DTensor" and codes["layout"]["dtype"] == "torch.uint8", codes["layout"]
        for attr in ("shape", "local_shape", "placements", "mesh"):
            assert codes["layout"][attr] == param[attr], (key, attr, codes["layout"], param)
        assert codes["same_mesh"], key
        assert scales["layout"] == dict(cls="Tensor", dtype="torch.float32", shape=(lowbit.blocks(local_numel),)), \
            (key, scales["layout"])
    assert lowbit.blocks(local_numel) == (9 if rank == 0 else 8)
    for name in SMALL:
        sm = snap["state"][name]
        assert sorted(sm) == ["exp_avg", "exp_avg_sq", "step"], (name, sorted(sm))
        for key in ("exp_avg", "exp_avg_sq"):
            lay = sm[key]["layout"]
            assert lay["cls"] == "DTensor" and lay["dtype"] == "torch.float32", (name, key, lay)
            assert lay["placements"] == snap["param_layout"][name]["placements"], (name, key)
    for name, st_ in snap["state"].items():
        for key, entry in st_.items():
            assert _plain_or_dtensor(entry["layout"]), (name, key, entry["layout"])
        assert st_["step"]["layout"] == dict(cls="Tensor", dtype="torch.float32", shape=()), name


@pytest.mark.parametrize("rank", [0, 1])
def test_int8_blocks_are_cut_over_the_local_shard(ranks, rank):
    """Each 256-element block of a rank's local codes holds its block's extreme code (the
    element whose magnitude is the block scale reads back as +1 or, signed, as the most negative
    code): the scales belong to blocks of the local shard, not of the whole tensor (rank 1's
    shard starts at element 2064, inside the whole tensor's block 8)."""
    st = _train(ranks, "int8", rank)["state"]["state"][WEIGHT]
    for key, extremes in (("exp_avg", (0, 255)), ("exp_avg_sq", (255,))):
        codes = st[key]["local"].reshape(-1).long()
        scales = st[key + lowbit.ABSMAX]["local"]
        for b in range(scales.numel()):
            block = codes[b * lowbit.BLOCK:(b + 1) * lowbit.BLOCK]
            assert scales[b] > 0 and any(bool((block == e).any()) for e in extremes), \
                f"rank {rank} {key} block {b}: scale {scales[b]}, no extreme code among {block.unique().tolist()}"


def test_int8_first_step_matches_where_blocks_coincide(ranks):
    """After one step (same gradients, bit for bit), rank 0's first 8 blocks are the whole
    tensor's first 8 blocks: their codes, scales and parameters equal the unsharded run's
    exactly; the small parameters' full-precision state and values equal it too."""
    case = _train(ranks, "int8", 0)
    first, ref = case["first"], case["ref_first"]
    n = 8 * lowbit.BLOCK
    for key in ("exp_avg", "exp_avg_sq"):
        got = first["state"]["state"][WEIGHT][key]["local"].reshape(-1)[:n]
        want = ref["state"]["state"][WEIGHT][key]["local"].reshape(-1)[:n]
        assert torch.equal(got, want), f"{key} codes of the coinciding blocks differ at {int((got != want).sum())} places"
        got_s = first["state"]["state"][WEIGHT][key + lowbit.ABSMAX]["local"][:8]
        want_s = ref["state"]["state"][WEIGHT][key + lowbit.ABSMAX]["local"][:8]
        assert torch.equal(got_s, want_s), (key, got_s, want_s)
    assert torch.equal(first["params"][WEIGHT].reshape(-1)[:n], ref["params"][WEIGHT].reshape(-1)[:n])
    for name in SMALL:
        torch.testing.assert_close(first["params"][name], ref["params"][name], **tol_for("AdamW"))


def test_bf16_state_layout_under_fsdp2(ranks):
    snap = _train(ranks, "bf16")["state"]
    for name, st in snap["state"].items():
        param = snap["param_layout"][name]
        assert sorted(st) == ["exp_avg", "exp_avg_sq", "step"], (name, sorted(st))
        for key in ("exp_avg", "exp_avg_sq"):
            lay = st[key]["layout"]
            assert lay["cls"] == "DTensor" and lay["local_cls"] == "Tensor" and lay["dtype"] == "torch.bfloat16", lay
            for attr in ("shape", "local_shape", "placements", "mesh"):
                assert lay[attr] == param[attr], (name, key, attr)


@pytest.mark.parametrize("config", ["int8", "bf16"])
def test_sharded_matches_unsharded_same_state_dtype(ranks, config):
    case = _train(ranks, config)
    if config == "bf16":  # element-wise, so no block boundaries: float32 tolerance
        for name, want in case["ref_params"].items():
            torch.testing.assert_close(case["params"][name], want, **tol_for("AdamW"))
    _assert_within_travel(case["params"], case["ref_params"], BOUNDS[config], STEPS, f"{config} FSDP2 vs unsharded")


@pytest.mark.parametrize("config", ["int8", "bf16"])
def test_sharded_matches_float32_state(ranks, config):
    case, fp32 = _train(ranks, config), _train(ranks, "fp32")
    # the float32-state run itself is the unsharded one under FSDP2
    for name, want in fp32["ref_params"].items():
        torch.testing.assert_close(fp32["params"][name], want, **tol_for("AdamW"))
    _assert_within_travel(case["params"], fp32["ref_params"], BOUNDS[config], STEPS, f"{config} FSDP2 vs float32 state")
    _assert_within_travel(case["ref_params"], fp32["ref_params"], BOUNDS[config], STEPS,
                          f"{config} unsharded vs float32 state")
    # and the reduced state did change something (the comparison is not vacuous)
    assert not torch.equal(case["params"][WEIGHT], fp32["params"][WEIGHT])


# -- 2. torch's format through DCP ------------------------------------------------------------------

@pytest.mark.parametrize("config", ["int8", "bf16"])
def test_torch_format_holds_parameter_dtype_dtensors(ranks, config):
    """``state_dict()``: every moment a float32 DTensor laid out as its parameter (no codes, no
    scales), equal to the in-memory state dequantized (int8) or cast up (bfloat16)."""
    case = _train(ranks, config)
    assert case["sd_group_state_dtype"] == repr(lowbit_jobs.CONFIGS[config]["state_dtype"])
    order = list(case["params"])  # state_dict numbers parameters in model order
    for i, name in enumerate(order):
        entries = case["sd_layout"][str(i)]
        assert sorted(entries) == ["exp_avg", "exp_avg_sq", "step"], (name, sorted(entries))
        param = case["state"]["param_layout"][name]
        for key in ("exp_avg", "exp_avg_sq"):
            lay = entries[key]
            assert lay["cls"] == "DTensor" and lay["local_cls"] == "Tensor" and lay["dtype"] == "torch.float32", lay
            for attr in ("shape", "local_shape", "placements", "mesh"):
                assert lay[attr] == param[attr], (name, key, attr)
            assert torch.equal(case["sd_whole"][str(i)][key], case["dequantized"][name][key]), (name, key)
    dcp_case = ranks[0]["dcp"][config]
    require_ok(dcp_case, f"{config}: torch format through DCP")
    for name, entries in dcp_case["saved_layout"].items():  # get_optimizer_state_dict: FQN keys
        for key in ("exp_avg", "exp_avg_sq"):
            assert entries[key]["cls"] == "DTensor" and entries[key]["dtype"] == "torch.float32", (name, key)


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("config", ["int8", "bf16"])
def test_torch_format_dcp_load_restores_state(ranks, config, rank):
    """After dcp.load + set_optimizer_state_dict into a fresh FSDP2 model and optimizer, the
    state is held in the same forms and layouts; full-precision and bfloat16 entries are
    restored exactly; int8 entries (re-quantized from their dequantized values) read back
    within 2% of their block's scale (half the widest code gap, 0.7%, plus the signed map's
    missing -1: a block whose extreme is negative comes back with its scale times 0.99297)."""
    case = ranks[rank]["dcp"][config]
    require_ok(case, f"{config}: torch format through DCP (rank {rank})")
    saved, loaded = case["saved_state"], case["loaded_state"]
    assert sorted(saved["state"]) == sorted(loaded["state"])
    for name, st in saved["state"].items():
        assert sorted(st) == sorted(loaded["state"][name]), name
        for key, entry in st.items():
            assert loaded["state"][name][key]["layout"] == entry["layout"], (name, key)
            if config == "int8" and name == WEIGHT and key != "step":
                continue  # compared below, as values
            assert torch.equal(loaded["state"][name][key]["local"], entry["local"]), (name, key)
    if config == "int8":
        for key in ("exp_avg", "exp_avg_sq"):
            form = lowbit.INT8_UNSIGNED if key == "exp_avg_sq" else lowbit.INT8_SIGNED  # AdamW's v is nonnegative
            s, l_ = saved["state"][WEIGHT], loaded["state"][WEIGHT]
            before = lowbit.dequantize(s[key]["local"], s[key + lowbit.ABSMAX]["local"], form, torch.float32)
            after = lowbit.dequantize(l_[key]["local"], l_[key + lowbit.ABSMAX]["local"], form, torch.float32)
            scale = s[key + lowbit.ABSMAX]["local"].repeat_interleave(lowbit.BLOCK)[:before.numel()].view(before.shape)
            excess = ((after - before).abs() - 0.02 * scale).max()
            assert excess <= 0, f"rank {rank} {key}: a loaded value is {excess:.3g} beyond 2% of its block scale"


@pytest.mark.parametrize("config", ["int8", "bf16"])
def test_torch_format_dcp_resume_matches_uninterrupted(ranks, config):
    case = ranks[0]["dcp"][config]
    require_ok(case, f"{config}: torch format through DCP")
    if config == "bf16":  # bfloat16 -> float32 -> bfloat16 is exact: the resumed run is the same run
        for name, want in case["uninterrupted"].items():
            torch.testing.assert_close(case["resumed"][name], want, **tol_for("AdamW"))
    _assert_within_travel(case["resumed"], case["uninterrupted"], BOUNDS[config], STEPS - SAVE_AT,
                          f"{config} resumed (torch format) vs uninterrupted")


# -- 3. the compact format through DCP --------------------------------------------------------------

def test_compact_format_entries_are_dtensors(ranks):
    """``state_dict(compact=True)``: codes a uint8 DTensor laid out as the parameter, block
    scales a float32 DTensor of ``ranks * K`` values sharded over the mesh (K = 9, the most
    blocks any shard has; rank 1's 8 are zero-padded); the small parameters' state float32."""
    case = ranks[0]["compact"]
    require_ok(case, "compact format through DCP")
    param = case["saved"]["param_layout"][WEIGHT]
    entries = case["compact_layout"]["0"]
    assert sorted(entries) == ["exp_avg.absmax", "exp_avg.codes", "exp_avg.layout", "exp_avg_sq.absmax",
                               "exp_avg_sq.codes", "exp_avg_sq.layout", "step"]
    for key in ("exp_avg", "exp_avg_sq"):
        codes, scales = entries[key + ".codes"], entries[key + lowbit.ABSMAX]
        assert codes["cls"] == "DTensor" and codes["local_cls"] == "Tensor" and codes["dtype"] == "torch.uint8"
        for attr in ("shape", "local_shape", "placements", "mesh"):
            assert codes[attr] == param[attr], (key, attr)
        assert scales["cls"] == "DTensor" and scales["local_cls"] == "Tensor" and scales["dtype"] == "torch.float32"
        assert scales["shape"] == (18,) and scales["local_shape"] == (9,) and scales["placements"] == ("S(0)",), scales
        # the layout record: a plain int64 tensor, mesh (2,) and Shard(0) (coded 0 + 1)
        assert entries[key + ".layout"] == dict(cls="Tensor", dtype="torch.int64", shape=(2,)), entries[key + ".layout"]
    for i in ("1", "2", "3"):
        for key in ("exp_avg", "exp_avg_sq"):
            assert case["compact_layout"][i][key]["dtype"] == "torch.float32", (i, key)


@pytest.mark.parametrize("rank", [0, 1])
def test_compact_format_dcp_round_trip_is_bit_exact(ranks, rank):
    """dcp.save of ``state_dict(compact=True)``, dcp.load into a fresh optimizer's (other state)
    compact dict on the same mesh, ``load_state_dict``: every codes, scales, moment and step
    tensor equals the saved one bit for bit, in the same layout; three more steps on both
    copies give identical parameters and state."""
    case = ranks[rank]["compact"]
    require_ok(case, f"compact format through DCP (rank {rank})")
    saved, loaded = case["saved"]["state"], case["loaded"]["state"]
    assert sorted(saved) == sorted(loaded)
    for name, st in saved.items():
        assert sorted(st) == sorted(loaded[name]), name
        for key, entry in st.items():
            assert loaded[name][key]["layout"] == entry["layout"], (name, key)
            assert torch.equal(loaded[name][key]["local"], entry["local"]), f"rank {rank} {name}[{key}] changed"
    for name, want in case["uninterrupted"].items():
        assert torch.equal(case["resumed"][name], want), name
    for name, st in case["uninterrupted_state"]["state"].items():
        for key, entry in st.items():
            assert torch.equal(case["resumed_state"]["state"][name][key]["local"], entry["local"]), (name, key)


@pytest.mark.parametrize("rank", [0, 1])
def test_compact_format_refuses_another_layout(ranks, rank):
    """The compact checkpoint saved with the first weight cut on dim 0, DCP-loaded where it is cut
    on dim 1 (same mesh, the same 9 padded blocks per rank, so DCP itself loads everything):
    ``load_state_dict`` raises a ValueError naming both layouts and the way out, and that
    parameter keeps its own state -- codes, scales and step -- bit for bit (its compact entries
    are copies, so dcp.load wrote into those, not into the optimizer; the other parameters'
    full-precision state is shared and DCP loads it in place, as with torch.optim). Before the
    layout record, it loaded, and the moments read back up to 55% of their largest value off."""
    case = ranks[rank]["compact_other_layout"]
    require_ok(case, f"compact checkpoint onto another layout (rank {rank})")
    msg = case["refused"]
    assert "was saved on a mesh (2,) with placements (Shard(0))" in msg, msg
    assert "this parameter is on a mesh (2,) with placements (Shard(1))" in msg, msg
    assert "torch's format" in msg, msg
    before, after = case["before"]["state"][WEIGHT], case["after"]["state"][WEIGHT]
    assert sorted(before) == sorted(after) == ["exp_avg", "exp_avg.absmax", "exp_avg_sq", "exp_avg_sq.absmax", "step"]
    for key, entry in before.items():
        assert torch.equal(after[key]["local"], entry["local"]), key
