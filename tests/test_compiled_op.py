"""The custom op behind the traced step (``torchstep::fused_step``), called directly: it refuses
tensors the kernel must not be handed, before writing anything (no torch.compile needed)."""

import pytest
import torch

import torchstep.optim as ts_optim
from torchstep.backends import compiled


def _program(n: int = 2):
    """A registered AdamW program and matching operands for ``n`` parameters of 4x3."""
    opt = ts_optim.AdamW([torch.zeros(1)], lr=torch.tensor(0.01))
    group = opt.param_groups[0]
    options, tensor_keys, number_keys = compiled._split_options(group)
    key = compiled.register(compiled.StepProgram(opt.algorithm, ("exp_avg", "exp_avg_sq"), options, tensor_keys,
                                                 number_keys, "c", torch.float32))
    params = [torch.randn(4, 3) for _ in range(n)]
    grads = [torch.randn(4, 3) for _ in range(n)]
    states = [torch.zeros(4, 3) for _ in range(2 * n)]
    steps = [torch.tensor(0.0) for _ in range(n)]
    hypers = [group[k] if i is None else group[k][i] for k, i in tensor_keys]
    numbers = [group[k] if i is None else group[k][i] for k, i, _ in number_keys]
    return key, params, grads, states, steps, torch.ones(n, dtype=torch.uint8), hypers, numbers


def test_op_steps_what_it_receives():
    key, params, grads, states, steps, fresh, hypers, numbers = _program()
    before = [p.clone() for p in params]
    torch.ops.torchstep.fused_step(params, grads, states, steps, fresh, hypers, numbers, key)
    assert all(float(s) == 1 for s in steps) and fresh.sum() == 0
    assert not any(torch.equal(a, b) for a, b in zip(before, params))


@pytest.mark.parametrize("spoil", ["shape", "dtype", "strided", "alias", "grad_alias"])
def test_op_refuses_bad_operands_before_writing(spoil):
    key, params, grads, states, steps, fresh, hypers, numbers = _program()
    if spoil == "shape":
        states[1] = torch.zeros(3, 4)
    elif spoil == "dtype":
        grads[0] = grads[0].double()
    elif spoil == "strided":
        states[0] = torch.zeros(3, 4).t()
    elif spoil == "alias":
        states[2] = params[0]
    else:
        grads[1] = states[3]
    before = [t.clone() for t in params + states + steps]
    with pytest.raises(RuntimeError, match="torchstep::fused_step"):
        torch.ops.torchstep.fused_step(params, grads, states, steps, fresh, hypers, numbers, key)
    assert all(torch.equal(a, b) for a, b in zip(before, params + states + steps))


def test_op_schema_and_fake():
    key, params, grads, states, steps, fresh, hypers, numbers = _program(1)
    torch.library.opcheck(torch.ops.torchstep.fused_step.default,
                          (params, grads, states, steps, fresh, hypers, numbers, key),
                          test_utils=("test_schema", "test_faketensor"))
