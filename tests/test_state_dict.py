"""state_dict interchange with torch.optim in the middle of training, both ways."""

import pytest
import torch

import torchstep.optim as ts_optim
from helpers import SHAPES, interchange, make_params, set_grads, through_disk, twin, build, groups_for
from registry import CASES, REPRESENTATIVE

ALGOS = list(REPRESENTATIVE)
# a broader sweep: every registry row that uses no implementation switch
PLAIN_CASES = [c for c in CASES if not ({"foreach", "fused", "capturable"} & set(c.kwargs))]
# torch casts every state tensor but ``step`` to the parameter's dtype on load, 0-d ``mu_product`` /
# ``eta`` / ``mu`` included: in float64 a reloaded run (torch's own too) leaves the float32 scalar
# arithmetic of an uninterrupted one. These interchange in float32, where the cast is a no-op
# (float64 reloads are compared with torch's own reload in test_scalar_state.py).
LOAD_CASTS_SCALAR_STATE = {"NAdam", "ASGD"}


def _dtype(algo):
    return torch.float32 if algo in LOAD_CASTS_SCALAR_STATE else torch.float64


def _interchange(algo, kwargs, group2, first, second, dtype=torch.float64):
    """Train ``first`` 12 steps, hand its state_dict to ``second``, then run both 12 more steps
    next to an uninterrupted ``first`` oracle; all three must agree."""
    return interchange(algo, kwargs, dtype, SHAPES, group2, first, second)


@pytest.mark.parametrize("direction", [("torch", "torchstep"), ("torchstep", "torch")], ids=["torch->ts", "ts->torch"])
@pytest.mark.parametrize("algo", ALGOS)
def test_interchange_representative(algo, direction):
    _interchange(algo, REPRESENTATIVE[algo], {"lr": 0.003}, *direction, dtype=_dtype(algo))


@pytest.mark.parametrize("case", PLAIN_CASES, ids=[c.id for c in PLAIN_CASES])
def test_interchange_every_plain_row(case):
    _interchange(case.algo, case.kwargs, case.group2, "torch", "torchstep", dtype=_dtype(case.algo))
    _interchange(case.algo, case.kwargs, case.group2, "torchstep", "torch", dtype=_dtype(case.algo))


@pytest.mark.parametrize("algo", ALGOS)
def test_state_dict_has_torchs_layout(algo):
    ref, mine = make_params(torch.float32), None
    mine = twin(ref)
    t = build(algo, groups_for(ref, {"lr": 0.003}), REPRESENTATIVE[algo], "torch")
    s = build(algo, groups_for(mine, {"lr": 0.003}), REPRESENTATIVE[algo], "torchstep")
    set_grads(0, list(zip(ref, mine)))
    t.step()
    s.step()
    tsd, ssd = t.state_dict(), s.state_dict()
    assert tsd["param_groups"] == ssd["param_groups"]
    assert tsd["state"].keys() == ssd["state"].keys()
    for k in tsd["state"]:
        assert list(tsd["state"][k]) == list(ssd["state"][k])  # same keys, same order
        for name, v in tsd["state"][k].items():
            w = ssd["state"][k][name]
            assert type(v) is type(w)
            if isinstance(v, torch.Tensor):
                assert (v.dtype, v.device, v.shape) == (w.dtype, w.device, w.shape)


def test_param_names_saved_and_kept():
    model = torch.nn.Linear(3, 2)
    opt = ts_optim.Adam(model.named_parameters(), lr=0.1)
    ref = torch.optim.Adam(model.named_parameters(), lr=0.1)
    assert opt.state_dict()["param_groups"] == ref.state_dict()["param_groups"]
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]


def test_sparse_adam_interchange():
    torch.manual_seed(0)
    emb_t = torch.nn.Embedding(10, 3, sparse=True)
    emb_s = torch.nn.Embedding(10, 3, sparse=True)
    emb_s.load_state_dict(emb_t.state_dict())
    t, s = torch.optim.SparseAdam(emb_t.parameters(), lr=0.1), ts_optim.SparseAdam(emb_s.parameters(), lr=0.1)
    for step in range(10):
        idx = torch.tensor([step % 10, (3 * step) % 10, 7])
        for emb, opt in ((emb_t, t), (emb_s, s)):
            opt.zero_grad()
            emb(idx).pow(2).sum().backward()
            opt.step()
        if step == 4:
            s.load_state_dict(through_disk(t.state_dict()))
    torch.testing.assert_close(emb_s.weight, emb_t.weight)
    t2 = torch.optim.SparseAdam(emb_t.parameters(), lr=0.1)
    t2.load_state_dict(s.state_dict())
    assert t2.state_dict()["state"][0]["step"] == 10


def test_mismatched_state_dict_rejected():
    a = ts_optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1, momentum=0.9)
    b = ts_optim.SGD([{"params": [torch.zeros(2, requires_grad=True)]}, {"params": [torch.zeros(1, requires_grad=True)]}], lr=0.1)
    with pytest.raises(ValueError, match=r"different number of parameter groups \(1 saved, 2 in this optimizer\)"):
        b.load_state_dict(a.state_dict())
    c = ts_optim.SGD([torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match=r"doesn't match the size of optimizer's group \(group 0: 1 saved, 2 here\)"):
        c.load_state_dict(a.state_dict())


def test_load_casts_state_to_param_dtype_and_keeps_step():
    p64 = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    p32 = torch.zeros(3, dtype=torch.float32, requires_grad=True)
    src = ts_optim.Adam([p64], lr=0.1)
    p64.grad = torch.ones(3, dtype=torch.float64)
    src.step()
    dst = ts_optim.Adam([p32], lr=0.1)
    dst.load_state_dict(src.state_dict())
    assert dst.state[p32]["exp_avg"].dtype == torch.float32
    assert dst.state[p32]["step"].dtype == torch.float32 and dst.state[p32]["step"].item() == 1


def test_old_style_integer_step_is_upgraded():
    p = torch.zeros(3, requires_grad=True)
    opt = ts_optim.Adam([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["step"] = 1  # checkpoints from old torch versions stored a Python number
    opt.load_state_dict(sd)
    assert torch.is_tensor(opt.state[p]["step"])
    opt.step()
    assert opt.state[p]["step"].item() == 2


def test_adamw_load_keeps_decoupled():
    p = torch.zeros(3, requires_grad=True)
    adam = ts_optim.Adam([p], lr=0.1, weight_decay=0.1)
    adamw = ts_optim.AdamW([torch.zeros(3, requires_grad=True)])
    adamw.load_state_dict(adam.state_dict())
    assert adamw.param_groups[0]["decoupled_weight_decay"] is True


def test_pickle_round_trip():
    import pickle

    p = torch.nn.Parameter(torch.ones(3))
    opt = ts_optim.Adam([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    clone = pickle.loads(pickle.dumps(opt))
    assert clone.param_groups[0]["lr"] == 0.1
    assert len(clone.state) == 1
    clone.register_step_post_hook(lambda *a: None)  # hook dicts exist after unpickling
