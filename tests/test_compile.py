"""torch.compile around torchstep steps: ``torch.compile(opt.step)`` (the recipe in torch's docs)
and a compiled training step that calls ``opt.step()`` give eager's results -- tensor lr and a
scheduler changing it included -- and compile no more frames than torch.optim in the same
script. An element-wise step is traced as one ``torchstep::fused_step`` call per group (no graph
break at ``opt.step()``, see ``backends/compiled.py``); the rest runs eagerly behind a graph
break. One inductor cache directory is shared by the module."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import torchstep.optim as ts_optim

# every element-wise algorithm, with a tensor lr where its constructor takes one
ELEMENTWISE = {
    "SGD": dict(momentum=0.9), "Adam": dict(amsgrad=True), "AdamW": dict(), "Adagrad": dict(), "Adadelta": dict(),
    "RMSprop": dict(centered=True, momentum=0.5), "Adamax": dict(), "NAdam": dict(), "RAdam": dict(),
    "ASGD": dict(), "Rprop": dict(), "Lion": dict(), "Adan": dict(), "AdaBelief": dict(), "ADOPT": dict(),
    "AdEMAMix": dict(), "AdamWScheduleFree": dict(), "SGDScheduleFree": dict(), "Lamb": dict(), "LARS": dict(),
    "Prodigy": dict(lr=1.0),
}
TENSOR_LR = {"SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "RMSprop", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop"}


@pytest.fixture(autouse=True, scope="module")
def shared_inductor_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("inductor")))
    yield
    mp.undo()
    torch._dynamo.reset()


def _run(module, name: str, kwargs: dict, compiled: bool, steps: int = 10, backend: str = "inductor"):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in [(5, 3), (7,), ()]]
    lr = kwargs.pop("lr", 0.01)
    opt = getattr(module, name)(params, lr=torch.tensor(lr) if name in TENSOR_LR else lr, **kwargs)
    getattr(opt, "train", lambda: None)()
    sched = module.lr_scheduler.StepLR(opt, step_size=2, gamma=0.7)
    step = torch.compile(opt.step, backend=backend) if compiled else opt.step
    for i in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        step()
        sched.step()
    return params, opt


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_compiled_step_equals_eager(name):
    eager, _ = _run(ts_optim, name, dict(ELEMENTWISE[name]), compiled=False)
    torch._dynamo.reset()
    compiled, opt = _run(ts_optim, name, dict(ELEMENTWISE[name]), compiled=True)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b), name
    assert all(float(st["step"]) == 10 for st in opt.state.values() if "step" in st)


def _frames(module, name: str, backend: str = "eager") -> int:
    torch._dynamo.reset()
    counters.clear()
    _run(module, name, dict(ELEMENTWISE[name]), compiled=True, steps=12, backend=backend)
    return counters["frames"]["total"]


@pytest.mark.parametrize("name", ["AdamW", "SGD"])
def test_no_more_compiled_frames_than_torch(name):
    """lr (a tensor, changed by the scheduler) and the step count change every step: nothing
    recompiles after the first step."""
    ours, theirs = _frames(ts_optim, name), _frames(torch.optim, name)
    assert ours <= theirs, (ours, theirs)
    assert ours <= 2


def test_compiled_training_step_calling_step():
    """forward, backward and ``opt.step()`` in one compiled function (inductor): the same
    parameters as eager, nothing compiled after the first steps as lr changes, and no more
    recompiled frames than with torch.optim in the same script."""
    def run(module, compiled: bool):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        opt = module.AdamW(model.parameters(), lr=torch.tensor(0.01), weight_decay=0.1)
        sched = module.lr_scheduler.LinearLR(opt, start_factor=0.5, total_iters=5)

        def train_step(x):
            opt.zero_grad()
            loss = model(x).square().mean()
            loss.backward()
            opt.step()
            return loss

        fn = torch.compile(train_step) if compiled else train_step
        frames = []
        for i in range(8):
            fn(torch.randn(4, 6, generator=torch.Generator().manual_seed(i)))
            sched.step()
            frames.append(counters["frames"]["total"])
        return [p.detach().clone() for p in model.parameters()], frames

    eager, _ = run(ts_optim, False)
    compiled, frames = run(ts_optim, True)
    _, torch_frames = run(torch.optim, True)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert frames[1] == frames[-1], frames  # nothing recompiled after the first steps
    assert frames[-1] - frames[0] <= torch_frames[-1] - torch_frames[0], (frames, torch_frames)


# -- the traced step: one torchstep::fused_step call per group, no graph break at opt.step() ------

# (class, options) whose step the custom op takes, and ones it cannot: LAMB (per-tensor trust
# ratios, its own step) and a cautious Lion group (the traced step runs that group eagerly)
TRACED = {
    "AdamW": dict(lr=0.01, weight_decay=0.1), "SGD": dict(lr=0.05, momentum=0.9, weight_decay=0.01, maximize=True),
    "Adam": dict(lr=0.01, amsgrad=True), "Lion": dict(lr=1e-3),
}
EAGER_ONLY = [("Lamb", dict(lr=0.01)), ("Lion", dict(lr=1e-3, cautious=True)),
              ("AdamW", dict(lr=0.01, state_dtype=torch.bfloat16))]  # state in fewer bits: the eager fused step
_SHAPES = [(5, 3), (7,), (4, 2)]


def _setup(module, name: str, kwargs: dict):
    """Parameters, an optimizer (tensor lr where torch takes one) with a scheduler, and a training
    step whose gradients are its ``weights`` exactly (so eager and compiled see the same ones)."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in _SHAPES]
    kwargs = dict(kwargs)
    if name in TENSOR_LR:
        kwargs["lr"] = torch.tensor(kwargs["lr"])
    opt = getattr(module, name)(params, **kwargs)
    sched = module.lr_scheduler.StepLR(opt, step_size=2, gamma=0.7)

    def train_step(weights):
        loss = sum((p * w).sum() for p, w in zip(params, weights))
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return params, opt, sched, train_step


def _weights(i: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + i)
    return [torch.randn(s, generator=gen) for s in _SHAPES]


def _train(module, name: str, kwargs: dict, compiled: bool, steps: int = 5):
    torch._dynamo.reset()
    params, opt, sched, train_step = _setup(module, name, kwargs)
    fn = torch.compile(train_step) if compiled else train_step
    for i in range(steps):
        fn(_weights(i))
        sched.step()
    return [p.detach().clone() for p in params], opt


def _explain(name: str, kwargs: dict):
    torch._dynamo.reset()
    _, _, _, train_step = _setup(ts_optim, name, kwargs)
    return torch._dynamo.explain(train_step)(_weights(0))


def _breaks_at_step(explained) -> list[str]:
    return [b.reason for b in explained.break_reasons if any("opt.step()" in (f.line or "") for f in b.user_stack)]


@pytest.mark.parametrize("name", sorted(TRACED))
def test_no_graph_break_at_step(name):
    """explain: the only break is torch's own at ``loss.backward()``, and the step's graph holds
    the custom op."""
    explained = _explain(name, TRACED[name])
    assert _breaks_at_step(explained) == [], explained.break_reasons
    assert explained.graph_break_count == 1 and explained.graph_count == 2, explained
    ops = [n.target for g in explained.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert torch.ops.torchstep.fused_step.default in ops or torch.ops.torchstep.fused_step in ops


@pytest.mark.parametrize("name,kwargs", EAGER_ONLY, ids=[n for n, _ in EAGER_ONLY])
def test_unfusable_step_breaks_gracefully(name, kwargs):
    """A step the op cannot take runs eagerly behind a graph break, with eager's results."""
    ops = [n.target for g in _explain(name, kwargs).graphs for n in g.graph.nodes if n.op == "call_function"]
    assert torch.ops.torchstep.fused_step.default not in ops and torch.ops.torchstep.fused_step not in ops
    eager, _ = _train(ts_optim, name, kwargs, compiled=False, steps=3)
    compiled, _ = _train(ts_optim, name, kwargs, compiled=True, steps=3)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(TRACED))
def test_traced_step_equals_eager_and_torch(name):
    """Compiled (inductor) training steps give eager torchstep's parameters exactly, and
    torch.optim's within float32 rounding; the step counters count every step."""
    kwargs = TRACED[name]
    eager, _ = _train(ts_optim, name, kwargs, compiled=False)
    compiled, opt = _train(ts_optim, name, kwargs, compiled=True)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b), name
    assert all(float(st["step"]) == 5 for st in opt.state.values() if "step" in st)
    if hasattr(torch.optim, name):
        theirs, _ = _train(torch.optim, name, kwargs, compiled=False)
        for a, b in zip(theirs, compiled):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_eager_then_compiled_then_eager(name):
    """State made by eager steps (counters as views of one buffer) carries into compiled steps
    and back, as if every step had been eager."""
    kwargs = TRACED[name]
    reference, _ = _train(ts_optim, name, kwargs, compiled=False, steps=6)
    torch._dynamo.reset()
    params, opt, sched, train_step = _setup(ts_optim, name, kwargs)
    fn = torch.compile(train_step)
    for i in range(6):
        (fn if 2 <= i < 4 else train_step)(_weights(i))
        sched.step()
    for a, b in zip(reference, params):
        assert torch.equal(a, b.detach())
