"""Invalid arguments: torch rejects them and so does torchstep, with the same exception type and
a message that names the argument, the value and what is allowed."""

import re

import pytest
import torch

import torchstep.optim as ts_optim
from helpers import assert_signature_matches
from registry import ERRORS

ALGOS = ["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "RMSprop", "SparseAdam", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop"]


@pytest.mark.parametrize("algo,kwargs,exc,pattern", ERRORS, ids=[f"{e[0]}-{i}" for i, e in enumerate(ERRORS)])
def test_invalid_argument(algo, kwargs, exc, pattern):
    if algo in ALGOS:  # torch.optim's own algorithm: the oracle rejects it too, with the same type
        with pytest.raises(exc):
            getattr(torch.optim, algo)([torch.zeros(2, requires_grad=True)], **kwargs)
    with pytest.raises(exc, match=pattern):
        getattr(ts_optim, algo)([torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("algo", ALGOS)
def test_constructor_signature_matches_torch(algo):
    """Same argument names, order, kinds and defaults as torch 2.13."""
    assert_signature_matches(algo)


@pytest.mark.parametrize(
    "algo,message",
    [
        ("Adam", "Adam does not support sparse gradients, please consider SparseAdam instead"),
        ("AdamW", "Adam does not support sparse gradients"),
        ("Adadelta", "Adadelta does not support sparse gradients"),
        ("RMSprop", "RMSprop does not support sparse gradients"),
        ("Adamax", "Adamax does not support sparse gradients"),
        ("NAdam", "NAdam does not support sparse gradients"),
        ("RAdam", "RAdam does not support sparse gradients"),
        ("ASGD", "ASGD does not support sparse gradients"),
        ("Rprop", "Rprop does not support sparse gradients"),
    ],
)
def test_sparse_gradient_rejected(algo, message):
    p = torch.zeros(4, 2, requires_grad=True)
    p.grad = torch.sparse_coo_tensor([[0, 2]], torch.ones(2, 2), (4, 2))
    opt = getattr(ts_optim, algo)([p])
    with pytest.raises(RuntimeError, match=re.escape(message)):
        opt.step()


def test_adagrad_sparse_with_weight_decay_rejected():
    p = torch.zeros(4, 2, requires_grad=True)
    p.grad = torch.sparse_coo_tensor([[0, 2]], torch.ones(2, 2), (4, 2))
    with pytest.raises(RuntimeError, match="weight_decay option is not compatible with sparse gradients"):
        ts_optim.Adagrad([p], weight_decay=0.1).step()


def test_sparse_adam_rejects_dense_gradients_and_bad_params():
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="SparseAdam does not support dense gradients, please consider Adam"):
        ts_optim.SparseAdam([p]).step()
    with pytest.raises(ValueError, match=r"Complex params at indices \[\[0, 0\]\]"):
        ts_optim.SparseAdam([torch.zeros(2, dtype=torch.complex64, requires_grad=True)])


@pytest.mark.parametrize(
    "params,exc,pattern",
    [
        (torch.zeros(2), TypeError, r"should be an iterable of Tensors or dicts, but got torch.FloatTensor"),
        ([], ValueError, r"optimizer got an empty parameter list"),
        ([torch.zeros(2), 3.0], TypeError, r"optimizer can only optimize Tensors, but one of the params is float \(params\[1\]\)"),
        ([torch.zeros(2, requires_grad=True) * 2], ValueError, r"can't optimize a non-leaf Tensor \(params\[0\]"),
        ([("a", torch.zeros(2)), torch.zeros(2)], ValueError, r"Some param names are missing \(1 of 2"),
    ],
    ids=["tensor", "empty", "non-tensor", "non-leaf", "half-named"],
)
def test_invalid_params(params, exc, pattern):
    with pytest.raises(exc):
        torch.optim.SGD(params, lr=0.1)
    with pytest.raises(exc, match=pattern):
        ts_optim.SGD(params, lr=0.1)


def test_set_of_params():
    """torch accepts a set at top level (in arbitrary order) and rejects one inside a group; a set
    at top level gets a warning here, because its order -- and so a checkpoint -- is not stable."""
    torch.optim.SGD({torch.zeros(2, requires_grad=True)}, lr=0.1)
    with pytest.warns(UserWarning, match="set"):
        ts_optim.SGD({torch.zeros(2, requires_grad=True)}, lr=0.1)
    with pytest.raises(TypeError):
        torch.optim.SGD([{"params": {torch.zeros(2, requires_grad=True)}}], lr=0.1)
    with pytest.raises(TypeError, match="ordered collections"):
        ts_optim.SGD([{"params": {torch.zeros(2, requires_grad=True)}}], lr=0.1)
