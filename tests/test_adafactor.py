"""Adafactor against torch.optim.Adafactor 2.13: parity over its options (two groups, float32 and
float64, 25 steps, params and every state tensor), state_dict interchange both ways, errors."""

import contextlib
import itertools

import pytest
import torch

import torchstep.optim as ts_optim
from torchstep.backends import use
from registry import TOLERANCE as TOL
from helpers import (assert_same_trajectory, assert_signature_matches, assert_unsupported_tensor_rejected, interchange,
                     run_pair, set_grads, through_disk)

# scalar, vector (unfactored); matrices, a batch of matrices, a single column (factored)
SHAPES = [(), (3,), (4, 5), (2, 3, 4), (6, 1)]
GROUP2 = dict(lr=0.05, weight_decay=0.0, eps=(1e-20, 1e-3))

GRID = [
    dict(weight_decay=wd, maximize=mx, foreach=fe, eps=eps)
    for wd, mx, fe, eps in itertools.product([0.0, 0.1], [False, True], [None, True], [(None, 1e-3), (1e-30, 1e-2)])
]
CASES = GRID + [
    dict(),
    dict(foreach=False),
    dict(lr=0.3, d=2.0, beta2_decay=-0.5),
    dict(lr=torch.tensor(0.02), weight_decay=0.01),
    dict(lr=torch.tensor([0.02])),
    dict(beta2_decay=0.0, d=1.5),
    dict(lr=0.0, eps=(0.0, 0.0)),
]


# -- Adafactor -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kwargs", CASES, ids=[f"c{i}" for i in range(len(CASES))])
def test_parity_with_torch(kwargs, dtype):
    ref, mine, ref_p, my_p = run_pair("Adafactor", kwargs, dtype, SHAPES, GROUP2)
    assert_same_trajectory(ref, mine, ref_p, my_p, **TOL[dtype])
    for p in my_p:  # the layout torch uses: factored only from two dimensions on
        keys = {"step", "row_var", "col_var"} if p.dim() > 1 else {"step", "variance"}
        assert set(mine.state[p]) == keys


def test_state_shapes_and_dtypes():
    _, mine, _, my_p = run_pair("Adafactor", {}, torch.float32, SHAPES, GROUP2, steps=1)
    state = mine.state[my_p[3]]  # shape (2, 3, 4)
    assert state["row_var"].shape == (2, 3, 1) and state["col_var"].shape == (2, 1, 4)
    assert state["step"].dtype == torch.float32 and state["step"].device.type == "cpu"
    assert state["row_var"].dtype == torch.float32


def test_eps1_none_takes_the_first_parameters_dtype_for_the_group():
    """torch quirk kept for parity: with eps1=None, the first updated parameter's machine
    epsilon serves the whole group, here a float32 one for a later float64 parameter."""
    shapes = [(3, 2), (4,)]

    def params():
        gen = torch.Generator().manual_seed(5)
        return [torch.randn(shapes[0], generator=gen).requires_grad_(), torch.full(shapes[1], 1e-5, dtype=torch.float64, requires_grad=True)]

    ref_p, my_p = params(), params()
    ref, mine = torch.optim.Adafactor(ref_p), ts_optim.Adafactor(my_p)
    for step in range(5):
        for a, b in zip(ref_p, my_p):
            a.grad = torch.full_like(a, 1e-9 * (step + 1))
            b.grad = a.grad.clone()
        ref.step()
        mine.step()
    assert_same_trajectory(ref, mine, ref_p, my_p, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("first,second", [("torch", "torchstep"), ("torchstep", "torch")], ids=["torch->ts", "ts->torch"])
def test_state_dict_interchange(first, second, dtype):
    interchange("Adafactor", dict(weight_decay=0.05, maximize=True), dtype, SHAPES, GROUP2, first, second)


def test_old_checkpoint_with_number_step_loads():
    ref, mine, ref_p, my_p = run_pair("Adafactor", {}, torch.float64, SHAPES, GROUP2, steps=3)
    sd = through_disk(ref.state_dict())  # a copy: torch's state_dict shares its state dicts
    for st in sd["state"].values():
        st["step"] = float(st["step"])
    mine.load_state_dict(sd)
    assert all(torch.is_tensor(mine.state[p]["step"]) for p in my_p)
    for step in range(3, 6):
        set_grads(step, list(zip(ref_p, my_p)))
        ref.step()
        mine.step()
    assert_same_trajectory(ref, mine, ref_p, my_p, **TOL[torch.float64])


def test_signature_matches_torch():
    assert_signature_matches("Adafactor")


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(lr=-1.0), ValueError, r"Learning rate should be >= 0 but is: -1\.0 \(lr must be >= 0\)"),
        (dict(lr=torch.tensor([0.1, 0.2])), ValueError, r"Tensor lr must be 1-element \(lr has shape \(2,\)"),
        (dict(beta2_decay=0.5), ValueError, r"beta2_decay should be <= 0 but is: 0\.5 \(beta2_decay must be <= 0\)"),
        (dict(eps=(-1.0, 1e-3)), ValueError, r"epsilon1 should be >= 0 but is: -1\.0 \(eps\[0\] must be >= 0\)"),
        (dict(eps=(None, -1e-3)), ValueError, r"epsilon2 should be >= 0 but is: -0\.001 \(eps\[1\] must be >= 0\)"),
        (dict(d=0.5), ValueError, r"Clipping threshold d should be >= 1 but is: 0\.5 \(d must be >= 1\)"),
        (dict(weight_decay=-0.1), ValueError, r"weight_decay should be >= 0 but is: -0\.1 \(weight_decay must be >= 0\)"),
        (dict(eps=1e-3), TypeError, r"'float' object is not subscriptable \(eps must be a pair \(eps1 or None, eps2\); got 0\.001\)"),
    ],
)
def test_invalid_arguments(kwargs, exc, pattern):
    with pytest.raises(exc):
        torch.optim.Adafactor([torch.zeros(2, requires_grad=True)], **kwargs)
    with pytest.raises(exc, match=pattern):
        ts_optim.Adafactor([torch.zeros(2, requires_grad=True)], **kwargs)


def test_eps_of_wrong_length():
    """torch fails at the first step (unpacking); torchstep when constructed, with the same type."""
    p = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adafactor([p], eps=(None, 1e-3, 1.0))
    p.grad = torch.ones(2)
    with pytest.raises(ValueError):
        opt.step()
    with pytest.raises(ValueError, match=r"eps must have 2 items \(eps1, eps2\); got \(None, 0\.001, 1\.0\), with 3"):
        ts_optim.Adafactor([p], eps=(None, 1e-3, 1.0))


@pytest.mark.parametrize("kind", ["complex", "sparse"])
def test_unsupported_tensors_rejected_at_step(kind):
    assert_unsupported_tensor_rejected("Adafactor", kind)


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("lr_dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(7,), (3, 5)])
def test_tensor_lr_keeps_its_precision(lr_dtype, shape, backend):
    """A float64 tensor ``lr`` caps rho_t in float64 (torch's arithmetic in the tensor's dtype):
    the step size must not pass through float32 on the way (found by the differential fuzzer)."""
    results = []
    for module in (torch.optim, ts_optim):
        gen = torch.Generator().manual_seed(0)
        p = torch.randn(shape, dtype=torch.float64, generator=gen).requires_grad_()
        opt = module.Adafactor([{"params": [p], "beta2_decay": -0.5}], lr=torch.tensor(0.02, dtype=lr_dtype), foreach=False)
        for _ in range(3):
            p.grad = torch.randn(shape, dtype=torch.float64, generator=gen)
            with use(backend) if module is ts_optim else contextlib.nullcontext():
                opt.step()
        results.append(p.detach())
    torch.testing.assert_close(results[1], results[0], rtol=1e-15, atol=0)
