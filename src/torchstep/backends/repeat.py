"""The fused step of a group repeated: the per-step path for small models.

On a model of a few small tensors the kernel takes a few microseconds and the Python around it
-- choosing the path, looking the kernel up, preparing scalars -- dominates. Most of that work
gives the same answer every step as long as the group's options have not changed. So after a
full fused step (:func:`.fused.run_fused_kernels`) whose shape allows it, the group keeps a
:class:`Repeat`: the kernel, its program, the launch, and the options it was made for. The next
step of that group runs :meth:`Repeat.run`, which re-checks what can have changed and runs the
kernel, or returns False and the full path runs (and may make a new :class:`Repeat`).

What it re-checks, every step:

* the group's options: the same keys, each value the same object (any assignment, even of an
  equal value, takes the full path), ``lr`` aside (a float or int read afresh; schedulers
  assign it every step); only options of immutable types (numbers, booleans, None, strings,
  tuples of those) are allowed, so a value cannot change behind an unchanged identity;
* the plan's per-step pointer check (:meth:`.plan.Plan.still_valid`), unchanged;
* the ``step`` counters, read from their buffer: all equal (else the full path partitions them);
* the structure of the step's scalars (e.g. RAdam's ``rectified``, which changes with the step):
  the same as the kernel was made for;
* autograd off, no backend forced, no GradScaler, and the group not cautious.

Made only for: one bucket run whole, every parameter of the group fused and with a gradient, an
algorithm without per-parameter scalar state (``advance``), a C kernel.
"""

from __future__ import annotations

import itertools
import operator
from typing import Any, Callable

import torch

from .cpu_kernel import evaluate_uniform
from .memo import scalar_structure

_IMMUTABLE = frozenset((float, int, bool, type(None), str))
_NUMBER = frozenset((float, int))


def _immutable(value: Any) -> bool:
    kind = type(value)
    return kind in _IMMUTABLE or (kind is tuple and all(type(v) in _IMMUTABLE for v in value))


class Repeat:
    """One group's fused step, ready to run again (see the module docstring)."""

    __slots__ = ("group", "keys", "values", "lr_at", "plan", "bucket", "runner", "program", "algo", "structure",
                 "wd", "make_launch")

    def __init__(self, algo: Any, group: dict, plan: Any, bucket: Any, runner: Any, program: Any,
                 structure: tuple, make_launch: Callable[[], Any]) -> None:
        """``make_launch()``: the bucket's whole launch, built afresh (when the gradients moved)."""
        self.algo, self.group, self.plan, self.bucket = algo, group, plan, bucket
        self.runner, self.program, self.structure, self.make_launch = runner, program, structure, make_launch
        self.keys = tuple(group)
        self.values = list(group.values())
        self.lr_at = self.keys.index("lr")
        self.values[self.lr_at] = None
        self.wd = group.get("weight_decay", 0)

    @staticmethod
    def allowed(algo: Any, group: dict, plan: Any) -> bool:
        """Whether a group in this state may keep a :class:`Repeat` after its full step."""
        return (algo.advance is None and not algo.scalar_state and len(plan.buckets) == 1
                and plan.buckets[0].kind == "c" and not plan.leftover and len(plan.params) == len(group["params"])
                and "lr" in group and type(group["lr"]) in _NUMBER and not group.get("cautious", False)
                and all(_immutable(v) for k, v in group.items() if k not in ("params", "lr")))

    def run(self, group: dict) -> bool:
        """Run the group's step if nothing it was made for has changed; False (nothing done)
        otherwise."""
        if group is not self.group or torch.is_grad_enabled():
            return False
        values = list(group.values())
        if len(values) != len(self.values):
            return False
        lr = values[self.lr_at]
        if type(lr) not in _NUMBER:
            return False
        values[self.lr_at] = None
        if not all(map(operator.is_, values, self.values)) or tuple(group) != self.keys:
            return False
        plan = self.plan
        params = group["params"]
        grads = list(map(operator.attrgetter("grad"), params))
        # (not ``None in grads``: that compares each tensor with None through Tensor.__eq__)
        if not all(map(operator.is_not, grads, itertools.repeat(None))) or plan.still_valid(params, grads) is None:
            return False
        algo = self.algo
        step = None
        if algo.counts_steps:
            counts = plan.counters.values("step")
            step = counts[0]
            if counts.count(step) != len(counts):
                return False
            step += 1
        scalars = algo.scalars(group, step, False)
        if scalar_structure(scalars) != self.structure:
            return False
        scalars["__lr"], scalars["__wd"], scalars["__inv_scale"] = lr, self.wd, None
        uniform = evaluate_uniform(self.program, [scalars[k] for k in self.program.scalars])
        launch = self.bucket.launch
        if launch is None or launch.grad_ptrs is not plan.grad_ptrs:
            launch = self.make_launch()
        if algo.counts_steps:
            plan.counters.bump("step")
        self.runner.run_prepared(launch, uniform)
        return True
