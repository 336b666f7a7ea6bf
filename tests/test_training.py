"""A real training run: the digits MLP reaches the same loss with torchstep.optim.X as with torch.optim.X."""

import pytest
import torch

import torchstep.optim as ts_optim
from torchstep.tasks import DROP_IN_SETUPS, digits_model, load_digits, train

SETUPS = DROP_IN_SETUPS


@pytest.fixture(scope="module")
def data():
    return load_digits()


@pytest.mark.parametrize("algo", list(SETUPS))
def test_same_loss_as_torch(algo, data):
    kwargs = SETUPS[algo]
    ref = train(digits_model(), lambda m: getattr(torch.optim, algo)(m.parameters(), **kwargs), data, epochs=8)
    ours = train(digits_model(), lambda m: getattr(ts_optim, algo)(m.parameters(), **kwargs), data, epochs=8)
    assert ours.losses == pytest.approx(ref.losses, rel=1e-4)
    assert ours.val_accuracy == pytest.approx(ref.val_accuracy, abs=2e-3)
    assert ours.losses[-1] < 0.5 * ours.losses[0]  # it learns
    assert ours.val_accuracy > 0.85


def test_sparse_adam_trains_embedding_bag_like_model():
    """SparseAdam on a sparse embedding + dense head (Adam) learns the digits classes."""
    data = load_digits()
    torch.manual_seed(0)
    # quantise pixels to 4 levels: each (pixel, level) is a token of a sparse embedding
    tokens = (torch.arange(64) * 4 + (data.x_train.clamp(-1.5, 1.49) + 1.5).long()).long()
    emb = torch.nn.EmbeddingBag(256, 16, mode="mean", sparse=True)
    head = torch.nn.Linear(16, 10)
    opt_sparse = ts_optim.SparseAdam(emb.parameters(), lr=0.05)
    opt_dense = ts_optim.Adam(head.parameters(), lr=0.05)
    losses = []
    for epoch in range(30):
        for o in (opt_sparse, opt_dense):
            o.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(emb(tokens)), data.y_train)
        loss.backward()
        opt_sparse.step()
        opt_dense.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
