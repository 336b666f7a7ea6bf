r"""Lookahead: any optimizer's fast weights, pulled every ``k`` steps towards slow weights.

With the inner optimizer's update :math:`A` (any torchstep or torch.optim optimizer), ``k``
:math:`k` and ``alpha`` :math:`\alpha`:

.. math::
    \theta_{t+1} = A(\theta_t) \ \text{(every step)} \qquad
    \text{every } k \text{ steps:}\quad \phi \leftarrow \phi + \alpha(\theta - \phi), \quad \theta \leftarrow \phi

The slow weights :math:`\phi` start at the parameters' values when the wrapper is built (or when
a group is added). The inner optimizer keeps its own state untouched. Defaults are the paper's
(:math:`k = 5`, :math:`\alpha = 0.5`).

``state_dict()`` holds both halves: ``{"base_optimizer": <the inner optimizer's state_dict>,
"slow_params": {index: tensor}, "k", "alpha", "lookahead_step"}``, parameters numbered as in the
inner state_dict (group by group); ``load_state_dict`` restores both and the step counter.
Element-wise, but run every ``k`` steps only: two in-place operations per tensor, not fused.

Deliberate differences from pytorch-optimizer's ``Lookahead``: every parameter is synchronised
at the ``k``-th step, also one without a gradient at that step (pytorch-optimizer skips those, so
their slow weights go stale); one step counter for the wrapper rather than a ``counter`` key added
to each of the inner optimizer's groups (so a group added mid-cycle syncs with the others).
Reference: Zhang, Lucas, Hinton, Ba, "Lookahead Optimizer: k steps forward, 1 step back"
(NeurIPS 2019), arXiv:1907.08610. ``alpha`` is in :math:`(0, 1]` as in the paper (pytorch-optimizer
refuses :math:`\alpha = 1`, where Lookahead is the inner optimizer unchanged).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

import torch

from ..core import check
from ..core.optimizer import Optimizer


class Lookahead(Optimizer):
    """Lookahead around ``optimizer``; see :mod:`torchstep.algorithms.lookahead`. Its
    ``param_groups`` are the inner optimizer's, so LR schedulers drive the inner rates."""

    def __init__(self, optimizer: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"Lookahead wraps an optimizer (a torch.optim.Optimizer), got {type(optimizer).__name__}")
        check.whole_number(k, "k", 1, lead="Invalid lookahead steps")
        check.in_range(alpha, "alpha", "slow weights step size", 0.0, 1.0)
        check.positive(alpha, "alpha", "slow weights step size")
        # the base class's hook tables and attributes, without its parameter handling
        self.__setstate__({"optimizer": optimizer, "k": k, "alpha": alpha, "lookahead_step": 0,
                           "state": defaultdict(dict)})
        for group in self.param_groups:
            self._init_slow(group)

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    def __getstate__(self) -> dict[str, Any]:
        keys = ("optimizer", "k", "alpha", "lookahead_step", "state")
        return {key: self.__dict__[key] for key in keys}

    def _init_slow(self, group: dict) -> None:
        for p in group["params"]:
            self.state[p]["slow_param"] = p.detach().clone(memory_format=torch.preserve_format)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer; its slow weights start at its current values."""
        self.optimizer.add_param_group(param_group)
        self._init_slow(self.param_groups[-1])

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def synchronize(self) -> None:
        """Pull the slow weights towards the fast ones by ``alpha`` and restart from them."""
        for group in self.param_groups:
            for p in group["params"]:
                slow = self.state[p]["slow_param"]
                slow.lerp_(p, self.alpha)
                p.copy_(slow)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """The inner optimizer's step; every ``k``-th one also synchronises."""
        loss = self.optimizer.step() if closure is None else self.optimizer.step(closure)
        self.lookahead_step += 1
        if self.lookahead_step >= self.k:
            self.lookahead_step = 0
            self.synchronize()
        return loss

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state_dict and the slow weights (see module docstring)."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        slow = {i: self.state[p]["slow_param"] for i, p in enumerate(self._params())}
        result = {"base_optimizer": self.optimizer.state_dict(), "slow_params": slow, "k": self.k, "alpha": self.alpha,
                  "lookahead_step": self.lookahead_step}
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, result) or result
        return result

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved: inner state, slow weights, ``k``, ``alpha``, counter."""
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            state_dict = hook(self, state_dict) or state_dict
        missing = {"base_optimizer", "slow_params"} - set(state_dict)
        if missing:
            raise ValueError(f"not a Lookahead state_dict: {sorted(missing)} missing (keys: {sorted(state_dict)})")
        params, slow = self._params(), state_dict["slow_params"]
        if sorted(slow) != list(range(len(params))):
            raise ValueError(f"loaded state dict has slow weights for {len(slow)} parameters, this optimizer has {len(params)}")
        self.optimizer.load_state_dict(state_dict["base_optimizer"])
        for i, p in enumerate(params):
            self.state[p]["slow_param"] = slow[i].to(device=p.device, dtype=p.dtype, copy=True)
        self.k = state_dict.get("k", self.k)
        self.alpha = state_dict.get("alpha", self.alpha)
        self.lookahead_step = state_dict.get("lookahead_step", 0)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def __repr__(self) -> str:
        return f"Lookahead(k={self.k}, alpha={self.alpha}, optimizer={self.optimizer!r})"
