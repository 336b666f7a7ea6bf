"""torch.compile around torchstep steps: ``torch.compile(opt.step)`` (the recipe in torch's docs)
and a compiled training step that calls ``opt.step()`` give eager's results -- tensor lr and a
scheduler changing it included -- and compile no more frames than torch.optim in the same
script. (A torchstep step always runs eagerly: see ``core/optimizer.py``.) One inductor cache
directory is shared by the module."""

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
