"""Run the Triton (CUDA) kernel path on CPU tensors under Triton's interpreter and compare it
with the reference backend. Executed in a subprocess by test_triton_path.py, because
TRITON_INTERPRET must be set before triton is imported. Prints one JSON line per case."""

import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

import torchstep.optim as ts_optim  # noqa: E402
from registry import REPRESENTATIVE  # noqa: E402
from torchstep.backends import staged, use  # noqa: E402
from torchstep.backends.fused import TritonKernel  # noqa: E402

EXTRA = [("Adam", dict(lr=1e-2, maximize=True, weight_decay=0.1, decoupled_weight_decay=True)),
         ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1)), ("RMSprop", dict(lr=1e-2)),
         # per-tensor algorithms: fused passes with per-tensor scalars and per-tensor reductions
         ("Lamb", dict(lr=1e-2, weight_decay=0.1)),
         ("Lamb", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, bias_correction=False, maximize=True)),
         ("LARS", dict(lr=0.5, weight_decay=0.01, nesterov=True)), ("LARS", dict(lr=0.5, momentum=0.0)),
         # row/column norms and a matrix stage between the passes
         ("Adafactor", dict(lr=1e-2, weight_decay=0.1, maximize=True))]


def run(backend, algo, kwargs, dtype):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in [(), (5,), (3, 700)]]
    opt = getattr(ts_optim, algo)(params, **kwargs)
    with use(backend):
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
            opt.step()
    return params, opt


for algo, kwargs in list(REPRESENTATIVE.items()) + EXTRA:
    for dtype in (torch.float32, torch.float64):
        a, oa = run("triton", algo, kwargs, dtype)
        b, ob = run("reference", algo, kwargs, dtype)
        diff = max((x - y).abs().max().item() for x, y in zip(a, b))
        state_diff = max([(oa.state[x][k] - ob.state[y][k]).abs().max().item()
                          for x, y in zip(a, b) for k in ob.state[y] if isinstance(ob.state[y][k], torch.Tensor)],
                         default=0.0)
        print(json.dumps({"algo": algo, "kwargs": repr(kwargs), "dtype": str(dtype), "param_diff": diff,
                          "state_diff": state_diff}), flush=True)

# the per-tensor algorithms really ran as Triton passes (a fallback would have raised)
assert sum(isinstance(runner, TritonKernel) for runner, _ in staged._kernels.values()) >= 4

# 16-bit parameters: computed in float32 inside the kernel, as the C kernel does
for dtype in (torch.bfloat16, torch.float16):
    a, _ = run("triton", "Adam", dict(lr=1e-2), dtype)
    b, _ = run("fused", "Adam", dict(lr=1e-2), dtype)
    diff = max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b))
    print(json.dumps({"algo": "Adam-vs-C", "kwargs": "{}", "dtype": str(dtype), "param_diff": diff, "state_diff": 0.0}))
