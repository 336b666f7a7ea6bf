"""Sparse gradients from nn.Embedding(sparse=True): SparseAdam, Adagrad and SGD match torch."""

import pytest
import torch

import torchstep.optim as ts_optim

CONFIGS = [
    ("SparseAdam", dict(lr=0.05)),
    ("SparseAdam", dict(lr=0.05, betas=(0.5, 0.9), eps=1e-4, maximize=True)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.2, maximize=True)),
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("algo,kwargs", CONFIGS, ids=[f"{a}-{i}" for i, (a, _) in enumerate(CONFIGS)])
def test_sparse_embedding_matches_torch(algo, kwargs, dtype):
    torch.manual_seed(0)
    ref = torch.nn.Embedding(20, 4, sparse=True).to(dtype)
    mine = torch.nn.Embedding(20, 4, sparse=True).to(dtype)
    mine.load_state_dict(ref.state_dict())
    t = getattr(torch.optim, algo)(ref.parameters(), **kwargs)
    s = getattr(ts_optim, algo)(mine.parameters(), **kwargs)
    gen = torch.Generator().manual_seed(1)
    for _ in range(25):
        idx = torch.randint(0, 20, (6,), generator=gen)  # repeated rows are summed by coalesce
        target = torch.randn(6, 4, generator=gen, dtype=dtype)
        for emb, opt in ((ref, t), (mine, s)):
            opt.zero_grad()
            (emb(idx) - target).pow(2).sum().backward()
            opt.step()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mine.weight, ref.weight, **tol)
    for key, value in t.state[ref.weight].items():
        other = s.state[mine.weight][key]
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(other.to_dense(), value.to_dense(), **tol)
        else:
            assert value == other
