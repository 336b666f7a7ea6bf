"""``torchstep.lr_find``: the suggestion lands in a known good range; state comes back exactly."""

import copy
import math

import pytest
import torch
from torch import nn

import torchstep
import torchstep.optim as optim
from torchstep.lr_finder import ema, suggest


def _regression(seed: int = 0):
    """Least squares with known curvature: the loss's Hessian has eigenvalues in [lam_min, lam_max]."""
    torch.manual_seed(seed)
    n, d = 512, 16
    x = torch.randn(n, d)
    x = x / x.std(0)
    y = x @ torch.randn(d, 1) + 0.1 * torch.randn(n, 1)
    design = torch.cat([x, torch.ones(n, 1)], 1)
    eig = torch.linalg.eigvalsh(2 * design.T @ design / n)
    return x, y, eig[0].item(), eig[-1].item()


@pytest.mark.parametrize("rule", ["steepest", "min/10"])
@pytest.mark.parametrize("seed", [0, 1])
def test_suggestion_lands_in_the_known_good_range(rule, seed):
    x, y, lam_min, lam_max = _regression(seed)
    # gradient descent is stable below 2 / lam_max, and above 4.6 / (200 lam_min) it cuts the
    # slowest direction's excess loss by 100x within 100 steps
    low, high = 4.6 / (200 * lam_min), 2 / lam_max
    model = nn.Linear(16, 1)
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 512, 64)]
    result = torchstep.lr_find(model, optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, batches,
                               start_lr=1e-4, end_lr=100.0, num_steps=100, rule=rule)
    assert result.rule == rule and result.stop_reason.startswith("diverged at lr")
    assert low < result.suggestion < high, (low, result.suggestion, high)
    start = nn.functional.mse_loss(model(x), y).item()  # the model is back at its initial weights
    opt = torch.optim.SGD(model.parameters(), lr=result.suggestion)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    assert nn.functional.mse_loss(model(x), y).item() < start / 50


def _classifier():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    x = torch.randn(128, 8)
    y = x[:, :3].argmax(1)  # learnable labels
    return model, [(x[:64], y[:64]), (x[64:], y[64:])]


def _snapshot(model, opt):
    return (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()),
            [None if p.grad is None else p.grad.clone() for p in model.parameters()], model.training,
            torch.get_rng_state())


def _assert_same(a, b):
    model_a, opt_a, grads_a, training_a, rng_a = a
    model_b, opt_b, grads_b, training_b, rng_b = b
    assert model_a.keys() == model_b.keys() and all(torch.equal(model_a[k], model_b[k]) for k in model_a)
    assert opt_a["param_groups"] == opt_b["param_groups"]
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for i, state in opt_a["state"].items():
        assert state.keys() == opt_b["state"][i].keys()
        for key, value in state.items():
            other = opt_b["state"][i][key]
            assert torch.equal(value, other) and value.dtype == other.dtype if torch.is_tensor(value) else value == other
    assert all((g is None and h is None) or torch.equal(g, h) for g, h in zip(grads_a, grads_b))
    assert training_a == training_b and torch.equal(rng_a, rng_b)


@pytest.mark.parametrize("library", [optim, torch.optim])
def test_model_optimizer_and_rng_restored_exactly(library):
    model, batches = _classifier()
    opt = library.AdamW([{"params": model[0].parameters(), "lr": 1e-3},
                         {"params": [*model[1].parameters(), *model[4].parameters()], "lr": 5e-3}])
    for x, y in batches:  # some optimizer state and BatchNorm statistics to restore
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    before = _snapshot(model, opt)
    result = torchstep.lr_find(model, opt, nn.functional.cross_entropy, batches, num_steps=40)
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) > 10
    _assert_same(before, _snapshot(model, opt))


def test_fresh_optimizer_has_no_state_afterwards():
    model, batches = _classifier()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = _snapshot(model, opt)
    torchstep.lr_find(model, opt, nn.functional.cross_entropy, batches, num_steps=10)
    assert len(opt.state) == 0
    _assert_same(before, _snapshot(model, opt))


def test_restored_when_the_sweep_raises():
    model, batches = _classifier()
    opt = optim.Adam(model.parameters())
    before = _snapshot(model, opt)
    calls = []

    def failing_loss(out, target):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("boom")
        return nn.functional.cross_entropy(out, target)

    with pytest.raises(RuntimeError, match="boom"):
        torchstep.lr_find(model, opt, failing_loss, batches, num_steps=10)
    _assert_same(before, _snapshot(model, opt))


def test_sweep_is_exponential_and_groups_keep_their_ratio():
    model, batches = _classifier()
    opt = optim.SGD([{"params": model[0].parameters(), "lr": 0.5},
                     {"params": [*model[1].parameters(), *model[4].parameters()], "lr": 0.05}])
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append([g["lr"] for g in o.param_groups]))
    result = torchstep.lr_find(model, opt, nn.functional.cross_entropy, batches, start_lr=1e-5, end_lr=1e-1,
                               num_steps=9, diverge=1e9)
    assert result.lrs == pytest.approx([10.0 ** (-5 + k / 2) for k in range(9)])
    assert [s[0] for s in seen] == pytest.approx(result.lrs)
    assert all(s[1] == pytest.approx(s[0] / 10) for s in seen)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.05]


def test_stops_on_non_finite_loss_and_when_a_one_shot_iterator_runs_out():
    model, batches = _classifier()
    opt = optim.SGD(model.parameters(), lr=0.1)
    values = iter([2.0, 1.0, float("nan")])

    def loss_fn(out, target):
        return out.sum() * 0 + next(values)

    result = torchstep.lr_find(model, opt, loss_fn, batches, num_steps=10)
    assert result.losses == [2.0, 1.0] and result.stop_reason.startswith("loss not finite")
    result = torchstep.lr_find(model, opt, nn.functional.cross_entropy, iter(batches), num_steps=10)
    assert len(result.lrs) == 2 and result.stop_reason == "data ran out"


def test_suggest_rules_on_a_known_curve():
    lrs = [10.0 ** (k / 4) for k in range(-20, 5)]
    # a sigmoid in log(lr), falling fastest at lr = 1e-2, then a rise after its minimum at 1e0
    smoothed = [1 / (1 + math.exp(4 * (math.log10(lr) + 2))) + max(0.0, math.log10(lr)) for lr in lrs]
    assert suggest(lrs, smoothed, "steepest", skip_start=2) == pytest.approx(1e-2)
    assert suggest(lrs, smoothed, "min/10", skip_start=2) == pytest.approx(lrs[smoothed.index(min(smoothed))] / 10)
    assert suggest(lrs[:2], smoothed[:2], "steepest", skip_start=2) is None
    rising = [float(k) for k in range(len(lrs))]
    assert suggest(lrs, rising, "steepest", skip_start=2) is None  # the loss never fell
    assert suggest(lrs, rising, "min/10", skip_start=2) == pytest.approx(lrs[0] / 10)


def test_zero_lag_smoothing():
    assert ema([1.0, 3.0], 0.5) == pytest.approx([1.0, (0.25 + 1.5) / 0.75])  # bias-corrected
    steps = [0.0] * 20 + [1.0] * 20
    forward = ema(steps, 0.8)
    both = ema(forward[::-1], 0.8)[::-1]
    assert forward[19] == 0.0 and forward[20] == pytest.approx(0.2 / (1 - 0.8**21))  # the online average lags the jump
    assert both[19] > 0.1 and both[20] < 0.9  # forward-backward smoothing spreads it on both sides


def test_plot_writes_a_png(tmp_path):
    model, batches = _classifier()
    result = torchstep.lr_find(model, optim.Adam(model.parameters()), nn.functional.cross_entropy, batches,
                               num_steps=20, plot=tmp_path / "lr.png")
    from matplotlib.image import imread

    image = imread(tmp_path / "lr.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image[..., :3].std() > 0.05
    assert result.suggestion is not None


@pytest.mark.parametrize("kwargs,match", [
    (dict(start_lr=0.0), "start_lr"), (dict(start_lr=1.0, end_lr=0.5), "end_lr must be > start_lr"),
    (dict(num_steps=1), "num_steps"), (dict(beta=1.0), "beta"), (dict(diverge=1.0), "diverge"),
    (dict(rule="valley"), "rule must be one of"),
])
def test_invalid_settings(kwargs, match):
    model, batches = _classifier()
    with pytest.raises(ValueError, match=match):
        torchstep.lr_find(model, optim.SGD(model.parameters(), lr=0.1), nn.functional.cross_entropy, batches, **kwargs)
