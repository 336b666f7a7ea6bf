"""The Optimizer base class: parameter groups, lazy per-parameter state, ``state_dict`` in
torch's format, and hooks. Bookkeeping only -- no algorithm math lives here.

An instance is also an instance of ``torch.optim.Optimizer``, so ``torch.amp.GradScaler``,
torch's LR schedulers, Lightning and the Hugging Face Trainer accept it. Every method torch's
base class offers is implemented here; nothing of torch's base implementation runs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from collections import OrderedDict, defaultdict
from copy import deepcopy
from itertools import chain
from typing import Any, Callable, Iterable

import torch
import torch.optim.optimizer as _torch_optimizer
from torch.utils.hooks import RemovableHandle

from . import check, checkpoint, lowbit, runner
from .algorithm import Algorithm
from .state import new_step_tensor

# whether a profiler records (a C function; present in every torch this package supports)
_profiler_enabled = torch._C._autograd._profiler_enabled

# torch's sentinel for "this option has no default"; shared so custom optimizers written for
# torch.optim keep working when they switch base class.
required = _torch_optimizer.required

_HOOK_DICTS = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)


def _hooked(step: Callable) -> Callable:
    """``step`` with global and per-optimizer pre/post hooks run around it, as in torch."""

    @functools.wraps(step)
    def hooked_step(self, *args, **kwargs):
        # the profiler's range, as torch marks a step; opened only while a profiler records (a
        # range costs two operator calls, half the step of a small model), and always while
        # torch.compile traces the step (which keeps the range in the graph)
        recording = torch.compiler.is_compiling() or _profiler_enabled()
        scope = torch.autograd.profiler.record_function(f"Optimizer.step#{type(self).__name__}.step") \
            if recording else contextlib.nullcontext()
        with scope:
            for hook in chain(
                _torch_optimizer._global_optimizer_pre_hooks.values(),
                self._optimizer_step_pre_hooks.values(),
            ):
                result = hook(self, args, kwargs)
                if result is not None:
                    if not (isinstance(result, tuple) and len(result) == 2):
                        raise RuntimeError(
                            f"a step pre-hook must return None or a tuple (new_args, new_kwargs), "
                            f"but {hook!r} returned {result!r}"
                        )
                    args, kwargs = result
            out = step(self, *args, **kwargs)
            for hook in chain(
                self._optimizer_step_post_hooks.values(),
                _torch_optimizer._global_optimizer_post_hooks.values(),
            ):
                hook(self, args, kwargs)
            return out

    return hooked_step


def _with_step_hooks(step: Callable, traced: Callable | None = None) -> Callable:
    """Wrap a ``step`` so hooks run around it, and so torch.compile runs it eagerly (a graph
    break) -- or, given ``traced`` (the base class's step), traces ``traced`` instead when the
    optimizer allows it (:meth:`Optimizer._traceable_step`): each group's update then is a
    custom-op call in the graph (see ``backends/compiled.py``)."""
    if getattr(step, "_torchstep_hooked", False):
        return step
    # Eagerly (and for what the traced step does not cover) the step runs outside dynamo: the
    # fused kernel already is one pass over memory, and tracing the bookkeeping around it
    # (Python counters, pointer tables) would bake values into graphs and recompile every step.
    eager_step = torch.compiler.disable(_hooked(step))
    if traced is None:
        eager_step._torchstep_hooked = True  # type: ignore[attr-defined]
        return eager_step
    traced_step = _hooked(traced)

    @functools.wraps(step)
    def dispatching_step(self, *args, **kwargs):
        if torch.compiler.is_dynamo_compiling() and self._traceable_step(args, kwargs):
            return traced_step(self, *args, **kwargs)
        return eager_step(self, *args, **kwargs)

    dispatching_step._torchstep_hooked = True  # type: ignore[attr-defined]
    return dispatching_step


def _with_lowbit_options(init: Callable) -> Callable:
    """A subclass's ``__init__`` that also takes the keywords ``state_dtype``,
    ``stochastic_rounding`` and ``kahan`` (:mod:`torchstep.core.lowbit`): set ones become
    defaults, and options of every group that does not set its own."""
    if getattr(init, "_torchstep_lowbit", False):
        return init

    @functools.wraps(init)
    def init_with_options(self, *args: Any, state_dtype: Any = None, stochastic_rounding: Any = False,
                          kahan: Any = False, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        given = {"state_dtype": state_dtype, "stochastic_rounding": stochastic_rounding, "kahan": kahan}
        chosen = {k: v for k, v in given.items() if v is not None and v is not False}
        if chosen:
            self.defaults.update(chosen)
            for group in self.param_groups:
                for k, v in chosen.items():
                    group.setdefault(k, v)
                lowbit.check_group(self.algorithm, group, type(self).__name__)
            lowbit.check_group(self.algorithm, self.defaults, type(self).__name__)

    try:
        sig = inspect.signature(init)
        extra = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=d)
                 for k, d in (("state_dtype", None), ("stochastic_rounding", False), ("kahan", False))]
        params = [q for q in sig.parameters.values() if q.kind is not inspect.Parameter.VAR_KEYWORD]
        tail = [q for q in sig.parameters.values() if q.kind is inspect.Parameter.VAR_KEYWORD]
        init_with_options.__signature__ = sig.replace(parameters=params + extra + tail)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        pass
    init_with_options._torchstep_lowbit = True  # type: ignore[attr-defined]
    return init_with_options


def _add_hook(hooks: OrderedDict, hook: Callable, prepend: bool) -> RemovableHandle:
    handle = RemovableHandle(hooks)
    hooks[handle.id] = hook
    if prepend:
        hooks.move_to_end(handle.id, last=False)
    return handle


class _LoadedGroup(dict):
    """A parameter group as ``load_state_dict`` restored it. torch leaves an option the saved
    group lacks missing, so the step that reads it raises KeyError; this raises the same
    KeyError, saying which option of which group is missing and why."""

    __slots__ = ("index",)

    def __missing__(self, key: Any) -> Any:
        raise KeyError(
            f"{key!r} (parameter group {getattr(self, 'index', '?')} has no option {key!r}: the "
            "state_dict it was loaded from lacks it; set optimizer.param_groups[i][key] or load "
            "a state_dict written by this optimizer class)"
        )

    def __reduce_ex__(self, protocol: Any) -> Any:  # pickles / deep-copies as a plain dict
        return (dict, (dict(self),))


class Optimizer(torch.optim.Optimizer):
    """Base class of every torchstep optimizer (and a drop-in base for custom ones).

    ``params`` is an iterable of tensors, of ``(name, tensor)`` pairs (as from
    ``named_parameters()``), or of dicts that each form a parameter group; options missing from
    a group fall back to ``defaults``. Subclasses that set ``algorithm`` get ``step`` for free.
    """

    algorithm: Algorithm | None = None
    # The options ``load_state_dict`` (``__setstate__``) fills in when a loaded group lacks them,
    # with the value it fills in: for a class torch.optim also has, what torch's own
    # ``__setstate__`` fills (the options added over torch's history); an option outside it stays
    # missing and the step reading it raises KeyError, as in torch. None: every option that has
    # a default (the algorithms torch does not have, and custom subclasses).
    _load_defaults: dict[str, Any] | None = None
    # torch's implementation paths of this class, whose checks of a group's flags torch makes at
    # the step (``check.step_flags``); None for a class torch.optim does not have
    _step_paths: Any = None

    @property
    def _step_supports_amp_scaling(self) -> bool:  # GradScaler hands us grad_scale / found_inf
        return self.algorithm is not None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "step" in cls.__dict__:
            cls.step = _with_step_hooks(cls.__dict__["step"])  # type: ignore[method-assign]
        if "__init__" in cls.__dict__:
            cls.__init__ = _with_lowbit_options(cls.__dict__["__init__"])  # type: ignore[method-assign]
        cls._step_hooks_plain = all(getattr(cls, n) is getattr(Optimizer, n) for n in Optimizer._STEP_HOOKS)

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        torch._C._log_api_usage_once("torchstep.optimizer")
        for name in ("foreach", "fused", "capturable"):
            check.flag(defaults.get(name), name)
        self.defaults = defaults
        for name in _HOOK_DICTS:
            setattr(self, name, OrderedDict())
        if isinstance(params, torch.Tensor):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or dicts, "
                f"but got {torch.typename(params)} (wrap a single tensor in a list: [tensor])"
            )
        if isinstance(params, (set, frozenset)):
            warnings.warn(
                "params is a set: its order changes between runs, so the parameter numbering in "
                "state_dict() will too. Pass a list (e.g. list(model.parameters())) instead.",
                stacklevel=3,
            )
        self.state: defaultdict[torch.Tensor, Any] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []
        groups = list(params)
        if len(groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)
        self._warned_capturable_if_run_uncaptured = True

    # -- groups ---------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters with its own options (missing ones come from ``defaults``)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        if "params" not in param_group:
            raise ValueError("param_group must have a 'params' entry (the tensors to optimize)")
        params = param_group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but the ordering "
                "of tensors in sets will change between runs. Please use a list instead."
            )
        else:
            params = list(params)
        names = [p[0] for p in params if isinstance(p, tuple)]
        tensors = [p[1] if isinstance(p, tuple) else p for p in params]
        if names and len(names) != len(tensors):
            raise ValueError(
                "all optimizer params should be with/without names. Some param names are missing "
                f"({len(names)} of {len(tensors)} params are named)"
            )
        param_group["params"] = tensors
        if names:
            param_group["param_names"] = names
        for i, p in enumerate(tensors):
            if not isinstance(p, torch.Tensor):
                raise TypeError(
                    "optimizer can only optimize Tensors, but one of the params is "
                    f"{torch.typename(p)} (params[{i}])"
                )
            if not self.defaults.get("differentiable", None) and not (p.is_leaf or p.retains_grad):
                raise ValueError(
                    f"can't optimize a non-leaf Tensor (params[{i}] has grad_fn {type(p.grad_fn).__name__}; "
                    "pass a leaf such as an nn.Parameter, or use differentiable=True)"
                )
        for name, default in self.defaults.items():
            if default is required and name not in param_group:
                raise ValueError(
                    f"parameter group didn't specify a value of required optimization parameter {name}"
                )
            param_group.setdefault(name, default)
        if len(tensors) != len(set(tensors)):
            warnings.warn(
                "optimizer contains a parameter group with duplicate parameters; "
                "in future, this will cause an error",
                stacklevel=3,
            )
        existing: set[torch.Tensor] = set()
        for group in self.param_groups:
            existing.update(group["params"])
            if ("param_names" in group) != ("param_names" in param_group):
                which = "with names" if "param_names" in param_group else "without names"
                raise ValueError(
                    "all optimizer param groups should be with/without names. "
                    f"cannot add param group {which} to the optimizer"
                )
        if not existing.isdisjoint(tensors):
            raise ValueError("some parameters appear in more than one parameter group")
        lowbit.check_group(self.algorithm, param_group, type(self).__name__)
        self.param_groups.append(param_group)

    # -- stepping -------------------------------------------------------------------------

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; returns ``closure()``'s loss if given.

        With ``torch.amp.GradScaler``, the scaler hands over ``grad_scale`` / ``found_inf``: a step
        with non-finite gradients changes nothing, and unscaling happens inside the update pass.
        """
        if self.algorithm is None:
            raise NotImplementedError(f"{type(self).__name__} defines neither `algorithm` nor `step`")
        paths = self._step_paths
        self._check_step()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_loaded_state()
        self._check_fused_params()
        for index, group in enumerate(self.param_groups):  # options edited in place since they were checked
            if lowbit.active(group):
                lowbit.check_group(self.algorithm, group, f"{type(self).__name__} (param group {index})")
        found_inf, grad_scale = getattr(self, "found_inf", None), getattr(self, "grad_scale", None)
        if found_inf is not None and float(found_inf) != 0.0:
            return loss
        # the option itself, as torch passes it: a value that is not a bool is a TypeError here
        run_group = runner.group_runner()  # installed by torchstep.backends (see core/runner.py)
        with torch.set_grad_enabled(self.defaults.get("differentiable", False)):
            self._prepare_step(grad_scale)
            for index, group in enumerate(self.param_groups):
                lowbit.advance_rounding(group)
                if paths is not None:
                    check.step_flags(paths, group, index, sparse_ok=self.algorithm.sparse_update is not None)
                keeps_state = self.algorithm.counts_steps or bool(self.algorithm.state_names(group))
                known = None if keeps_state else {p for p in group["params"] if p in self.state}
                run_group(self, self._backend_group(self._own_options(group)), grad_scale, group)
                if known is not None:
                    self._drop_empty_state(group, known)
        return loss

    def _drop_empty_state(self, group: dict, known: set) -> None:
        """A group whose algorithm keeps no state this step (SGD without momentum) leaves no
        entries in ``state``, as in torch; the backends look a parameter's state up anyway."""
        for p in group["params"]:
            if p not in known and p in self.state and not self.state[p]:
                del self.state[p]

    # -- the traced step (torch.compile) ----------------------------------------------------

    # the per-step hooks a subclass may override; one that does keeps the eager step under
    # torch.compile (a graph break), since the traced step does not call them
    _STEP_HOOKS = ("_check_step", "_prepare_step", "_backend_group", "_own_options")
    _step_hooks_plain = True  # set per subclass: it overrides none of _STEP_HOOKS

    def _traceable_step(self, args: tuple, kwargs: dict) -> bool:
        """Whether torch.compile may trace this step (evaluated while tracing): the base step of
        an element-wise algorithm without 0-d state of its own, no hook overridden, no closure,
        no GradScaler, not differentiable. Everything else runs eagerly, behind a graph break."""
        algo = self.algorithm
        if any(lowbit.active(group) for group in self.param_groups):  # (counts its rounding steps eagerly)
            return False
        return (not args and not kwargs and algo is not None and algo.advance is None
                and not algo.scalar_state and self._step_hooks_plain and not self.defaults.get("differentiable", False)
                and getattr(self, "grad_scale", None) is None and getattr(self, "found_inf", None) is None)

    def _traced_step(self, closure: None = None) -> None:
        """The step as torch.compile traces it: per group, the installed traced runner (state is
        created while tracing, by :meth:`_init_group`; the update is one custom-op call)."""
        run = runner.traced_runner()
        with torch.no_grad():
            for group in self.param_groups:
                run(self, group)

    def _init_group(self, group: dict, params: list, grads: list, states: list, steps: list, fresh: list) -> Any:
        """Dynamo runs this eagerly while tracing (it special-cases ``_init_group`` of a
        ``torch.optim.Optimizer``): check and create ``group``'s state, fill the lists with the
        tensors the traced update takes, and return a constant describing that update (None:
        run this group eagerly). Never called outside tracing."""
        if torch.compiler.is_dynamo_compiling():  # dynamo could not call it eagerly and traces it: run the group eagerly
            return None
        return runner.traced_prepare()(self, group, params, grads, states, steps, fresh)

    # Hooks for algorithms whose element-wise part is an ``algorithm`` but whose step needs a
    # little more around it (Adan's global clipping, Schedule-Free's per-group schedule).

    def _check_step(self) -> None:
        """Called first in ``step``, before the closure: raise here to refuse the step."""

    def _prepare_step(self, grad_scale: Any) -> None:
        """Called once per step after the closure (and only when the step goes ahead), before
        any group is updated: per-step work over all groups, e.g. a global gradient norm."""

    def _own_options(self, group: dict) -> dict:
        """``group`` without a user's own keys named like an option the shared wrappers read
        (``weight_decay`` or ``maximize`` in the group of an algorithm that has no such option,
        e.g. Rprop's ``weight_decay``): the user's data, which torch's step ignores."""
        if not any(k in group and k not in self.defaults for k in _WRAPPER_OPTIONS):
            return group
        return {k: v for k, v in group.items() if k in self.defaults or k not in _WRAPPER_OPTIONS}

    def _backend_group(self, group: dict) -> dict:
        """What the backends see of ``group`` this step (called once per group per step, just
        before its update): ``group`` itself, or a dict built from it with adjusted values. The
        fused backend keys what it caches by the original ``group``, so a fresh dict is fine."""
        return group

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients: to ``None`` (default), or to zeros when ``set_to_none=False``.
        (Under torch.compile, ``set_to_none=True`` is traced -- every ``.grad`` set to None
        without reading it, so the graph neither breaks nor guards on the gradients; the rest
        runs outside dynamo, as torch's does.)"""
        if torch.compiler.is_dynamo_compiling() and set_to_none is True:
            for group in self.param_groups:
                for p in group["params"]:
                    p.grad = None
            return None
        return self._reset_grads_eagerly(set_to_none)

    def _reset_grads(self, set_to_none: bool = True) -> None:
        """The body of :meth:`zero_grad`."""
        with torch.autograd.profiler.record_function(f"Optimizer.zero_grad#{type(self).__name__}.zero_grad"):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    if set_to_none:
                        p.grad = None
                        continue
                    if p.grad.grad_fn is not None:
                        p.grad.detach_()
                    else:
                        p.grad.requires_grad_(False)
                    p.grad.zero_()

    _reset_grads_eagerly = torch._disable_dynamo(_reset_grads)

    # -- state_dict -----------------------------------------------------------------------

    def state_dict(self, *, compact: bool = False) -> dict[str, Any]:
        """The optimizer's state in torch's format: ``{"state": {int: {...}}, "param_groups": [...]}``.

        State held in fewer bits (``state_dtype``) is given in the parameter's dtype, so
        ``torch.optim`` can resume from it; ``compact=True`` gives it as held instead (see
        :mod:`torchstep.core.checkpoint`), which only torchstep loads.

        Parameters are numbered by position in group order, as torch numbers them (a duplicate
        in a group takes its last position's number); each group lists its parameters' numbers under
        ``params`` (and their names under ``param_names`` where names were given).
        """
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        index = self._param_numbers()
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [index[id(p)] for p in group["params"]]
            groups.append(packed)
        algo = self.algorithm
        state = {
            (index[id(k)] if isinstance(k, torch.Tensor) else k):
                (checkpoint.export_state(algo, k, v, compact) if algo is not None and isinstance(k, torch.Tensor)
                 and isinstance(v, dict) else v)
            for k, v in self.state.items()
        }
        result: dict[str, Any] = {"state": state, "param_groups": groups}
        for hook in self._optimizer_state_dict_post_hooks.values():
            new = hook(self, result)
            if new is not None:
                result = new
        return result

    def _param_numbers(self) -> dict[int, int]:
        """Each parameter's number in ``state_dict()``, by ``id``, as torch numbers them: a
        group's positions start after every earlier group's length (duplicates included); a
        parameter listed twice in one group takes its last position, one already numbered in an
        earlier group keeps that number."""
        index: dict[int, int] = {}
        start = 0
        for group in self.param_groups:
            index.update({id(p): i for i, p in enumerate(group["params"], start) if id(p) not in index})
            start += len(group["params"])
        return index

    @staticmethod
    def _cast_state_value(p: torch.Tensor, value: Any, key: Any, group: dict) -> Any:
        """Move a loaded state value to ``p``'s device (and dtype, for floating tensors)."""
        if isinstance(value, torch.Tensor):
            if key == "step":
                if group.get("capturable", False) or group.get("fused", False):
                    return value.to(dtype=torch.float32, device=p.device)
                return value
            if p.is_floating_point():
                return value.to(dtype=p.dtype, device=p.device)
            return value.to(device=p.device)
        if isinstance(value, dict):
            value = checkpoint.import_state(p, value)
            return {k: (v if lowbit.held_as_codes(value, k) else Optimizer._cast_state_value(p, v, k, group))
                    for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(Optimizer._cast_state_value(p, v, None, group) for v in value)
        return value

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state written by :meth:`state_dict` (of torchstep or of torch.optim).

        Parameters are matched by position within groups; names, if saved, are kept but not
        used for matching.
        """
        state_dict = dict(state_dict)
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            new = hook(self, state_dict)
            if new is not None:
                state_dict = new
        groups = self.param_groups
        saved_groups = deepcopy(state_dict["param_groups"])
        if len(groups) != len(saved_groups):
            raise ValueError(
                "loaded state dict has a different number of parameter groups "
                f"({len(saved_groups)} saved, {len(groups)} in this optimizer)"
            )
        for i, (g, s) in enumerate(zip(groups, saved_groups)):
            if len(g["params"]) != len(s["params"]):
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't match the size of "
                    f"optimizer's group (group {i}: {len(s['params'])} saved, {len(g['params'])} here)"
                )
        id_map = dict(
            zip(chain.from_iterable(s["params"] for s in saved_groups), chain.from_iterable(g["params"] for g in groups))
        )
        group_of = {pid: s for s in state_dict["param_groups"] for pid in s["params"]}
        state: defaultdict[Any, Any] = defaultdict(dict)
        for key, value in state_dict["state"].items():
            if key in id_map:
                p = id_map[key]
                state[p] = self._cast_state_value(p, value, None, group_of.get(key, {}))
            else:
                state[key] = value
        new_groups = []
        for i, (g, s) in enumerate(zip(groups, saved_groups)):
            s["params"] = g["params"]
            for key in lowbit.OPTIONS:  # how state is held is this optimizer's choice, unless the checkpoint says
                if key in g and key not in s:
                    s[key] = g[key]
            lowbit.check_group(self.algorithm, s, f"{type(self).__name__}.load_state_dict (param group {i})")
            if "param_names" in g and "param_names" not in s:
                s["param_names"] = g["param_names"]
            loaded = _LoadedGroup(s)
            loaded.index = i
            new_groups.append(loaded)
        self._check_loaded_shapes(state, new_groups)
        self.__setstate__({"state": state, "param_groups": new_groups})
        self._hold_loaded_state()
        # the first step of each parameter checks its loaded state is complete
        self._loaded_unchecked = {p for p in state if isinstance(p, torch.Tensor) and state[p]}
        self._loaded_groups_unchecked = True
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def _hold_loaded_state(self) -> None:
        """Hold loaded state in the forms each group's ``state_dtype`` asks for (quantizing a
        full-precision checkpoint, restoring full precision from a reduced one)."""
        if self.algorithm is None:
            return
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if st and lowbit.touched(group, st, p):
                    try:
                        lowbit.conform(self.algorithm, p, group, st)
                    except KeyError:  # an option missing from the saved group: the step names it
                        pass

    def _check_loaded_shapes(self, state: dict, groups: list[dict]) -> None:
        """Refuse (before anything changes) a state whose element-wise tensors are not shaped
        like their parameters -- a checkpoint of another model, or groups in another order."""
        if self.algorithm is None:
            return
        index = 0
        for group in groups:
            try:
                names = self.algorithm.elementwise_names(group)
            except KeyError:  # an option missing from the saved group: the step names it
                names = ()
            for p in group["params"]:
                for n in names:
                    value = state.get(p, {}).get(n)
                    if isinstance(value, torch.Tensor) and value.shape != p.shape:
                        raise ValueError(
                            f"loaded state '{n}' of parameter {index} has shape {tuple(value.shape)}, but the "
                            f"parameter has shape {tuple(p.shape)}; was the checkpoint written for another model, "
                            "or with the parameter groups in another order?"
                        )
                index += 1

    def __getstate__(self) -> dict[str, Any]:
        return {"defaults": self.defaults, "state": self.state, "param_groups": self.param_groups}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for name in _HOOK_DICTS:
            if name not in self.__dict__:
                setattr(self, name, OrderedDict())
        if self._load_defaults is None:
            fill = {k: v for k, v in self.defaults.items() if v is not required}
        else:
            fill = self._load_defaults
        # as torch's base class: `differentiable` is an option every optimizer has, so a later
        # add_param_group copies it into the new group too (loaded groups are left as they are)
        self.defaults.setdefault("differentiable", False)
        for group in self.param_groups:
            for key, default in fill.items():
                group.setdefault(key, default)
        self._upgrade_loaded_state()

    def _upgrade_loaded_state(self) -> None:
        """Bring state loaded from an older or foreign checkpoint to this class's layout."""
        if self.algorithm is None or not self.algorithm.counts_steps:
            return
        for i, group in enumerate(self.param_groups):
            for j, p in enumerate(group["params"]):
                st = self.state.get(p)
                if not st:
                    continue
                # torch reads these of every non-empty state when it loads (to upgrade old
                # checkpoints): a state without them is a KeyError there, and so here
                for key in ("step", *self.algorithm.scalar_state):
                    if key not in st:
                        raise _missing_state(key, i, j, st)
                if not torch.is_tensor(st["step"]):
                    st["step"] = new_step_tensor(p, group, float(st["step"]))

    def _check_fused_params(self) -> None:
        """``fused=True``: a parameter's first step with a gradient checks it is a floating-point
        tensor on a device with fused kernels (RuntimeError otherwise, as torch raises at the step)."""
        checked = self.__dict__.setdefault("_fused_checked", set())
        for group in self.param_groups:
            if group.get("fused"):
                for p in group["params"]:
                    if p.grad is not None and p not in checked:
                        check.fused_param(p)
                        checked.add(p)

    def _check_loaded_state(self) -> None:
        """A parameter's state that is not empty must hold every entry the algorithm keeps for its
        group's current options (torch raises KeyError at the step otherwise; an empty one starts
        afresh). That can fail only for a state loaded by ``load_state_dict``, or after an option
        that adds a state entry (Adam's ``amsgrad``, RMSprop's ``momentum`` / ``centered``) was
        set by hand: such parameters are checked at their next step with a gradient. A group's
        state names are compared with the previous step's, so the common step checks nothing per
        parameter. Algorithms with ``lazy_state`` create what is missing."""
        if self.__dict__.pop("_loaded_groups_unchecked", False):
            for group in self.param_groups:
                for key in _WRAPPER_OPTIONS:
                    if key in self.defaults and isinstance(group, _LoadedGroup):
                        group[key]  # noqa: B018 -- KeyError (from __missing__) when the load lacked it
        algo = self.algorithm
        if algo is None or algo.lazy_state:
            return
        unchecked = self.__dict__.get("_loaded_unchecked")
        # (group, its state names) at the previous step, by position
        seen = self.__dict__.setdefault("_state_names_seen", [])
        del seen[len(self.param_groups):]
        for i, group in enumerate(self.param_groups):
            try:
                names = algo.state_names(group)
            except KeyError:  # an option missing from a loaded group: the update names it
                names = None
            if i == len(seen):
                seen.append((group, names))
                continue
            before_group, before = seen[i]
            if before_group is group and before != names and names is not None:
                if unchecked is None:
                    unchecked = self._loaded_unchecked = set()
                unchecked.update(p for p in group["params"] if self.state.get(p))
            seen[i] = (group, names)
        if not unchecked:
            return
        for i, group in enumerate(self.param_groups):
            for j, p in enumerate(group["params"]):
                if p.grad is None or p not in unchecked:
                    continue
                st = self.state.get(p)
                if st:
                    names = (("step",) if algo.counts_steps else ()) + tuple(algo.state_names(group))
                    for key in names:
                        if key not in st:
                            raise _missing_state(key, i, j, st)
        for group in self.param_groups:
            unchecked.difference_update(p for p in group["params"] if p.grad is not None)

    # -- hooks ----------------------------------------------------------------------------

    def register_step_pre_hook(self, hook: Callable) -> RemovableHandle:
        """``hook(optimizer, args, kwargs) -> None | (args, kwargs)``, called before ``step``."""
        return _add_hook(self._optimizer_step_pre_hooks, hook, False)

    def register_step_post_hook(self, hook: Callable) -> RemovableHandle:
        """``hook(optimizer, args, kwargs) -> None``, called after ``step``."""
        return _add_hook(self._optimizer_step_post_hooks, hook, False)

    def register_state_dict_pre_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """``hook(optimizer) -> None``, called before ``state_dict`` builds its result."""
        return _add_hook(self._optimizer_state_dict_pre_hooks, hook, prepend)

    def register_state_dict_post_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """``hook(optimizer, state_dict) -> state_dict | None``, called on ``state_dict``'s result."""
        return _add_hook(self._optimizer_state_dict_post_hooks, hook, prepend)

    def register_load_state_dict_pre_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """``hook(optimizer, state_dict) -> state_dict | None``, called before loading."""
        return _add_hook(self._optimizer_load_state_dict_pre_hooks, hook, prepend)

    def register_load_state_dict_post_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """``hook(optimizer) -> None``, called after loading."""
        return _add_hook(self._optimizer_load_state_dict_post_hooks, hook, prepend)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)


# options the cross-cutting wrappers read with a fallback (``group.get``), for the algorithms that
# have no such option; for one that has it, torch's step reads it, so a loaded group must hold it
_WRAPPER_OPTIONS = ("weight_decay", "maximize", "decoupled_weight_decay")


def _missing_state(key: str, group: int, index: int, state: dict) -> KeyError:
    return KeyError(
        f"{key!r} (the state of parameter {index} of group {group} has no {key!r}; it holds "
        f"{sorted(map(str, state))} -- an option that needs {key!r} was turned on after the "
        "parameter's first step (set it before the first step, or clear optimizer.state[p]), or "
        "the state was loaded from a state_dict of another optimizer class or an incomplete one)"
    )


Optimizer.step = _with_step_hooks(Optimizer.step, Optimizer._traced_step)  # type: ignore[method-assign]
