"""Per-parameter 0-d state (NAdam's ``mu_product``, ASGD's ``eta`` and ``mu``) is history, kept
and advanced as torch keeps it; and RAdam's rectified steps under autograd."""

import io

import pytest
import torch

import torchstep.optim as ts_optim
from helpers import assert_same_trajectory, build, make_params, set_grads, twin
from registry import REPRESENTATIVE, TOLERANCE
from test_differentiable import _inputs, _run

SCALAR_STATE = {"NAdam": ("mu_product",), "ASGD": ("eta", "mu")}


def _steps(t, s, t_p, s_p, steps, before_step=lambda step: None):
    """Run torch's ``t`` and torchstep's ``s`` side by side on the same gradients."""
    for step in steps:
        before_step(step)
        set_grads(step, list(zip(t_p, s_p)))
        t.step()
        s.step()


def _reload(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("source", ["torch", "torchstep"])
@pytest.mark.parametrize("algo", list(SCALAR_STATE))
def test_float64_reload_matches_torchs_own_reload(algo, source):
    """torch casts the 0-d state to a float64 parameter's dtype on load; torchstep does the same,
    so after a reload both libraries continue on the same (float64-scalar) trajectory."""
    kwargs = REPRESENTATIVE[algo]
    src_p = make_params(torch.float64)
    src = build(algo, src_p, kwargs, source)
    for step in range(8):
        set_grads(step, list(zip(src_p, twin(src_p))))
        src.step()
    sd = src.state_dict()
    t_p, s_p = twin(src_p), twin(src_p)
    t, s = build(algo, t_p, kwargs, "torch"), build(algo, s_p, kwargs, "torchstep")
    t.load_state_dict(_reload(sd))
    s.load_state_dict(_reload(sd))
    for name in SCALAR_STATE[algo]:
        assert s.state[s_p[0]][name].dtype == t.state[t_p[0]][name].dtype == torch.float64
    _steps(t, s, t_p, s_p, range(8, 20))
    assert_same_trajectory(t, s, t_p, s_p, **TOLERANCE[torch.float64])


@pytest.mark.parametrize("algo", list(SCALAR_STATE))
def test_hyperparameter_change_mid_training(algo):
    """The 0-d state carries history: ASGD's eta lags an lr change by one step, NAdam's
    mu_product keeps the product of the old momentum schedule."""
    ref = make_params(torch.float64)
    mine = twin(ref)
    t, s = build(algo, ref, REPRESENTATIVE[algo], "torch"), build(algo, mine, REPRESENTATIVE[algo], "torchstep")

    def change_at_6(step):
        for group in (t.param_groups + s.param_groups) if step == 6 else []:
            group["lr"] *= 0.3
            if algo == "NAdam":
                group["betas"], group["momentum_decay"] = (0.8, 0.99), 0.02

    _steps(t, s, ref, mine, range(16), change_at_6)
    assert_same_trajectory(t, s, ref, mine, **TOLERANCE[torch.float64])


@pytest.mark.parametrize("algo", list(SCALAR_STATE))
def test_old_checkpoint_with_python_numbers(algo):
    """Checkpoints of old torch versions held the 0-d state as Python numbers; both libraries
    turn them into tensors laid out the same way and continue identically."""
    p0 = make_params(torch.float32, shapes=[(3,)])
    src = build(algo, twin(p0), REPRESENTATIVE[algo], "torch")
    src.param_groups[0]["params"][0].grad = torch.ones(3)
    src.step()
    sd = src.state_dict()
    for name in ("step", *SCALAR_STATE[algo]):
        sd["state"][0][name] = sd["state"][0][name].item()
    t_p, s_p = twin(p0), twin(p0)
    t, s = build(algo, t_p, REPRESENTATIVE[algo], "torch"), build(algo, s_p, REPRESENTATIVE[algo], "torchstep")
    t.load_state_dict(_reload(sd))  # separate copies: a load keeps same-dtype tensors as they are
    s.load_state_dict(_reload(sd))
    for name in SCALAR_STATE[algo]:
        a, b = t.state[t_p[0]][name], s.state[s_p[0]][name]
        assert torch.is_tensor(b) and (a.dtype, a.device, a.item()) == (b.dtype, b.device, b.item())
    _steps(t, s, t_p, s_p, range(3))
    assert_same_trajectory(t, s, t_p, s_p, **TOLERANCE[torch.float32])


def test_radam_rectified_steps_under_autograd():
    """RAdam rectifies from step 6 with beta2=0.9: gradcheck through 7 steps, and the same
    gradients as torch's differentiable path."""
    kwargs = dict(lr=0.01, betas=(0.9, 0.9))
    p0, g0 = _inputs()
    assert torch.autograd.gradcheck(lambda p, g: _run(ts_optim, "RAdam", kwargs, p, g, 7, warm=False), (p0, g0))
    grads = []
    for lib in (torch.optim, ts_optim):
        p0, g0 = _inputs()
        outs = _run(lib, "RAdam", kwargs, p0, g0, 6, warm=True)
        loss = (outs[0] ** 2).sum() + sum((s * 0.3).sum() for s in outs[1:])
        grads.append(torch.autograd.grad(loss, [p0, g0]))
    for theirs, ours in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
