"""The torch-shaped scheduler base: bookkeeping only, the values come from schedules.

``LRScheduler`` keeps torch 2.13's contract: construction stores each group's ``initial_lr``
(``base_lrs``) and performs step 0; ``step()`` advances ``last_epoch`` and writes the new lrs;
``get_last_lr()``; ``state_dict()`` is every attribute but the optimizer, under torch's names, so
checkpoints move between torch and torchstep both ways. The private step protocol torch's
``SequentialLR`` / ``ChainedScheduler`` call (``_initial_step``, ``_update_lr``) is kept, so torch's
combinators drive torchstep schedulers and the other way round.

It subclasses ``torch.optim.lr_scheduler.LRScheduler`` for ``isinstance`` checks (Lightning,
Hugging Face) but overrides every method; none of torch's code runs.

Step-order warning: torch wraps ``optimizer.step`` to notice a ``scheduler.step()`` made before
any ``optimizer.step()``. We register a step post-hook instead (``register_step_post_hook``, which
torch.optim and torchstep optimizers have) and give the same warning; an optimizer-like object
without hooks is not checked unless it sets ``_opt_called`` itself. Like torch, the first
``scheduler.step()`` also warns when ``optimizer.step`` was replaced on the instance after the
scheduler was built (we compare the instance's ``step`` attribute with the one seen then).

The warning texts are torch's, word for word: users' warning filters and tests match them.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import Tensor
from torch.optim import lr_scheduler as _torch_lr

__all__ = ["LRScheduler", "read_group_values", "write_group_value", "check_optimizer", "format_param"]

# torch's texts, identical on purpose (a warning text is part of the interface).
EPOCH_DEPRECATION_WARNING = (
    "The epoch parameter in `scheduler.step()` was not necessary and is being "
    "deprecated where possible. Please use `scheduler.step()` to step the "
    "scheduler. During the deprecation, if epoch is different from None, the "
    "closed form is used instead of the new chainable form, where available. "
    "Please open an issue if you are unable to replicate your use case: "
    "https://github.com/pytorch/pytorch/issues/new/choose."
)
STEP_ORDER_WARNING = (
    "Detected call of `lr_scheduler.step()` before `optimizer.step()`. "
    "In PyTorch 1.1.0 and later, you should call them in the opposite order: "
    "`optimizer.step()` before `lr_scheduler.step()`.  Failure to do this "
    "will result in PyTorch skipping the first value of the learning rate schedule. "
    "See more details at "
    "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate"
)
STEP_OVERRIDDEN_WARNING = (
    "Seems like `optimizer.step()` has been overridden after learning rate scheduler "
    "initialization. Please, make sure to call `optimizer.step()` before "
    "`lr_scheduler.step()`. See more details at "
    "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate"
)
GET_LR_WARNING = "To get the last learning rate computed by the scheduler, please use `get_last_lr()`."


def check_optimizer(optimizer: Any) -> None:
    """torch requires a ``torch.optim.Optimizer``; we accept anything shaped like one."""
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, dict) for g in groups):
        raise TypeError(
            f"{type(optimizer).__name__} is not an Optimizer (expected an object with `param_groups`, "
            f"a list of dicts, and `step()`, like torch.optim.Optimizer)"
        )


def read_group_values(optimizer: Any, key: str) -> list[Any]:
    """``group[key]`` for every group; tensors are cloned so the list never aliases the groups."""
    return [g[key].clone() if isinstance(g[key], Tensor) else g[key] for g in optimizer.param_groups]


def write_group_value(group: dict, key: str, value: Any) -> None:
    """Set ``group[key]``; a tensor entry is filled in place (its identity is kept, as in torch)."""
    if isinstance(group[key], Tensor):
        if isinstance(value, Tensor) and value.dim() != 0:
            value = value.squeeze()
        group[key].fill_(value)
    else:
        group[key] = value


def format_param(name: str, optimizer: Any, value: Any) -> list[Any]:
    """One value per group: a scalar is repeated; a list/tuple must have one entry per group."""
    n = len(optimizer.param_groups)
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(
                f"{name} must have the same length as optimizer.param_groups. {name} has "
                f"{len(value)} values, param_groups has {n}."
            )
        values = list(value)
    else:
        values = [value] * n
    return [v.clone() if isinstance(v, Tensor) else v for v in values]


def _mark_step_called(optimizer: Any, args: Any, kwargs: Any) -> None:
    optimizer._opt_called = True
    # under torch.compile, dynamo drops attribute assignments on an optimizer made inside its
    # traced step (a torch.optim.Optimizer subclass); an item assignment in a list survives
    box = getattr(optimizer, "_torchstep_step_called", None)
    if box is not None:
        box[0] = True


def _instance_step(optimizer: Any) -> Any:
    """``optimizer.step`` when it is set on the instance (an override), else None."""
    return getattr(optimizer, "__dict__", {}).get("step")


def _step_overridden(optimizer: Any) -> bool:
    """True when ``optimizer.step`` was replaced after the last scheduler on it was built.

    A step wrapped by torch's own schedulers (``_wrapped_by_lr_sched``) is not an override.
    """
    if not hasattr(optimizer, "_torchstep_step_seen"):
        return False
    current = _instance_step(optimizer)
    if current is optimizer._torchstep_step_seen:
        return False
    return not hasattr(getattr(optimizer, "step", None), "_wrapped_by_lr_sched")


def _track_steps(optimizer: Any) -> bool:
    """Make ``optimizer._opt_called`` become True on its first step; False if we cannot observe it."""
    try:
        optimizer._torchstep_step_seen = _instance_step(optimizer)
    except AttributeError:  # an optimizer-like object that takes no new attributes
        pass
    if getattr(optimizer, "_torchstep_tracks_steps", False):
        return True
    register = getattr(optimizer, "register_step_post_hook", None)
    if register is None:
        return False
    register(_mark_step_called)
    optimizer._torchstep_step_called = [False]
    optimizer._torchstep_tracks_steps = True
    return True


class LRScheduler(_torch_lr.LRScheduler):
    """Base class of the torch-shaped schedulers (``torch.optim.lr_scheduler.LRScheduler``'s contract).

    Subclasses define ``get_lr()`` (the lrs for the new ``last_epoch``) and, where a closed form
    exists, ``_get_closed_form_lr()`` (used by the deprecated ``step(epoch)``). A user subclass
    written for torch works unchanged.
    """

    _get_lr_called_within_step: bool = False
    _is_initial: bool = False

    def __init__(self, optimizer: Any, last_epoch: int = -1) -> None:
        check_optimizer(optimizer)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                lr = group["lr"]
                group.setdefault("initial_lr", lr.clone() if isinstance(lr, Tensor) else lr)
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param 'initial_lr' is not specified in param_groups[{i}] when resuming "
                        f"scheduler with last_epoch >= 0 (last_epoch={last_epoch}; allowed: -1 for a "
                        f"fresh run, or load the optimizer's state_dict, which holds initial_lr, first)"
                    )
        self.base_lrs = read_group_values(optimizer, "initial_lr")
        self.last_epoch = last_epoch
        _track_steps(optimizer)
        self._initial_step()

    def _initial_step(self) -> None:
        """Reset the step count and perform step ``last_epoch + 1`` in initial mode."""
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def state_dict(self) -> dict[str, Any]:
        """Every attribute but the optimizer, under torch's names."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore attributes from :meth:`state_dict` (torch's or ours)."""
        self.__dict__.update(state_dict)

    def get_last_lr(self) -> list[Any]:
        """The lrs the last ``step()`` set, one per group (tensors are copies)."""
        return self._last_lr

    def get_lr(self) -> list[Any]:
        """The lrs for ``last_epoch``; each scheduler defines it."""
        raise NotImplementedError(f"{type(self).__name__} must define get_lr()")

    def _warn_if_not_stepping(self) -> None:
        if not self._get_lr_called_within_step:
            warnings.warn(GET_LR_WARNING, UserWarning, stacklevel=3)

    def _warn_step_order(self) -> None:
        if self._step_count != 1:
            return
        opt = self.optimizer
        if _step_overridden(opt):
            warnings.warn(STEP_OVERRIDDEN_WARNING, UserWarning, stacklevel=3)
            return
        observable = getattr(opt, "_torchstep_tracks_steps", False) or hasattr(opt, "_opt_called") or hasattr(
            getattr(opt, "step", None), "_wrapped_by_lr_sched"
        )
        called = getattr(opt, "_opt_called", False) or getattr(opt, "_torchstep_step_called", [False])[0]
        if observable and not called:
            warnings.warn(STEP_ORDER_WARNING, UserWarning, stacklevel=3)

    def step(self, epoch: int | None = None) -> None:
        """Advance one step (call it after ``optimizer.step()``).

        ``epoch`` (deprecated, as in torch) jumps to that step using the closed form where the
        scheduler has one.
        """
        self._warn_step_order()
        self._step_count += 1
        if epoch is not None:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self._update_lr(epoch)

    def _update_lr(self, epoch: int | None = None) -> None:
        self._get_lr_called_within_step = True
        try:
            if epoch is None:
                self.last_epoch += 1
                values = self.get_lr()
            else:
                self.last_epoch = epoch
                closed_form = getattr(self, "_get_closed_form_lr", None)
                values = closed_form() if closed_form is not None else self.get_lr()
        finally:
            self._get_lr_called_within_step = False
        self._write_lrs(values)

    def _write_lrs(self, values: list[Any]) -> None:
        groups = self.optimizer.param_groups
        if len(values) != len(groups):
            raise ValueError(f"{type(self).__name__} computed {len(values)} lrs for {len(groups)} param groups")
        for group, lr in zip(groups, values):
            write_group_value(group, "lr", lr)
        self._last_lr = read_group_values(self.optimizer, "lr")


class _LRScheduler(LRScheduler):
    """Old name of :class:`LRScheduler`, kept as torch keeps it."""
