"""Muon against torch.optim.Muon 2.13: parity over its options (two groups, float32 and float64,
25 steps, params and momentum buffers), state_dict interchange both ways, errors."""

import itertools

import pytest
import torch

import torchstep.optim as ts_optim
from registry import TOLERANCE as TOL
from helpers import assert_same_trajectory
from helpers import assert_signature_matches, assert_unsupported_tensor_rejected, interchange, run_pair
from torchstep.algorithms.newton_schulz import orthogonalize

SHAPES = [(4, 5), (6, 3), (1, 7), (5, 5)]  # wide, tall, a single row, square
GROUP2 = dict(lr=0.05, nesterov=False, adjust_lr_fn="match_rms_adamw", ns_steps=3)

GRID = [
    dict(lr=0.02, weight_decay=wd, momentum=mu, nesterov=nest, adjust_lr_fn=fn)
    for wd, mu, nest, fn in itertools.product([0.0, 0.1], [0.0, 0.9], [True, False], [None, "original", "match_rms_adamw"])
]
CASES = GRID + [
    dict(),
    dict(ns_steps=0),
    dict(ns_steps=1, eps=1e-2),
    dict(ns_steps=7, ns_coefficients=(2.0, -1.5, 0.5)),
    dict(ns_coefficients=[3.0, -3.2, 1.2]),
    dict(lr=torch.tensor(0.02)),
    dict(lr=torch.tensor([0.03]), weight_decay=0.0),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kwargs", CASES, ids=[f"c{i}" for i in range(len(CASES))])
def test_parity_with_torch(kwargs, dtype):
    ref, mine, ref_p, my_p = run_pair("Muon", kwargs, dtype, SHAPES, GROUP2)
    assert_same_trajectory(ref, mine, ref_p, my_p, **TOL[dtype])
    assert all(set(mine.state[p]) == {"momentum_buffer"} for p in my_p)


def test_orthogonalize_gives_near_orthogonal_rows_and_keeps_its_input():
    g = torch.randn(8, 32, generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16)
    before = g.clone()
    o = orthogonalize(g, (3.4445, -4.7750, 2.0315), 5, 1e-7).float()
    singular = torch.linalg.svdvals(o)
    assert singular.min() > 0.5 and singular.max() < 1.5  # the quintic's target band
    assert torch.equal(g, before)
    assert orthogonalize(g.T, (3.4445, -4.7750, 2.0315), 5, 1e-7).shape == (32, 8)


def test_bfloat16_momentum_buffer_is_not_normalized():
    """Deliberate difference: torch's Newton–Schulz divides a bfloat16 input in place, so with
    nesterov=False it rescales the momentum buffer itself; torchstep's buffer stays B_t."""
    p = torch.zeros(3, 4, dtype=torch.bfloat16, requires_grad=True)
    opt = ts_optim.Muon([p], momentum=0.5, nesterov=False)
    p.grad = torch.full((3, 4), 4.0, dtype=torch.bfloat16)
    opt.step()
    assert torch.equal(opt.state[p]["momentum_buffer"], torch.full((3, 4), 2.0, dtype=torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("first,second", [("torch", "torchstep"), ("torchstep", "torch")], ids=["torch->ts", "ts->torch"])
def test_state_dict_interchange(first, second, dtype):
    interchange("Muon", dict(lr=0.02, momentum=0.9, weight_decay=0.05), dtype, SHAPES, GROUP2, first, second)


def test_signature_matches_torch():
    assert_signature_matches("Muon")


def _matrix():
    return [torch.zeros(2, 3, requires_grad=True)]


@pytest.mark.parametrize(
    "params,kwargs,pattern",
    [
        (_matrix, dict(lr=-1.0), r"Learning rate should be >= 0 but is: -1\.0 \(lr must be >= 0\)"),
        (_matrix, dict(lr=torch.tensor([0.1, 0.2])), r"Tensor lr must be 1-element \(lr has shape \(2,\)"),
        (_matrix, dict(momentum=-0.1), r"momentum should be >= 0 but is: -0\.1 \(momentum must be >= 0\)"),
        (_matrix, dict(weight_decay=-0.1), r"weight decay should be >= 0 but is: -0\.1 \(weight_decay must be >= 0\)"),
        (_matrix, dict(adjust_lr_fn="sqrt"), r"Adjust learning rate function sqrt is not supported \(adjust_lr_fn must be one of None, 'original', 'match_rms_adamw'; got 'sqrt'\)"),
        (lambda: [torch.zeros(3, requires_grad=True)], {}, r"Muon only supports 2D parameters whereas we found a parameter with size: torch.Size\(\[3\]\) \(every parameter must be a 2-D"),
        (lambda: [torch.zeros(2, 3, 4, requires_grad=True)], {}, r"torch.Size\(\[2, 3, 4\]\)"),
    ],
)
def test_invalid_arguments(params, kwargs, pattern):
    with pytest.raises(ValueError):
        torch.optim.Muon(params(), **kwargs)
    with pytest.raises(ValueError, match=pattern):
        ts_optim.Muon(params(), **kwargs)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(ns_steps=100), r"Number of steps must be less than 100 for computational efficiency \(ns_steps=100\)"),
        (dict(ns_coefficients=(1.0, 2.0)), r"Coefficients must be a tuple of exactly 3 values \(ns_coefficients must have 3 items \(a, b, c\); got \(1\.0, 2\.0\), with 2\)"),
    ],
)
def test_invalid_arguments_torch_rejects_at_step(kwargs, pattern):
    """torch raises these at the first step; torchstep when constructed, with the same type."""
    p = _matrix()
    opt = torch.optim.Muon(p, **kwargs)
    p[0].grad = torch.ones(2, 3)
    with pytest.raises(ValueError):
        opt.step()
    with pytest.raises(ValueError, match=pattern):
        ts_optim.Muon(_matrix(), **kwargs)


@pytest.mark.parametrize("kwargs", [dict(ns_steps=-1), dict(ns_steps=0), dict(eps=-1e-7), dict(eps=float("nan"))])
def test_odd_values_torch_accepts(kwargs):
    """Meaningless values torch runs with (a negative step count acts as 0): accepted, same step."""
    a, b = _matrix(), _matrix()
    for p in (a[0], b[0]):
        p.grad = torch.arange(6.0).view(2, 3)
    torch.optim.Muon(a, **kwargs).step()
    ts_optim.Muon(b, **kwargs).step()
    torch.testing.assert_close(b[0].detach(), a[0].detach(), equal_nan=True)


def test_non_integer_ns_steps_is_a_type_error():
    p = _matrix()
    p[0].grad = torch.ones(2, 3)
    with pytest.raises(TypeError):
        torch.optim.Muon(p, ns_steps=2.5).step()
    with pytest.raises(TypeError, match=r"ns_steps must be an integer < 100; got 2\.5"):
        ts_optim.Muon(_matrix(), ns_steps=2.5)


def test_added_group_of_vectors_fails_at_the_step_like_torch():
    """torch checks the constructor's parameters only; a vector added later is accepted and its
    gradient is refused at the step, with the same exception type."""
    outcomes = []
    for module in (torch.optim, ts_optim):
        w = torch.randn(4, 3, requires_grad=True)
        opt = module.Muon([w])
        with pytest.raises(ValueError):
            module.Muon([w, torch.zeros(4, requires_grad=True)])
        v = torch.zeros(4, requires_grad=True)
        opt.add_param_group({"params": [v]})
        opt.step()  # no gradient on the vector: nothing to refuse
        w.grad, v.grad = torch.ones(4, 3), torch.ones(4)
        with pytest.raises(ValueError, match="2D matrix") as info:
            opt.step()
        outcomes.append(info.type)
    assert outcomes[0] is outcomes[1]


@pytest.mark.parametrize("kind", ["complex", "sparse"])
def test_unsupported_tensors_rejected_at_step(kind):
    assert_unsupported_tensor_rejected("Muon", kind)
