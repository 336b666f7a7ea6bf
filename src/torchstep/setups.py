"""Optimizer + schedule setups from strings, for ``torchstep compare`` and ``torchstep lr-find``.

A setup is ``Optimizer(arguments)`` optionally followed by ``+ schedule(arguments)``::

    AdamW(lr=3e-3, weight_decay=0.05)+warmup_cosine(warmup=0.05)
    SGD(lr=0.1, momentum=0.9)+StepLR(step_size=200, gamma=0.5)

or the name of a preset (:data:`PRESETS`). The optimizer is any class of :mod:`torchstep.optim`;
the schedule any name :func:`torchstep.schedules.schedule_from_spec` knows, in steps (optimizer
steps, not epochs). Arguments a run can supply may be left out: ``peak`` and ``max_lr`` default to
the optimizer's lr, ``total``, ``T_max`` and ``total_steps`` to the run's number of steps, and a
``warmup`` below 1 is a fraction of the run. The string is parsed with :mod:`ast` and only
literals are accepted as arguments: nothing is evaluated.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from typing import Any

import torchstep.optim as optim
import torchstep.schedules as schedules
from torchstep.optim import lr_scheduler
from torchstep.schedules import Schedule, schedule_from_spec

PRESETS = {
    "sgd-cosine": "SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)+warmup_cosine(warmup=0.05)",
    "adam": "Adam(lr=1e-3)",
    "adamw-cosine": "AdamW(lr=3e-3, weight_decay=0.05)+warmup_cosine(warmup=0.05)",
    "adamw-wsd": "AdamW(lr=3e-3, weight_decay=0.05)+wsd(warmup=0.05, decay=0.2)",
    "radam-onecycle": "RAdam(lr=3e-3)+OneCycleLR()",
    "adafactor": "Adafactor(lr=1e-2)+warmup_linear(warmup=0.05)",
}
# the modern algorithms, by name (`--setup lion`); not in the default run, to keep it short
EXTRA_PRESETS = {
    "lion": "Lion(lr=1e-3, weight_decay=0.1)+warmup_cosine(warmup=0.05)",
    "adan": "Adan(lr=3e-3)+warmup_cosine(warmup=0.05)",
    "adabelief": "AdaBelief(lr=1e-3)",
    "adopt": "ADOPT(lr=1e-3)",
    "ademamix": "AdEMAMix(lr=1e-3)+warmup_cosine(warmup=0.05)",
    "schedulefree-adamw": "AdamWScheduleFree(lr=3e-3, warmup_steps=50)",
    "schedulefree-sgd": "SGDScheduleFree(lr=0.5, warmup_steps=50)",
    "prodigy": "Prodigy(lr=1.0)",
    "lamb": "Lamb(lr=1e-2)+warmup_cosine(warmup=0.05)",
    "lars": "LARS(lr=0.5)+warmup_cosine(warmup=0.05)",
    "lion-cautious": "Lion(lr=1e-3, weight_decay=0.1, cautious=True)+warmup_cosine(warmup=0.05)",
}
# classes a setup can build from parameters alone (LBFGS needs a closure, SparseAdam sparse
# gradients, Lookahead an inner optimizer)
OPTIMIZERS = tuple(n for n in optim.__all__
                   if n not in ("Optimizer", "swa_utils", "lr_scheduler", "LBFGS", "SparseAdam", "Lookahead"))
_RUN_LR = ("peak", "max_lr")
_RUN_STEPS = ("total", "T_max", "total_steps")


class SetupError(ValueError):
    """A setup string that cannot be used; the message is one line for the user."""


@dataclass
class Setup:
    label: str
    optimizer: str
    kwargs: dict[str, Any]
    schedule_spec: str | None  # with the run's values filled in, or None for a constant lr
    schedule: Schedule | None

    def describe(self) -> str:
        """The setup written out in full, with the run's values filled into the schedule."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.optimizer}({args})" + (f"+{self.schedule_spec}" if self.schedule_spec else "")

    def make_optimizer(self, params: Any) -> Any:
        try:
            return getattr(optim, self.optimizer)(params, **self.kwargs)
        except (TypeError, ValueError) as exc:
            raise SetupError(f"{self.label}: {self.optimizer}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _literal(node: ast.AST, text: str) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise SetupError(f"{text!r}: argument {ast.unparse(node)!r} is not a literal") from None


def _call(node: ast.AST, text: str, what: str) -> ast.Call:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise SetupError(f"{text!r}: expected {what} such as AdamW(lr=3e-3)+warmup_cosine(warmup=0.05)")
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        raise SetupError(f"{text!r}: *args and **kwargs are not allowed")
    return node


def default_lr(name: str) -> float:
    """The lr an optimizer class uses when none is given."""
    default = inspect.signature(getattr(optim, name)).parameters["lr"].default
    return float(default)


def _fill_schedule(call: ast.Call, lr: float, steps: int, text: str) -> ast.Call:
    """``call`` with the run's lr and step count added where the schedule takes them and they are missing."""
    builder = getattr(schedules, call.func.id, None) or getattr(lr_scheduler, call.func.id, None)
    if builder is None:
        return call  # schedule_from_spec names what is known
    sig = inspect.signature(builder)
    sig = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "optimizer"])
    try:
        bound = sig.bind_partial(*call.args, **{k.arg: k.value for k in call.keywords}).arguments
    except TypeError:
        return call  # schedule_from_spec reports what does not fit
    keywords = list(call.keywords)
    for name, value in [*((n, lr) for n in _RUN_LR), *((n, steps) for n in _RUN_STEPS)]:
        if name in sig.parameters and name not in bound:
            keywords.append(ast.keyword(arg=name, value=ast.Constant(value)))
    for k in keywords:
        if k.arg == "warmup":
            warmup = _literal(k.value, text)
            if isinstance(warmup, float) and 0 < warmup < 1:
                k.value = ast.Constant(round(warmup * steps))
    return ast.Call(func=call.func, args=call.args, keywords=keywords)


def parse_setup(text: str, steps: int) -> Setup:
    """A :class:`Setup` from a preset name or an ``Optimizer(...)[+schedule(...)]`` string."""
    known = {**PRESETS, **EXTRA_PRESETS}
    label, spec = (text, known[text]) if text in known else (text.replace(" ", ""), text)
    try:
        tree = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError as err:
        raise SetupError(f"{text!r} is not Optimizer(...)+schedule(...) ({err.msg}); presets: "
                         f"{', '.join(known)}") from None
    opt_node, sched_node = (tree.left, tree.right) if isinstance(tree, ast.BinOp) and isinstance(tree.op, ast.Add) \
        else (tree, None)
    opt_call = _call(opt_node, text, "an optimizer call")
    if opt_call.func.id not in OPTIMIZERS:
        raise SetupError(f"{text!r}: unknown optimizer {opt_call.func.id!r}; choose from {', '.join(OPTIMIZERS)}")
    if opt_call.args:
        raise SetupError(f"{text!r}: give optimizer arguments by name, e.g. {opt_call.func.id}(lr=1e-3)")
    kwargs = {k.arg: _literal(k.value, text) for k in opt_call.keywords}
    lr = float(kwargs.get("lr", default_lr(opt_call.func.id)))
    schedule_spec = schedule = None
    if sched_node is not None:
        sched_call = _fill_schedule(_call(sched_node, text, "a schedule call"), lr, steps, text)
        schedule_spec = ast.unparse(sched_call)
        try:
            schedule = schedule_from_spec(schedule_spec, lr=lr)
        except (TypeError, ValueError) as exc:
            raise SetupError(f"{text!r}: {_one_line(exc)}") from None
    return Setup(label, opt_call.func.id, kwargs, schedule_spec, schedule)
