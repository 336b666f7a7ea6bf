"""Trace an algorithm's ``update`` into an element-wise expression graph.

The fused backends never re-type an algorithm's math: they call the very same ``update`` (and
the cross-cutting wrappers) on :class:`Sym` placeholders instead of tensors. Every tensor
operation the update performs is recorded as a node; in-place operations rebind the placeholder
to the new node. The result is a small SSA program per element -- inputs (parameter, gradient,
state), runtime scalars (lr, bias corrections, ...), and the final value of every tensor the
update wrote -- that a code generator turns into one loop over memory.

Two extensions serve algorithms that are not purely element-wise (LAMB, LARS): *per-tensor
scalars* (``per_tensor`` names; one value per tensor of a bucket, e.g. a trust ratio; node
``("tin", k)``) and *reductions* (a traced function may return ``{name: expression}``; the kernel
then also yields, per tensor, the sum of squares of each expression, accumulated in double, or
the plain sum of an expression wrapped in :class:`Summed`, e.g. a dot product or an L1 norm).

Booleans and ``None`` stay concrete during tracing (they choose the program's structure, e.g.
``nesterov`` or whether ``max_exp_avg_sq`` exists); numbers become runtime scalar arguments, so a
changing lr never builds a new kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..core.stages import Along, Summed

__all__ = ["NotTraceable", "Program", "Summed", "Sym", "trace"]


class NotTraceable(Exception):
    """The update used an operation the element-wise tracer does not model."""


@dataclass
class Program:
    """An element-wise program: ``nodes[i] = (op, args)``; ``outputs`` maps a written input to
    the node holding its final value."""

    inputs: list[str]
    scalars: list[str]
    nodes: list[tuple] = field(default_factory=list)
    outputs: dict[str, int] = field(default_factory=dict)
    per_tensor: list[str] = field(default_factory=list)
    reductions: dict[str, int] = field(default_factory=dict)  # name -> node whose square is summed per tensor
    summed: list[str] = field(default_factory=list)  # reductions summed as they are, not squared
    along: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (node, dim): norms along a dim, not kernel work

    def key(self) -> tuple:
        return (tuple(self.inputs), tuple(self.scalars), tuple(self.nodes), tuple(sorted(self.outputs.items())),
                tuple(self.per_tensor), tuple(self.reductions.items()), tuple(self.summed), tuple(self.along.items()))

    def squared(self) -> list[bool]:
        """For each reduction, in order: is its square summed (else its value)?"""
        return [name not in self.summed for name in self.reductions]

    # -- queries: what a node reads and how, for analyses of a traced update --------------

    def input_node(self, name: str) -> int:
        """The node of the per-element input ``name``."""
        return self.nodes.index(("in", self.inputs.index(name)))

    def final(self, name: str) -> int:
        """The node holding ``name``'s value after the update (its input node if not written)."""
        return self.outputs.get(name, self.input_node(name))

    def operands(self, node: int) -> tuple[int, ...]:
        """The nodes ``node`` reads (none for inputs, scalars and constants)."""
        op, *args = self.nodes[node]
        return () if op in _LEAVES else tuple(args)

    def accumulators(self, node: int) -> tuple[int, ...]:
        """The operands ``node`` adds the rest of its operands to: both of ``x + y``, ``x`` of
        ``x - y``, ``c`` of ``a * b + c``; none for any other operation."""
        op, *args = self.nodes[node]
        return tuple(args[i] for i in _ACCUMULATING.get(op, ()))


_LEAVES = frozenset({"in", "arg", "const", "tin"})  # nodes that read no other node
_ACCUMULATING = {"add": (0, 1), "sub": (0,), "fma": (2,)}  # op -> positions of the operands it adds to


class _Tracer:
    def __init__(self, inputs: list[str], scalars: list[str]) -> None:
        self.program = Program(list(inputs), list(scalars))
        self._memo: dict[tuple, int] = {}

    def node(self, op: str, *args: Any) -> int:
        key = (op, *args)
        if key not in self._memo:
            self.program.nodes.append(key)
            self._memo[key] = len(self.program.nodes) - 1
        return self._memo[key]


def _ref(tracer: _Tracer, x: Any) -> Any:
    """An operand: a node index for placeholders, a ('const', v) tuple for numbers."""
    if isinstance(x, Sym):
        return x.node
    if isinstance(x, bool):
        raise NotTraceable("a boolean used as a number")
    if isinstance(x, (int, float)):
        return tracer.node("const", float(x))
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        raise NotTraceable("a tensor hyperparameter reached the update (pass it through scalars)")
    raise NotTraceable(f"unsupported operand {type(x).__name__}")


class Sym:
    """A placeholder for one element of a tensor (or a uniform scalar) during tracing."""

    def __init__(self, tracer: _Tracer, node: int, uniform: bool) -> None:
        self.tracer, self.node, self.uniform = tracer, node, uniform
        self.requires_grad = False
        self.is_sparse = False

    # -- plumbing ------------------------------------------------------------------------
    def _new(self, op: str, *args: Any) -> "Sym":
        uniform = all(not isinstance(a, Sym) or a.uniform for a in (self, *args))
        return Sym(self.tracer, self.tracer.node(op, *(_ref(self.tracer, a) for a in (self, *args))), uniform)

    def _set(self, other: "Sym") -> "Sym":
        if self.uniform and not other.uniform:
            raise NotTraceable("an in-place update writes a per-element value into a scalar")
        self.node = other.node
        return self

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = _TORCH_FUNCTIONS.get(func)
        if handler is None:
            raise NotTraceable(f"torch function {getattr(func, '__name__', func)} is not modelled")
        return handler(*args, **kwargs)

    def flatten(self) -> "Sym":
        """One element of the flattened tensor is that element: a placeholder flattens to itself."""
        return self

    # -- arithmetic ----------------------------------------------------------------------
    def __add__(self, o): return self._new("add", o)
    def __radd__(self, o): return _lift(self, o)._new("add", self)
    def __sub__(self, o): return self._new("sub", o)
    def __rsub__(self, o): return _lift(self, o)._new("sub", self)
    def __mul__(self, o): return self._new("mul", o)
    def __rmul__(self, o): return _lift(self, o)._new("mul", self)
    def __truediv__(self, o): return self._new("div", o)
    def __rtruediv__(self, o): return _lift(self, o)._new("div", self)
    def __neg__(self): return self._new("neg")
    def __pow__(self, o):
        if o == 0.5:
            return self._new("sqrt")
        if o == 2:
            return self._new("mul", self)
        return self._new("pow", o)
    def __rpow__(self, o): return _lift(self, o)._new("pow", self)

    def add(self, o, *, alpha=1):  # torch: one fused multiply-add, other * alpha + self
        return self._new("add", o) if _is_one(alpha) else _lift(self, o)._new("fma", alpha, self)
    def sub(self, o, *, alpha=1):  # torch: the add of -alpha, one fused multiply-add
        return self._new("sub", o) if _is_one(alpha) else self.add(o, alpha=-alpha)
    def mul(self, o): return self._new("mul", o)
    def div(self, o): return self._new("div", o)
    def neg(self): return self._new("neg")
    def sqrt(self): return self._new("sqrt")
    def rsqrt(self): return _lift(self, 1.0)._new("div", self._new("sqrt"))  # torch's CPU kernels: 1 / sqrt
    def abs(self): return self._new("abs")
    def sign(self): return self._new("sign")
    def square(self): return self._new("mul", self)
    def pow(self, o): return self ** o
    def clone(self, **_): return Sym(self.tracer, self.node, self.uniform)
    def detach(self): return self
    def addcmul(self, a, b, *, value=1):  # torch: fused, (a * value) * b + self
        return _lift(self, _times(a, value))._new("fma", b, self)
    def addcdiv(self, a, b, *, value=1): return self._new("add", _times(a, value)._new("div", b))
    def lerp(self, end, weight): return self._new("lerp", end, weight)
    def maximum(self, o): return self._new("max", o)
    def minimum(self, o): return self._new("min", o)
    def clamp(self, min=None, max=None):
        out = self
        if min is not None:
            out = out._new("max", min)
        if max is not None:
            out = out._new("min", max)
        return out
    def gt(self, o): return self._new("gt", o)
    def lt(self, o): return self._new("lt", o)
    def eq(self, o): return self._new("eq", o)
    def __gt__(self, o): return self.gt(o)
    def __lt__(self, o): return self.lt(o)

    def add_(self, o, *, alpha=1): return self._set(self.add(o, alpha=alpha))
    def sub_(self, o, *, alpha=1): return self._set(self.sub(o, alpha=alpha))
    def mul_(self, o): return self._set(self.mul(o))
    def div_(self, o): return self._set(self.div(o))
    def neg_(self): return self._set(self.neg())
    def sqrt_(self): return self._set(self.sqrt())
    def rsqrt_(self): return self._set(self.rsqrt())
    def addcmul_(self, a, b, *, value=1): return self._set(self.addcmul(a, b, value=value))
    def addcdiv_(self, a, b, *, value=1): return self._set(self.addcdiv(a, b, value=value))
    def lerp_(self, end, weight): return self._set(self.lerp(end, weight))
    def copy_(self, o): return self._set(_lift(self, o))
    def clamp_(self, min=None, max=None): return self._set(self.clamp(min, max))
    def zero_(self): return self._set(_lift(self, 0.0))
    def fill_(self, v): return self._set(_lift(self, v))

    def __bool__(self):
        raise NotTraceable("the update branches on a tensor value")


def _lift(like: Sym, x: Any) -> Sym:
    if isinstance(x, Sym):
        return x
    return Sym(like.tracer, _ref(like.tracer, x), True)


def _is_one(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == 1


def _times(x: Any, factor: Any) -> Any:
    if _is_one(factor):
        return x
    if isinstance(x, Sym):
        return x._new("mul", factor)
    if isinstance(factor, Sym):
        return _lift(factor, x)._new("mul", factor)
    return x * factor


def _where(cond, a, b):
    anchor = next(v for v in (cond, a, b) if isinstance(v, Sym))
    return _lift(anchor, cond)._new("where", a, b)


def _maximum(a, b, *, out=None):
    result = _lift(b if isinstance(b, Sym) else a, a)._new("max", b)
    return out._set(result) if out is not None else result


def _minimum(a, b, *, out=None):
    result = _lift(b if isinstance(b, Sym) else a, a)._new("min", b)
    return out._set(result) if out is not None else result


_TORCH_FUNCTIONS: dict[Callable, Callable] = {
    torch.maximum: _maximum,
    torch.minimum: _minimum,
    torch.where: _where,
    torch.sqrt: lambda x: x.sqrt(),
    torch.abs: lambda x: x.abs(),
    torch.sign: lambda x: x.sign(),
    torch.square: lambda x: x.square(),
    torch.Tensor.add: lambda s, o, alpha=1: s.add(o, alpha=alpha),
    torch.Tensor.mul: lambda s, o: s.mul(o),
    torch.Tensor.sub: lambda s, o, alpha=1: s.sub(o, alpha=alpha),
}


def trace(fn: Callable[..., Any], inputs: list[str], written: list[str], scalars: dict[str, Any],
          per_tensor: tuple[str, ...] = ()) -> Program:
    """Run ``fn(**element_placeholders, **scalar_placeholders)`` and return its program.

    ``inputs`` are per-element operands (e.g. ``p``, ``g``, state names); ``written`` those whose
    final value must be stored; ``scalars`` maps a name to its value: numbers become runtime
    arguments, booleans/None/strings stay concrete; ``per_tensor`` names further scalars whose
    value differs from tensor to tensor. A ``{name: expression}`` returned by ``fn`` becomes the
    program's reductions (per-tensor sums of squares; plain sums for :class:`Summed` values);
    :class:`~torchstep.core.stages.Along` ones are only recorded (``along``), for the caller.
    """
    numeric = [k for k, v in scalars.items() if isinstance(v, (int, float, torch.Tensor)) and not isinstance(v, bool)]
    tracer = _Tracer(inputs, numeric)
    tracer.program.per_tensor = list(per_tensor)
    element = {n: Sym(tracer, tracer.node("in", i), False) for i, n in enumerate(inputs)}
    args = {k: (Sym(tracer, tracer.node("arg", numeric.index(k)), True) if k in numeric else v) for k, v in scalars.items()}
    args.update({k: Sym(tracer, tracer.node("tin", i), False) for i, k in enumerate(per_tensor)})
    reduced = fn(**element, **args) or {}
    tracer.program.outputs = {n: element[n].node for n in written if element[n].node != tracer.node("in", inputs.index(n))}
    tracer.program.along = {k: (_ref(tracer, v.value), v.dim) for k, v in reduced.items() if isinstance(v, Along)}
    reduced = {k: v for k, v in reduced.items() if not isinstance(v, Along)}
    tracer.program.reductions = {k: _ref(tracer, v.value if isinstance(v, Summed) else v) for k, v in reduced.items()}
    tracer.program.summed = [k for k, v in reduced.items() if isinstance(v, Summed)]
    return tracer.program
