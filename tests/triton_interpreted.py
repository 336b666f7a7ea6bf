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

# state in fewer bits and rounded bfloat16 weights (torchstep.core.lowbit) through the Triton kernel
LOWBIT = [("AdamW", dict(lr=1e-2, state_dtype="int8"), torch.float32),
          ("AdamW", dict(lr=1e-2, state_dtype=torch.bfloat16), torch.float32),
          ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, state_dtype="int8"), torch.float32),
          ("Lion", dict(lr=1e-3, state_dtype="int8"), torch.float64),
          ("AdamW", dict(lr=1e-2, stochastic_rounding=True), torch.bfloat16),
          ("AdamW", dict(lr=1e-2, kahan=True, state_dtype=torch.bfloat16), torch.bfloat16),
          ("Adam", dict(lr=1e-2, stochastic_rounding=3, state_dtype="int8"), torch.bfloat16)]
for algo, kwargs, dtype in LOWBIT:
    gen_shapes = [(3, 2000), (5,)]  # 6000 elements: int8 blocks, the last one partial; 5: full precision
    outs = []
    for backend in ("triton", "reference"):
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in gen_shapes]
        opt = getattr(ts_optim, algo)(params, **kwargs)
        with use(backend):
            for _ in range(3):
                for p in params:
                    p.grad = torch.randn(p.shape, generator=gen).to(dtype)
                opt.step()
        outs.append((params, opt))
    (a, oa), (b, ob) = outs
    diff = max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b))
    codes = [(oa.state[x][k].long() - ob.state[y][k].long()).abs().max().item()
             for x, y in zip(a, b) for k in ob.state[y] if ob.state[y][k].dtype == torch.uint8]
    others = [(oa.state[x][k].double() - ob.state[y][k].double()).abs().max().item()
              for x, y in zip(a, b) for k in ob.state[y] if ob.state[y][k].dtype != torch.uint8]
    print(json.dumps({"algo": f"lowbit-{algo}", "kwargs": repr(kwargs), "dtype": "lowbit " + str(dtype),
                      "param_diff": diff, "state_diff": max(others), "code_diff": max(codes, default=0),
                      "has_codes": bool(codes)}), flush=True)
