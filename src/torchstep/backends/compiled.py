"""torch.compile without a graph break: a group's fused step as one custom-op call in the graph.

When dynamo traces ``opt.step()`` (``Optimizer._traced_step``), each parameter group becomes

* :func:`prepare` -- run *eagerly while tracing*, as the optimizer's ``_init_group`` (dynamo calls
  that method of a ``torch.optim.Optimizer`` eagerly and turns the tensors it puts in its list
  arguments into graph inputs, guarded): it checks the group, creates missing state, compiles the
  kernel, and registers a :class:`StepProgram` -- everything that is not a tensor -- under an
  integer key;
* :func:`run_traced` -- traced: one call of ``torchstep::fused_step(params, grads, states, steps,
  fresh, hypers, program)``. ``states`` is every state tensor, name-major; ``steps`` the
  per-parameter ``step`` counters (0-d); ``fresh`` one uint8 per parameter, 1 until its first
  update ran (SGD's first momentum step differs); ``hypers`` the group's tensor hyperparameters
  (a tensor lr changes without a recompile); ``program`` the key.

The op's real implementation (:func:`_fused_step`) uses only what it receives -- under
functionalization those may be other tensors than the optimizer holds -- and trusts none of it:
every call checks each tensor it will hand the kernel (plain dense, contiguous, the program's
dtype and device, the parameter's shape, no written tensor overlapping another or a gradient) and
builds the pointer tables from those tensors; nothing is cached between calls but the program.
Step-dependent scalars (bias corrections) are computed there, from the counters' values, so no
``.item()`` is traced. A group the op cannot take (another backend forced, ``differentiable``,
``cautious``, mixed dtypes or devices, complex or non-contiguous tensors, no kernel) runs eagerly
behind a graph break (:func:`_eager_group`).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import torch

from ..core import check, lowbit, wrappers
from ..core.state import ensure_state
from . import cpu_kernel, dispatch, fused
from . import plan as plan_mod

_registry: list["StepProgram"] = []
_keys: dict[tuple, int] = {}


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


@dataclasses.dataclass(frozen=True, eq=False)
class StepProgram:
    """What the op needs besides tensors and numbers: the algorithm, its state names, the
    group's other options (baked into the graph), where the tensor and number options go
    (``tensor_keys`` / ``number_keys``: (option, index in a tuple option or None); dynamo may
    pass a changing float as a graph input rather than guard on it), and the kernel's kind and dtype."""

    algo: Any
    names: tuple[str, ...]
    options: dict
    tensor_keys: tuple[tuple[str, int | None], ...]
    number_keys: tuple[tuple[str, int | None, type], ...]
    kind: str
    dtype: torch.dtype

    def group(self, hypers: list, numbers: list[float]) -> dict:
        """The parameter group as the algorithm's ``scalars`` reads it, with ``hypers`` and
        ``numbers`` in place."""
        group = dict(self.options)
        filled = [(k, i, v) for (k, i), v in zip(self.tensor_keys, hypers)]
        filled += [(k, i, kind(v)) for (k, i, kind), v in zip(self.number_keys, numbers)]
        for key, index, value in filled:
            if index is None:
                group[key] = value
            else:
                items = list(group[key])
                items[index] = value
                group[key] = tuple(items)
        return group


def _split_options(group: dict) -> tuple[dict, tuple, tuple]:
    """The group's options without ``params``, with tensors and numbers (in tuples too) replaced
    by None, and where they were."""
    options, tensor_keys, number_keys = {}, [], []
    for key, value in group.items():
        if key in ("params", "param_names"):
            continue
        if isinstance(value, torch.Tensor):
            tensor_keys.append((key, None))
            value = None
        elif _is_number(value):
            number_keys.append((key, None, type(value)))
            value = None
        elif type(value) is tuple:
            tensor_keys += [(key, i) for i, v in enumerate(value) if isinstance(v, torch.Tensor)]
            number_keys += [(key, i, type(v)) for i, v in enumerate(value) if _is_number(v)]
            value = tuple(None if isinstance(v, torch.Tensor) or _is_number(v) else v for v in value)
        options[key] = value
    return options, tuple(tensor_keys), tuple(number_keys)


def _pick(group: dict, key: str, index: int | None) -> Any:
    """``group[key]``, or its ``index``-th item."""
    return group[key] if index is None else group[key][index]


def register(program: StepProgram) -> int:
    """The key of ``program`` (an equal one registered before keeps its key)."""
    try:
        ident = (program.algo, program.names, tuple(sorted(program.options.items())), program.tensor_keys,
                 program.number_keys, program.kind, program.dtype)
        hash(ident)
    except TypeError:  # an unhashable option value: a key of its own
        ident = ("unshared", len(_registry))
    key = _keys.get(ident)
    if key is None:
        key = _keys[ident] = len(_registry)
        _registry.append(program)
    return key


def _check_operands(prog: StepProgram, params, grads, columns, steps, fresh) -> None:
    """Refuse (before anything is written) any tensor the kernel must not be handed."""
    n = len(params)
    if len(grads) != n or any(len(c) != n for c in columns) or len(steps) not in (0, n) or fresh.numel() != n:
        raise RuntimeError("torchstep::fused_step: operand lists of different lengths")
    device = params[0].device
    for kind, tensors in (("parameter", params), ("gradient", grads), *((f"state '{m}'", c) for m, c in
                                                                       zip(prog.names, columns))):
        for p, t in zip(params, tensors):
            if not (plan_mod.is_plain(t) and t.is_contiguous() and t.dtype == prog.dtype and t.device == device
                    and t.shape == p.shape):
                raise RuntimeError(
                    f"torchstep::fused_step: a {kind} tensor is not a contiguous dense {prog.dtype} tensor on "
                    f"{device} shaped like its parameter (got {type(t).__name__} {t.dtype} {tuple(t.shape)})")
    written = [params, *columns]
    if plan_mod.overlapping(written):
        raise RuntimeError("torchstep::fused_step: tensors the step writes share memory")
    spans = plan_mod.Written([t for col in written for t in col])
    if spans.hit_by([g.data_ptr() for g in grads], [g.numel() * g.element_size() for g in grads]):
        raise RuntimeError("torchstep::fused_step: a gradient shares memory with a tensor the step writes")


@torch.library.custom_op("torchstep::fused_step", mutates_args=("params", "states", "steps", "fresh"))
def fused_step(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[torch.Tensor],
               steps: list[torch.Tensor], fresh: torch.Tensor, hypers: list[torch.Tensor], numbers: list[float],
               program: int) -> None:
    """One fused step of the registered ``program`` over the given tensors (see the module docstring)."""
    if not params:
        return
    prog = _registry[program]
    algo, n = prog.algo, len(params)
    columns = [states[k * n:(k + 1) * n] for k in range(len(prog.names))]
    _check_operands(prog, params, grads, columns, steps, fresh)
    group = prog.group(hypers, numbers)
    if algo.elementwise_names(group) != prog.names:
        raise RuntimeError("torchstep::fused_step: the group's options now call for other state tensors "
                           f"({algo.elementwise_names(group)} instead of {prog.names}); recompile the step")
    firsts = fresh.tolist()
    counts = [float(s) + 1 for s in steps] if steps else [None] * n
    runs: dict[tuple, list[int]] = collections.defaultdict(list)
    for i in range(n):
        runs[(counts[i], bool(firsts[i]))].append(i)
    work = []  # every kernel first: a failure leaves nothing half done
    for (step, first), members in runs.items():
        scalars = fused.concrete_flags(algo.scalars(group, step, first))
        runner, program_ = fused._kernel(algo, prog.names, group, scalars, prog.dtype, False, prog.kind)
        work.append((members, scalars, runner, program_))
    if steps:
        torch._foreach_add_(steps, 1)
    for members, scalars, runner, program_ in work:
        values = {**scalars, "__lr": group["lr"], "__wd": group.get("weight_decay", 0), "__inv_scale": None}
        uniform = cpu_kernel.evaluate_uniform(program_, [wrappers.squeeze_scalar(values[k]) for k in program_.scalars])
        tables = [plan_mod.pointer_table([col[i] for i in members]) for col in (params, grads, *columns)]
        runner.run(tables, tuple(params[i].numel() for i in members), uniform, params[0].device)
    fresh.zero_()


@fused_step.register_fake
def _fused_step_fake(params, grads, states, steps, fresh, hypers, numbers, program) -> None:
    """Shapes do not change and nothing is returned: the fake step does nothing."""
    return None


def _fusable(opt: Any, group: dict) -> bool:
    """Whether the group may take the op at all: the eager path's choice (grad mode aside), and
    neither Triton forced nor a cautious group."""
    if dispatch._forced.get() == "triton" or group.get("cautious", False) or lowbit.active(group):
        return False  # (state in fewer bits, or rounded bf16 weights: the eager fused step)
    return dispatch._choose_path(opt, group, grad_mode_matters=False)[0]


def _fresh_flags(opt: Any, group: dict, params: list, created: list[bool]) -> torch.Tensor:
    """The group's ``fresh`` tensor (kept on ``opt``, reused so graphs keep their input): 1 for a
    parameter whose state this or an earlier, not yet run, trace created."""
    held = plan_mod.held_by(opt, "_compiled_fresh", group, dict)
    before = dict(zip(map(id, held.get("params", ())), held["fresh"].tolist())) if "fresh" in held else {}
    flags = [int(c or before.get(id(p), 0)) for p, c in zip(params, created)]
    fresh = held.get("fresh")
    if fresh is None or fresh.numel() != len(flags):
        fresh = held["fresh"] = torch.zeros(len(flags), dtype=torch.uint8)
    fresh.copy_(torch.tensor(flags, dtype=torch.uint8))
    held["params"] = list(params)
    return fresh


def _candidates(opt: Any, group: dict) -> list | None:
    """The group's parameters with a gradient, if the op can take every one, else None."""
    with_grad = [p for p in group["params"] if p.grad is not None]
    if len(set(map(id, with_grad))) != len(with_grad):
        return None
    kinds = {(fused.kernel_kind(p), p.dtype, p.device) for p in with_grad}
    if len(kinds) > 1 or any(p.is_complex() or p.numel() == 0 or not fused.can_fuse(p, p.grad) for p in with_grad):
        return None
    return with_grad


def prepare(opt: Any, group: dict, params: list, grads: list, states: list, steps: list, fresh: list) -> Any:
    """``_init_group`` (eager, while tracing): (program key, tensor option keys, number option keys), (-1, (), ()) when no
    parameter has a gradient, or None when the group runs eagerly. State is created here."""
    opt._check_loaded_state()
    opt._check_fused_params()
    if opt._step_paths is not None:
        index = next(i for i, g in enumerate(opt.param_groups) if g is group)
        check.step_flags(opt._step_paths, group, index, sparse_ok=opt.algorithm.sparse_update is not None)
    if not _fusable(opt, group):
        return None
    with_grad = _candidates(opt, group)
    if with_grad is None:
        return None
    if not with_grad:
        return (-1, (), ())
    algo = opt.algorithm
    names, all_names = algo.elementwise_names(group), algo.state_names(group)
    for p in with_grad:
        for n in names:
            if n in opt.state.get(p, {}):
                plan_mod.check_state_shape(fused.param_index(opt, p), p, n, opt.state[p][n])
    created, made = [], []
    for p in with_grad:
        before = set(opt.state[p])
        created.append(ensure_state(algo, p, group, opt.state[p], all_names))
        made.append([k for k in opt.state[p] if k not in before])
    p0 = with_grad[0]
    options, tensor_keys, number_keys = _split_options(group)
    prog = StepProgram(algo, names, options, tensor_keys, number_keys, fused.kernel_kind(p0), p0.dtype)
    try:
        if not all(plan_mod.state_fits(p, opt.state[p], names) for p in with_grad):
            raise cpu_kernel.KernelUnavailable("state tensors the kernel cannot take")
        if plan_mod.overlapping([with_grad] + [[opt.state[p][n] for p in with_grad] for n in names]):
            raise cpu_kernel.KernelUnavailable("tensors sharing memory")
        for first in {True, False}:  # compile now: a kernel that cannot be had is an eager group
            step = float(opt.state[p0]["step"]) + 1 if algo.counts_steps else None
            scalars = fused.concrete_flags(algo.scalars(group, step, first))
            fused._kernel(algo, names, group, scalars, prog.dtype, False, prog.kind)
    except cpu_kernel.KernelUnavailable:
        for p, keys in zip(with_grad, made):
            fused._forget(opt, p, keys)
        return None
    for p in with_grad:
        state = opt.state[p]
        if not state:  # no state kept (SGD without momentum): no entry, as in torch
            del opt.state[p]
            continue
        if algo.counts_steps and state["step"]._base is not None:  # a view into the eager plan's buffer
            state["step"] = state["step"].clone()
        steps += [state["step"]] if algo.counts_steps else []
    params += with_grad
    grads += [p.grad for p in with_grad]
    states += [opt.state[p][n] for n in names for p in with_grad]
    fresh.append(_fresh_flags(opt, group, with_grad, created))
    return (register(prog), tensor_keys, tuple((k, i) for k, i, _ in number_keys))


@torch.compiler.disable
def _eager_group(opt: Any, group: dict) -> None:
    """A group the op cannot take: its eager step (a graph break)."""
    keeps_state = opt.algorithm.counts_steps or bool(opt.algorithm.state_names(group))
    known = None if keeps_state else {p for p in group["params"] if p in opt.state}
    with torch.no_grad():
        dispatch.run_group_on_backend(opt, group, None, group)
    if known is not None:
        opt._drop_empty_state(group, known)


def run_traced(opt: Any, group: dict) -> None:
    """The group's step as dynamo traces it: :func:`prepare` (eager, via ``_init_group``), then
    one ``torchstep::fused_step`` call -- or the eager group step when ``prepare`` said so."""
    params, grads, states, steps, fresh = [], [], [], [], []
    found = opt._init_group(group, params, grads, states, steps, fresh)
    if found is None:
        _eager_group(opt, group)
        return
    key, tensor_keys, number_keys = found
    if key < 0:
        return
    hypers = [_pick(group, k, i) for k, i in tensor_keys]
    numbers = [_pick(group, k, i) for k, i in number_keys]
    torch.ops.torchstep.fused_step(params, grads, states, steps, fresh[0], hypers, numbers, key)
