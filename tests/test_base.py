"""The Optimizer base: groups, zero_grad, closures, hooks, and torch's ecosystem accepting it."""

import warnings

import pytest
import torch

import torchstep.optim as ts_optim


def _p(*shape):
    return torch.nn.Parameter(torch.randn(*shape))


def test_is_a_torch_optimizer():
    opt = ts_optim.AdamW([_p(2)])
    assert isinstance(opt, torch.optim.Optimizer)
    assert isinstance(opt, ts_optim.Optimizer)


def test_groups_fall_back_to_defaults():
    a, b = _p(2), _p(3)
    opt = ts_optim.SGD([{"params": [a]}, {"params": b, "lr": 0.5, "momentum": 0.9}], lr=0.1)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["momentum"] == 0
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[1]["momentum"] == 0.9
    assert opt.param_groups[1]["params"] == [b]
    assert opt.defaults["lr"] == 0.1


def test_add_param_group_rules():
    a, b = _p(2), _p(2)
    opt = ts_optim.Adam([a], lr=0.1)
    opt.add_param_group({"params": [b], "lr": 0.01})
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        opt.add_param_group({"params": [a]})
    with pytest.raises(TypeError, match="param_group must be a dict"):
        opt.add_param_group([a])
    with pytest.raises(TypeError, match="ordered collections"):
        opt.add_param_group({"params": {_p(2)}})
    with pytest.raises(ValueError, match="non-leaf"):
        opt.add_param_group({"params": [_p(2) * 2]})
    with pytest.raises(ValueError, match="cannot add param group with names"):
        opt.add_param_group({"params": [("w", _p(2))]})
    with pytest.warns(UserWarning, match="duplicate parameters"):
        ts_optim.SGD([a, a], lr=0.1)


def test_required_option():
    from torchstep.core.optimizer import required

    class Custom(ts_optim.Optimizer):
        def __init__(self, params, lr=required):
            super().__init__(params, {"lr": lr})

    with pytest.raises(ValueError, match="didn't specify a value of required optimization parameter lr"):
        Custom([_p(2)])
    assert Custom([{"params": [_p(2)], "lr": 0.1}]).param_groups[0]["lr"] == 0.1


def test_custom_optimizer_written_for_torch_runs_on_torchstep_base():
    class MySGD(ts_optim.Optimizer):
        def __init__(self, params, lr=0.1):
            super().__init__(params, {"lr": lr})

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-group["lr"])

    p = _p(3)
    before = p.detach().clone()
    calls = []
    opt = MySGD([p])
    opt.register_step_post_hook(lambda *a: calls.append("post"))
    p.grad = torch.ones(3)
    opt.step()
    torch.testing.assert_close(p.detach(), before - 0.1)
    assert calls == ["post"]


def test_zero_grad():
    p = _p(3)
    opt = ts_optim.SGD([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.zero_grad(set_to_none=False)
    assert p.grad is not None and p.grad.abs().sum() == 0
    opt.zero_grad()
    assert p.grad is None


def test_step_with_closure_returns_loss_and_enables_grad():
    p = _p(3)
    opt = ts_optim.Adam([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() > 0


def test_params_without_grad_are_skipped_and_keep_no_state():
    a, b = _p(2), _p(2)
    opt = ts_optim.Adam([a, b], lr=0.1)
    a.grad = torch.ones(2)
    before = b.detach().clone()
    opt.step()
    assert b not in opt.state and torch.equal(b.detach(), before)


def test_step_hooks_order_and_removal():
    p = _p(2)
    opt = ts_optim.SGD([p], lr=0.1)
    calls = []
    h1 = opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", o is opt)))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", o is opt)))
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    g1 = register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("global-pre", True)))
    try:
        p.grad = torch.ones(2)
        opt.step()
    finally:
        g1.remove()
    assert calls == [("global-pre", True), ("pre", True), ("post", True)]
    h1.remove()
    calls.clear()
    opt.step()
    assert calls == [("post", True)]


def test_pre_hook_can_replace_arguments():
    p = _p(2)
    opt = ts_optim.SGD([p], lr=0.1)
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: ((), {"closure": lambda: seen.append(1) or 5.0}))
    assert opt.step() == 5.0 and seen == [1]
    opt.register_step_pre_hook(lambda o, args, kwargs: "bad")
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        opt.step()


def test_state_dict_hooks():
    p = _p(2)
    opt = ts_optim.SGD([p], lr=0.1, momentum=0.9)
    order = []
    opt.register_state_dict_pre_hook(lambda o: order.append("pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    opt.register_state_dict_post_hook(lambda o, sd: order.append("first"), prepend=True)
    sd = opt.state_dict()
    assert sd["extra"] == 1 and order == ["pre", "first"]
    opt.register_load_state_dict_pre_hook(lambda o, sd: {k: v for k, v in sd.items() if k != "extra"})
    opt.register_load_state_dict_post_hook(lambda o: order.append("loaded"))
    opt.load_state_dict(sd)
    assert order[-1] == "loaded"


def test_torch_lr_scheduler_drives_torchstep_optimizer():
    p = _p(2)
    opt = ts_optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "scheduler.step() before optimizer.step()" warning
        for _ in range(5):
            p.grad = torch.ones(2)
            opt.step()
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [1.0, 0.5, 0.5, 0.25, 0.25]


@pytest.mark.parametrize("algo", ["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "RMSprop"])
def test_grad_scaler_matches_torch(algo):
    """torch.amp.GradScaler unscales, skips steps with inf/nan grads, and steps the optimizer."""
    torch.manual_seed(0)
    results = []
    for lib in (torch.optim, ts_optim):
        model = torch.nn.Linear(4, 2)
        model.load_state_dict({"weight": torch.ones(2, 4) * 0.1, "bias": torch.zeros(2)})
        opt = getattr(lib, algo)(model.parameters(), lr=0.01)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        for step in range(6):
            opt.zero_grad()
            x = torch.full((3, 4), float("inf") if step == 2 else 1.0 + step)
            scaler.scale(model(x).pow(2).mean()).backward()
            scaler.step(opt)
            scaler.update()
        results.append((model.weight.detach().clone(), scaler.get_scale()))
    torch.testing.assert_close(results[1][0], results[0][0])
    assert results[0][1] == results[1][1]


def test_repr_lists_groups():
    text = repr(ts_optim.Adam([_p(2)], lr=0.1))
    assert text.startswith("Adam (") and "Parameter Group 0" in text and "lr: 0.1" in text


def test_exports_every_torch_optimizer():
    """torchstep.optim has every optimizer class torch.optim 2.13 exports, and its submodules."""
    import inspect

    torch_classes = {
        name for name in torch.optim.__all__
        if inspect.isclass(getattr(torch.optim, name)) and issubclass(getattr(torch.optim, name), torch.optim.Optimizer)
    }
    assert torch_classes <= set(ts_optim.__all__)
    for name in torch_classes:
        assert issubclass(getattr(ts_optim, name), torch.optim.Optimizer)
    assert {"lr_scheduler", "swa_utils"} <= set(ts_optim.__all__)


@pytest.mark.parametrize("layout", [[[0], [1, 1]], [[0, 1, 0], [2]], [[0, 0, 1], [2, 2, 3]]])
def test_state_dict_numbers_duplicates_as_torch(layout):
    """A parameter listed twice in a group: numbers by position, as torch's ``pack_group``
    (positions run over every group's full length; a duplicate takes its last position), and a
    checkpoint moves both ways with every parameter's state where it belongs."""
    base = [torch.randn(k + 2) for k in range(4)]

    def build(lib):
        ps = [b.clone().requires_grad_() for b in base]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = lib.Adam([{"params": [ps[i] for i in g]} for g in layout], lr=0.1)
        for i, p in enumerate(ps):
            p.grad = torch.full_like(p, float(i + 1))
        opt.step()
        return ps, opt

    (_, to), (_, so) = build(torch.optim), build(ts_optim)
    tsd, ssd = to.state_dict(), so.state_dict()
    assert [g["params"] for g in ssd["param_groups"]] == [g["params"] for g in tsd["param_groups"]]
    assert sorted(ssd["state"]) == sorted(tsd["state"])
    for k in tsd["state"]:
        torch.testing.assert_close(ssd["state"][k]["exp_avg"], tsd["state"][k]["exp_avg"])
    # torch -> ours and ours -> torch: each parameter gets its own state back
    (_, to2), (_, so2) = build(torch.optim), build(ts_optim)
    so2.load_state_dict(tsd)
    to2.load_state_dict(ssd)
    for g_s, g_t, g_s0, g_t0 in zip(so2.param_groups, to2.param_groups, so.param_groups, to.param_groups):
        for p_s, p_t, q_s, q_t in zip(g_s["params"], g_t["params"], g_s0["params"], g_t0["params"]):
            torch.testing.assert_close(so2.state[p_s]["exp_avg"], to.state[q_t]["exp_avg"])
            torch.testing.assert_close(to2.state[p_t]["exp_avg"], so.state[q_s]["exp_avg"])
