"""torchstep.optim.swa_utils against torch.optim.swa_utils 2.13, in the same process."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn
from torch.optim import swa_utils as T

import torchstep.optim as ts_optim
from torchstep.optim import swa_utils as S

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}
FLOAT_TOL = dict(rel=1e-12, abs=1e-15)


def bn_net(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).to(dtype)


@torch.no_grad()
def train_a_bit(model, step):
    """Move every parameter and, through a training-mode forward, the BatchNorm buffers."""
    gen = torch.Generator().manual_seed(100 + step)
    dtype = next(model.parameters()).dtype
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=gen, dtype=dtype))
    model.train()
    model(torch.randn(8, 4, generator=gen, dtype=dtype) * 2 + 1)


def roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf)


def assert_same_state(ours: nn.Module, ref: nn.Module, tol: dict) -> None:
    got, want = ours.state_dict(), ref.state_dict()
    assert list(got) == list(want)
    for key, w in want.items():
        assert_close(got[key], w, tol, key)


def assert_close(got: torch.Tensor, want: torch.Tensor, tol: dict, what: str = "") -> None:
    """Same dtype, device and shape; values within ``tol`` (torch.allclose: much faster than
    torch.testing.assert_close, which matters at a few hundred comparisons)."""
    assert (got.dtype, got.device, got.shape) == (want.dtype, want.device, want.shape), what
    assert torch.allclose(got, want, **tol), f"{what}: {got} != {want}"


AVERAGING = {  # name -> kwargs built from a library's swa_utils module
    "swa": lambda lib: {},
    "swa_avg_fn": lambda lib: {"avg_fn": lib.get_swa_avg_fn()},
    "swa_multi": lambda lib: {"multi_avg_fn": lib.get_swa_multi_avg_fn()},
    "ema_avg_fn": lambda lib: {"avg_fn": lib.get_ema_avg_fn(0.9)},
    "ema_multi": lambda lib: {"multi_avg_fn": lib.get_ema_multi_avg_fn(0.8)},
}
# torch's multi-tensor SWA raises on the integer num_batches_tracked buffer (see test_swa_multi_on_integers)
COMBOS = [(n, b) for n in AVERAGING for b in (False, True) if not (n == "swa_multi" and b)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("averaging,use_buffers", COMBOS)
def test_averaged_model_matches_torch_step_by_step(averaging, use_buffers, dtype):
    model = bn_net(dtype)
    ref = T.AveragedModel(model, use_buffers=use_buffers, **AVERAGING[averaging](T))
    ours = S.AveragedModel(model, use_buffers=use_buffers, **AVERAGING[averaging](S))
    assert_same_state(ours, ref, TOL[dtype])
    for step in range(6):
        train_a_bit(model, step)
        ref.update_parameters(model)
        ours.update_parameters(model)
        assert_same_state(ours, ref, TOL[dtype])
        assert ours.n_averaged.dtype == torch.long and int(ours.n_averaged) == step + 1
    assert not torch.equal(ours.module[0].weight, model[0].weight)  # it did average
    x = torch.randn(5, 4, dtype=dtype)
    assert_close(ours.eval()(x), ref.eval()(x), TOL[dtype])


def test_buffers_copied_without_use_buffers_and_averaged_with():
    model = bn_net()
    copied, averaged = S.AveragedModel(model), S.AveragedModel(model, use_buffers=True)
    means = []
    for step in range(3):
        train_a_bit(model, step)
        means.append(model[1].running_mean.clone())
        copied.update_parameters(model)
        averaged.update_parameters(model)
    assert torch.equal(copied.module[1].running_mean, model[1].running_mean)
    assert_close(averaged.module[1].running_mean, sum(means) / 3, TOL[torch.float32])


def test_averaged_copy_in_another_dtype_matches_torch():
    model = bn_net(torch.float32)
    ref, ours = T.AveragedModel(model), S.AveragedModel(model, device="cpu")
    for step in range(4):
        train_a_bit(model, step)
        ref.update_parameters(model)
        ours.update_parameters(model)
        if step == 0:
            ref.double(), ours.double()
    assert_same_state(ours, ref, TOL[torch.float64])


@pytest.mark.parametrize("source", ["torch", "torchstep"])
def test_state_dict_loads_both_ways_and_training_continues(source):
    model = bn_net()
    libs = {"torch": T, "torchstep": S}
    writer = libs[source].AveragedModel(model, multi_avg_fn=libs[source].get_ema_multi_avg_fn(0.7), use_buffers=True)
    reader_lib = S if source == "torch" else T
    reader = reader_lib.AveragedModel(bn_net(seed=1), multi_avg_fn=reader_lib.get_ema_multi_avg_fn(0.7),
                                      use_buffers=True)
    for step in range(3):
        train_a_bit(model, step)
        writer.update_parameters(model)
    reader.load_state_dict(roundtrip(writer.state_dict()))
    assert list(reader.state_dict())[0] == "n_averaged" and int(reader.n_averaged) == 3
    for step in range(3, 6):
        train_a_bit(model, step)
        writer.update_parameters(model)
        reader.update_parameters(model)
    assert_same_state(reader, writer, TOL[torch.float32])


def test_is_a_torch_averaged_model_and_importable_from_optim():
    assert ts_optim.swa_utils.AveragedModel is S.AveragedModel
    assert isinstance(S.AveragedModel(nn.Linear(2, 2)), T.AveragedModel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.int64])
@pytest.mark.parametrize("count", [3, torch.tensor(3)], ids=["int", "tensor"])
@pytest.mark.parametrize("name", ["ema_multi", "ema", "swa"])
def test_averaging_functions_match_torch(name, count, dtype):
    gen = torch.Generator().manual_seed(7)
    avg = [(torch.randn(s, generator=gen) * 10).to(dtype) for s in [(3,), (2, 4), ()]]
    cur = [(torch.randn(s, generator=gen) * 10).to(dtype) for s in [(3,), (2, 4), ()]]
    want, got = [a.clone() for a in avg], [a.clone() for a in avg]
    if name == "ema_multi":
        T.get_ema_multi_avg_fn(0.75)(want, cur, count)
        S.get_ema_multi_avg_fn(0.75)(got, cur, count)
    else:
        pair = {"ema": (T.get_ema_avg_fn(0.75), S.get_ema_avg_fn(0.75)), "swa": (T.get_swa_avg_fn(), S.get_swa_avg_fn())}
        want = [pair[name][0](a, c, count) for a, c in zip(avg, cur)]
        got = [pair[name][1](a, c, count) for a, c in zip(avg, cur)]
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        assert_close(g, w, TOL.get(dtype, TOL[torch.float32]))


@pytest.mark.parametrize("count", [2, torch.tensor(2)], ids=["int", "tensor"])
def test_swa_multi_on_integers(count):
    """torch's multi-tensor SWA raises on integer tensors; ours gives the one-tensor SWA, truncated
    into the integer dtype (what torch's default CPU path stores)."""
    avg, cur = [torch.tensor([5, 7, -4])], [torch.tensor([9, 1, 3])]
    with pytest.raises(RuntimeError):
        T.get_swa_multi_avg_fn()([avg[0].clone()], cur, count)
    S.get_swa_multi_avg_fn()(avg, cur, count)
    assert torch.equal(avg[0], T.get_swa_avg_fn()(torch.tensor([5, 7, -4]), cur[0], count).long())


def conv_net():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, momentum=0.3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3 * 4 * 4, 5), nn.BatchNorm1d(5))
    with torch.no_grad():  # statistics that update_bn must discard
        net.train()(torch.randn(4, 2, 6, 6) * 5 - 2)
    return net


def batches(kind):
    gen = torch.Generator().manual_seed(11)
    xs = [torch.randn(n, 2, 6, 6, generator=gen) * 2 + 0.5 for n in (4, 7, 3, 6)]
    if kind == "tensor":
        return xs
    items = [(x, torch.zeros(len(x))) for x in xs]
    return items if kind == "tuple" else [list(item) for item in items]


@pytest.mark.parametrize("was_training", [True, False])
@pytest.mark.parametrize("kind,device", [("tensor", None), ("tuple", "cpu"), ("list", None)])
def test_update_bn_matches_torch(kind, device, was_training):
    ref, ours = conv_net(), conv_net()
    for net in (ref, ours):
        net.train(was_training)
        net[4].train(not was_training)  # a submodule in the other mode: both libraries reset it
    T.update_bn(batches(kind), ref, device=device)
    S.update_bn(batches(kind), ours, device=device)
    assert_same_state(ours, ref, TOL[torch.float32])
    assert int(ours[1].num_batches_tracked) == 4
    assert not torch.equal(ours[1].running_mean, conv_net()[1].running_mean)
    assert [m.training for m in ours.modules()] == [m.training for m in ref.modules()]
    assert ours.training == was_training and (ours[1].momentum, ours[5].momentum) == (0.3, 0.1)


def test_update_bn_through_averaged_model_and_without_batchnorm():
    ref, ours = T.AveragedModel(conv_net()), S.AveragedModel(conv_net())
    T.update_bn(batches("tuple"), ref)
    S.update_bn(batches("tuple"), ours)
    assert_same_state(ours, ref, TOL[torch.float32])
    plain = nn.Sequential(nn.Linear(3, 2)).eval()
    S.update_bn([torch.randn(2, 3)], plain)
    assert not plain.training


def test_update_bn_restores_momentum_when_the_pass_fails():
    net = conv_net().eval()
    with pytest.raises(RuntimeError):
        S.update_bn([torch.randn(2, 5)], net)
    assert (net[1].momentum, net[5].momentum, net.training) == (0.3, 0.1, False)


def sgd(lib, lrs):
    groups = [{"params": [torch.zeros(2, requires_grad=True)], "lr": lr} for lr in lrs]
    return lib.SGD(groups, lr=0.1, momentum=0.9)


def assert_lrs(got, want):
    assert got == pytest.approx(want, **FLOAT_TOL)


@pytest.mark.parametrize("handover", [0, 6], ids=["from_start", "after_6_steps"])
@pytest.mark.parametrize("opt_lib", [torch.optim, ts_optim], ids=["torch_opt", "torchstep_opt"])
@pytest.mark.parametrize("swa_lr", [0.05, [0.05, 0.2, 0.01]], ids=["scalar", "per_group"])
@pytest.mark.parametrize("anneal_epochs", [0, 1, 7, 10])
@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_swalr_lr_sequence_matches_torch(strategy, anneal_epochs, swa_lr, opt_lib, handover):
    lrs = [0.1, 0.5, 0.001]
    ref_opt, opt = sgd(torch.optim, lrs), sgd(opt_lib, lrs)
    ref = T.SWALR(ref_opt, swa_lr, anneal_epochs=anneal_epochs, anneal_strategy=strategy)
    ours = S.SWALR(opt, swa_lr, anneal_epochs=anneal_epochs, anneal_strategy=strategy)
    assert_lrs(ours.get_last_lr(), ref.get_last_lr())
    for step in range(60):
        ref_opt.step(), opt.step()
        if step < handover:  # another schedule drives the lr first; SWALR takes over from its value
            for group in ref_opt.param_groups + opt.param_groups:
                group["lr"] *= 0.9
            continue
        ref.step(), ours.step()
        assert_lrs(ours.get_last_lr(), ref.get_last_lr())
        assert_lrs([g["lr"] for g in opt.param_groups], [g["lr"] for g in ref_opt.param_groups])
    swa = swa_lr if isinstance(swa_lr, list) else [swa_lr] * 3
    assert_lrs(ours.get_last_lr(), swa)
    assert [g["swa_lr"] for g in opt.param_groups] == swa


@pytest.mark.parametrize("source", ["torch", "torchstep"])
def test_swalr_state_dict_resume(source):
    lrs, swa = [0.1, 0.02], [0.01, 0.05]
    full_opt = sgd(torch.optim, lrs)
    full = T.SWALR(full_opt, swa, anneal_epochs=30, anneal_strategy="cos")
    expected = []
    for _ in range(50):
        full_opt.step()
        full.step()
        expected.append(full.get_last_lr())
    libs = {"torch": (torch.optim, T), "torchstep": (ts_optim, S)}
    (w_opt_lib, w_swa), (r_opt_lib, r_swa) = libs[source], libs["torchstep" if source == "torch" else "torch"]
    opt = sgd(w_opt_lib, lrs)
    sched = w_swa.SWALR(opt, swa, anneal_epochs=30, anneal_strategy="cos")
    for _ in range(20):
        opt.step()
        sched.step()
    saved_opt, saved_sched = roundtrip(opt.state_dict()), roundtrip(sched.state_dict())
    assert "anneal_func" not in saved_sched and saved_sched["_anneal_strategy"] == "cos"
    opt2 = sgd(r_opt_lib, [1.0, 1.0])
    opt2.load_state_dict(saved_opt)
    sched2 = r_swa.SWALR(opt2, swa, anneal_epochs=3, anneal_strategy="linear")
    sched2.load_state_dict(saved_sched)
    assert (sched2.anneal_epochs, sched2.anneal_func(0.5)) == (30, 0.5 * (1 - math.cos(math.pi * 0.5)))
    for step in range(20, 50):
        opt2.step()
        sched2.step()
        assert_lrs(sched2.get_last_lr(), expected[step])


def test_swalr_get_lr_outside_step_warns_like_torch():
    sched = S.SWALR(sgd(ts_optim, [0.1]), 0.05)
    with pytest.warns(UserWarning, match="get_last_lr"):
        sched.get_lr()


def _ema_both(decay):
    return lambda lib: (lib.get_ema_avg_fn(decay), lib.get_ema_multi_avg_fn(decay))


ERRORS = [  # (name, call(lib), words our message must contain)
    ("swa_lr_length", lambda lib: lib.SWALR(sgd(torch.optim, [0.1, 0.2]), [0.1, 0.2, 0.3]),
     ["swa_lr", "3 values", "param_groups has 2"]),
    ("anneal_strategy", lambda lib: lib.SWALR(sgd(torch.optim, [0.1]), 0.1, anneal_strategy="exp"),
     ["anneal_strategy", "exp", "'cos' or 'linear'"]),
    ("anneal_epochs_negative", lambda lib: lib.SWALR(sgd(torch.optim, [0.1]), 0.1, anneal_epochs=-1),
     ["anneal_epochs", "-1", ">= 0"]),
    ("anneal_epochs_float", lambda lib: lib.SWALR(sgd(torch.optim, [0.1]), 0.1, anneal_epochs=2.5),
     ["anneal_epochs", "2.5", "int"]),
    ("decay_high", _ema_both(1.5), ["decay", "1.5", "[0.0, 1.0]"]),
    ("decay_negative", _ema_both(-0.1), ["decay", "-0.1", "[0.0, 1.0]"]),
    ("both_avg_fns", lambda lib: lib.AveragedModel(nn.Linear(2, 2), avg_fn=lib.get_swa_avg_fn(),
                                                   multi_avg_fn=lib.get_swa_multi_avg_fn()),
     ["avg_fn", "multi_avg_fn", "one of them"]),
]


@pytest.mark.parametrize("call,words", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_invalid_arguments_rejected_like_torch(call, words):
    with pytest.raises(Exception) as ref:
        call(T)
    with pytest.raises(type(ref.value)) as ours:
        call(S)
    assert type(ours.value) is type(ref.value)
    message = str(ours.value)
    assert message.startswith(str(ref.value)), (message, str(ref.value))
    for word in words:
        assert word in message


def test_nan_decay_rejected():
    """torch accepts a NaN decay (and then averages to NaN); we reject it."""
    with pytest.raises(ValueError, match="decay must be in"):
        S.get_ema_avg_fn(float("nan"))
