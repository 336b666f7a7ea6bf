"""differentiable=True: autograd flows through step().

Ground truth is numerical: ``torch.autograd.gradcheck`` through three steps of every config.
Next to it, gradients are compared with torch's differentiable path, where that path is
consistent. Documented differences, all in torch's path:

* torch's SGD starts the momentum buffer from ``grad.detach()`` and, with weight decay, loses the
  parameter's path through the buffer; torchstep keeps both (gradcheck proves it). torch is
  compared from a warmed-up buffer and without weight decay for SGD momentum.
* torch's Adam computes bias corrections from the float32 ``step`` tensor when differentiable;
  torchstep uses double precision, so Adam-family gradients agree to ~4e-6 relative.
* torch's AMSGrad and RMSprop-momentum differentiable paths fail on a second step (a state tensor
  saved for backward is modified in place); torchstep writes fresh state tensors each
  differentiable step, so several steps work. The same holds for torch's Adamax (``exp_inf``,
  saved for backward, is scaled in place on the next step).
* torch's NAdam differentiable path computes its two step coefficients in float32 (from the
  float32 ``mu_product`` tensor); torchstep computes them in double, as torch's default path
  does, so NAdam gradients agree to ~1e-8 relative.
"""

import pytest
import torch

import torchstep.optim as ts_optim
from registry import REPRESENTATIVE

# differentiable steps run on the reference backend by design; the one-time notice is expected
pytestmark = pytest.mark.filterwarnings("ignore:.*fused step unavailable.*differentiable")

CONFIGS = [(algo, kw) for algo, kw in REPRESENTATIVE.items()] + [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.2, maximize=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("Adagrad", dict(lr=0.1, weight_decay=0.1)),
    ("Adamax", dict(lr=0.01, maximize=True)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("RAdam", dict(lr=0.01)),
    ("ASGD", dict(lr=0.05, lambd=0.1, t0=0.0)),
    ("Rprop", dict(lr=0.01, maximize=True)),
]
IDS = [f"{a}-{i}" for i, (a, _) in enumerate(CONFIGS)]
TORCH_INCONSISTENT = {"SGD-0"}  # SGD momentum + weight decay, see module docstring
TORCH_FAILS = {"Adam-1"}  # AMSGrad: torch's backward fails after a second step
TORCH_FAILS |= {i for i in IDS if i.startswith("Adamax-")}  # so does torch's Adamax


def _run(lib, algo, kwargs, p_in, g_in, steps, warm):
    p = p_in.clone()
    opt = getattr(lib, algo)([p], differentiable=True, **kwargs)
    if warm:
        p.grad = torch.full_like(p_in, 0.5)  # state exists before g_in enters
        opt.step()
    for i in range(steps):
        p.grad = g_in * (1.0 + 0.5 * i)
        opt.step()
    state = [v for v in opt.state[p].values() if isinstance(v, torch.Tensor) and v.requires_grad]
    return (p, *state)


def _inputs():
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(3, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    g0 = torch.randn(3, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    return p0, g0


@pytest.mark.parametrize("algo,kwargs", CONFIGS, ids=IDS)
def test_gradcheck_through_three_steps(algo, kwargs):
    p0, g0 = _inputs()
    assert torch.autograd.gradcheck(lambda p, g: _run(ts_optim, algo, kwargs, p, g, 3, warm=False), (p0, g0))


@pytest.mark.parametrize("algo,kwargs", CONFIGS, ids=IDS)
def test_gradient_matches_torch(algo, kwargs, request):
    if request.node.callspec.id in TORCH_INCONSISTENT:
        kwargs = {k: v for k, v in kwargs.items() if k != "weight_decay"}
    if request.node.callspec.id in TORCH_FAILS:
        p0, g0 = _inputs()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            torch.autograd.grad(_run(torch.optim, algo, kwargs, p0, g0, 1, warm=True)[0].sum(), [p0, g0])
        p0, g0 = _inputs()
        assert torch.autograd.grad(_run(ts_optim, algo, kwargs, p0, g0, 1, warm=True)[0].sum(), [p0, g0])
        return
    grads = []
    for lib in (torch.optim, ts_optim):
        p0, g0 = _inputs()
        outs = _run(lib, algo, kwargs, p0, g0, 1, warm=True)
        loss = (outs[0] ** 2).sum() + sum((s * 0.3).sum() for s in outs[1:])
        grads.append(torch.autograd.grad(loss, [p0, g0]))
    rtol = 1e-5 if algo in ("Adam", "AdamW", "NAdam") else 1e-9
    for theirs, ours in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=rtol, atol=1e-9)
        assert ours.abs().sum() > 0


def test_non_differentiable_step_records_no_graph():
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    ts_optim.Adam([p], lr=0.1).step()
    assert p.grad_fn is None
