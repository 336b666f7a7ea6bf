"""The CUDA (Triton) kernels of Lion, Adan, AdaBelief, ADOPT and AdEMAMix, run on CPU tensors by
Triton's interpreter, give the reference backend's results (cautious steps included). In a
subprocess, because TRITON_INTERPRET must be set before triton is imported."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="triton is a test dependency (pip install -e .[test])")

SCRIPT = r"""
import json, os
os.environ["TRITON_INTERPRET"] = "1"
import torch
import torchstep.optim as O
from torchstep.backends import use

CASES = [("Lion", dict(lr=1e-3, weight_decay=0.1)), ("Lion", dict(lr=1e-3, cautious=True)),
         ("Adan", dict(lr=1e-2, weight_decay=0.05, max_grad_norm=1.0)), ("Adan", dict(lr=1e-2, no_prox=True, weight_decay=0.05)),
         ("AdaBelief", dict(lr=1e-2, amsgrad=True)), ("AdaBelief", dict(lr=1e-2, rectify=False, decoupled_weight_decay=False, weight_decay=0.1)),
         ("ADOPT", dict(lr=1e-2, maximize=True)), ("AdEMAMix", dict(lr=1e-2, alpha_warmup=3, beta3_warmup=3, cautious=True))]

def run(backend, name, kwargs, dtype):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in [(), (5,), (3, 700)]]
    opt = getattr(O, name)(params, **kwargs)
    with use(backend):
        for _ in range(8):  # past AdaBelief's switch to the rectified step
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
            opt.step()
    return params, opt

for name, kwargs in CASES:
    for dtype in (torch.float32, torch.float64):
        (a, oa), (b, ob) = run("triton", name, kwargs, dtype), run("reference", name, kwargs, dtype)
        diff = max((x - y).abs().max().item() for x, y in zip(a, b))
        state = max((oa.state[x][k] - v).abs().max().item() for x, y in zip(a, b) for k, v in ob.state[y].items())
        print(json.dumps(dict(name=name, kwargs=repr(kwargs), dtype=str(dtype), diff=diff, state=state)))
"""


def test_triton_kernels_match_the_reference_backend():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600,
                         cwd=os.path.dirname(__file__))
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert {r["name"] for r in results} == {"Lion", "Adan", "AdaBelief", "ADOPT", "AdEMAMix"} and len(results) == 16
    for r in results:
        tol = 1e-5 if r["dtype"] == "torch.float32" else 1e-12
        assert r["diff"] <= tol and r["state"] <= tol, r
