"""``torchstep.param_groups``: every tensor lands where the rules say; precedence; warnings; training."""

import warnings

import pytest
import torch
from torch import nn

import torchstep
import torchstep.optim as optim
from torchstep.params import NO_DECAY_TYPES, default_layers


class Net(nn.Module):
    """Conv, batchnorm, linear, layernorm and embedding layers; some names hide the module type."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)) for _ in range(2)])
        self.norm_proj = nn.Linear(8, 8, bias=False)  # "norm" in the name, but a Linear: decays
        self.post = nn.GroupNorm(2, 8)  # a norm without "norm" in its name: exempt by type
        self.head = nn.Linear(8, 3)
        self.scale = nn.Parameter(torch.ones(8))  # held by the model itself

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.bn(self.embed(tokens).transpose(1, 2))).mean(2) * self.scale
        for block in self.blocks:
            h = h + block(h)
        return self.head(self.post(self.norm_proj(h)))


DECAYED = {"conv.weight", "blocks.0.0.weight", "blocks.1.0.weight", "norm_proj.weight", "head.weight", "scale"}


def _placement(groups) -> dict[str, dict]:
    """name -> the options of the group holding it (each name exactly once)."""
    where = {}
    for names, group in zip(groups.names, groups):
        assert len(names) == len(group["params"])
        for name in names:
            assert name not in where
            where[name] = {k: v for k, v in group.items() if k != "params"}
    return where


def test_default_split_by_module_type_and_bias():
    model = Net()
    groups = torchstep.param_groups(model, weight_decay=0.1)
    where = _placement(groups)
    assert set(where) == {n for n, _ in model.named_parameters()}
    for name, options in where.items():
        assert options == {"weight_decay": 0.1 if name in DECAYED else 0.0}, name
    tensors = dict(model.named_parameters())
    for names, group in zip(groups.names, groups):
        assert all(p is tensors[n] for n, p in zip(names, group["params"]))


def test_without_options_exempt_groups_still_get_zero_decay():
    groups = torchstep.param_groups(Net())
    assert [{k for k in g if k != "params"} for g in groups] == [set(), {"weight_decay"}]
    assert groups[1]["weight_decay"] == 0.0
    opt = optim.AdamW(groups, weight_decay=0.05)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_no_decay_patterns_and_types():
    where = _placement(torchstep.param_groups(Net(), weight_decay=0.1, no_decay=["scale", "head.*"]))
    assert where["scale"]["weight_decay"] == where["head.weight"]["weight_decay"] == 0.0
    where = _placement(torchstep.param_groups(Net(), weight_decay=0.1, no_decay_types=(nn.Embedding,)))
    assert where["embed.weight"]["weight_decay"] == 0.0
    assert where["bn.weight"]["weight_decay"] == where["post.weight"]["weight_decay"] == 0.1
    assert where["bn.bias"]["weight_decay"] == 0.0  # still a bias
    assert issubclass(nn.BatchNorm2d, NO_DECAY_TYPES) and issubclass(nn.LazyBatchNorm1d, NO_DECAY_TYPES)


def test_multipliers_first_match_wins_and_exemption_beats_wd_mult():
    groups = torchstep.param_groups(
        Net(), lr=0.1, weight_decay=0.01,
        lr_mult={"head.weight": 3.0, "head.*": 2.0, "blocks.*": 0.5},
        wd_mult={"head.*": 10.0, "bn.*": 10.0},
    )
    where = _placement(groups)
    assert where["head.weight"] == {"lr": pytest.approx(0.3), "weight_decay": pytest.approx(0.1)}
    assert where["head.bias"] == {"lr": pytest.approx(0.2), "weight_decay": 0.0}
    assert where["blocks.1.1.weight"] == {"lr": pytest.approx(0.05), "weight_decay": 0.0}
    assert where["bn.weight"] == {"lr": 0.1, "weight_decay": 0.0}  # exempt: wd_mult does not apply
    assert where["conv.weight"] == {"lr": 0.1, "weight_decay": 0.01}


def test_layer_decay_default_layers_and_multiplication_with_lr_mult():
    model = Net()
    layer_of = default_layers(model)
    # embed conv bn blocks.0 blocks.1 norm_proj post head; the model's own `scale` is layer 0
    expected = {"scale": 0, "embed.weight": 0, "conv.bias": 1, "bn.weight": 2, "blocks.0.1.bias": 3,
                "blocks.1.0.weight": 4, "norm_proj.weight": 5, "post.bias": 6, "head.weight": 7}
    assert {n: layer_of(n) for n in expected} == expected
    where = _placement(torchstep.param_groups(model, lr=1.0, layer_decay=0.5, lr_mult={"conv.*": 4.0}))
    for name, layer in expected.items():
        mult = 4.0 if name.startswith("conv.") else 1.0
        assert where[name]["lr"] == pytest.approx(mult * 0.5 ** (7 - layer)), name
    custom = _placement(torchstep.param_groups(model, lr=1.0, layer_decay=0.1,
                                               layer_of=lambda n: 1 if n.startswith("head") else 0))
    assert custom["head.bias"]["lr"] == 1.0 and custom["conv.weight"]["lr"] == pytest.approx(0.1)


def test_freeze_wins_over_every_other_rule():
    model = Net()
    model.bn.bias.requires_grad_(False)  # already frozen: left out too
    groups = torchstep.param_groups(model, lr=0.1, weight_decay=0.1, freeze=["embed.*", "head.weight"],
                                    lr_mult={"head.*": 2.0})
    assert groups.frozen == ["embed.weight", "bn.bias", "head.weight"]
    assert not model.embed.weight.requires_grad and not model.head.weight.requires_grad
    kept = {n for names in groups.names for n in names}
    assert kept == {n for n, _ in model.named_parameters()} - set(groups.frozen)
    assert all(p.requires_grad for g in groups for p in g["params"])


def test_summary_table():
    groups = torchstep.param_groups(Net(), lr=1e-3, weight_decay=0.05, freeze="embed.*")
    lines = groups.summary().splitlines()
    assert lines[0].split() == ["group", "tensors", "elements", "lr", "weight_decay", "parameters"]
    assert len(lines) == 1 + len(groups) + 1 and lines[-1].startswith("frozen")
    decay = lines[1].split()
    assert decay[:5] == ["0", "6", f"{sum(p.numel() for p in groups[0]['params']):,}", "0.001", "0.05"]
    assert lines[-1].split()[:3] == ["frozen", "1", "96"]
    assert str(groups) == groups.summary()


@pytest.mark.parametrize("arg,value", [("freeze", ["nothing.*"]), ("no_decay", "nope"), ("lr_mult", {"xyz*": 2.0}),
                                       ("wd_mult", {"zzz": 2.0})])
def test_pattern_matching_nothing_warns(arg, value):
    with pytest.warns(UserWarning, match=f"param_groups: {arg} pattern .* matches no parameter name"):
        torchstep.param_groups(Net(), lr=0.1, weight_decay=0.1, **{arg: value})


def test_no_warning_when_every_pattern_matches():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torchstep.param_groups(Net(), lr=0.1, weight_decay=0.1, freeze="embed.*", lr_mult={"head.*": 2.0})


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(lr_mult={"head.*": 2.0}), ValueError, "pass lr="),
    (dict(layer_decay=0.5), ValueError, "pass lr="),
    (dict(wd_mult={"head.*": 2.0}), ValueError, "pass weight_decay="),
    (dict(lr=-1.0), ValueError, "Invalid learning rate: -1.0"),
    (dict(lr=0.1, lr_mult={"head.*": -2.0}), ValueError, r"lr_mult\['head.\*'\]"),
    (dict(lr=0.1, layer_decay=0.0), ValueError, "layer_decay"),
    (dict(freeze=[3]), TypeError, "freeze patterns must be strings"),
])
def test_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        torchstep.param_groups(Net(), **kwargs)


def test_not_a_module():
    with pytest.raises(TypeError, match="expects an nn.Module"):
        torchstep.param_groups([torch.zeros(2)])


def _train(make_optimizer, steps=30):
    torch.manual_seed(0)
    model = Net()
    tokens = torch.randint(0, 12, (32, 5))
    target = tokens[:, 0] % 3  # learnable through the (frozen) embedding
    opt = make_optimizer(model)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(tokens), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses


def test_optimizers_built_from_groups_train_and_match_torch():
    def groups(model):
        return torchstep.param_groups(model, lr=1e-2, weight_decay=0.1, lr_mult={"head.*": 2.0}, freeze="embed.*")

    ours, losses = _train(lambda m: optim.AdamW(groups(m)))
    theirs, torch_losses = _train(lambda m: torch.optim.AdamW(groups(m)))
    assert losses[-1] < 0.5 * losses[0]
    assert losses == pytest.approx(torch_losses, rel=1e-5)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    torch.manual_seed(0)
    assert torch.equal(ours.embed.weight, Net().embed.weight)  # frozen: never updated


def test_names_reach_the_optimizer_state_dict():
    model = Net()
    groups = torchstep.param_groups(model, weight_decay=0.1, names=True)
    for opt in (optim.SGD(groups, lr=0.1), torch.optim.SGD(torchstep.param_groups(model, names=True), lr=0.1)):
        saved = [n for g in opt.state_dict()["param_groups"] for n in g["param_names"]]
        assert sorted(saved) == sorted(n for n, _ in model.named_parameters())
