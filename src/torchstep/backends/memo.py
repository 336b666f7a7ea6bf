"""Caches of what the backends derive from a function: traced programs, compiled kernels, the
cautious stage's analysis.

They are keyed by what the derived value depends on -- the function itself (an algorithm's
``update``, a stage of a per-tensor algorithm) and the structure it was traced for
(:func:`scalar_structure`, state names, dtype, kernel kind) -- never by a name: an algorithm made
with ``dataclasses.replace(ADAM_ALGORITHM, update=mine)`` gets its own entries. Entries are held
weakly by the function, so a function that goes away (an update made per optimizer) takes its
entries with it.
"""

from __future__ import annotations

import types
import weakref
from typing import Any, Callable, Iterator


# the types of the scalar values that shape a program (booleans, None, strings); any other value
# (a number, a 0-d tensor) is a runtime argument
_SHAPING = frozenset((bool, str, type(None)))


def scalar_structure(scalars: dict) -> tuple:
    """The part of ``scalars`` a traced program depends on: names, and the values that choose its
    structure; numbers are runtime arguments and appear only as ``"#"``."""
    return tuple([(k, v if type(v) in _SHAPING else "#") for k, v in sorted(scalars.items())])


def _anchors(fn: Callable) -> tuple:
    """The objects whose life the entries of ``fn`` follow: a bound method is made afresh at each
    attribute access, so it is known by its object and function."""
    return (fn.__self__, fn.__func__) if isinstance(fn, types.MethodType) else (fn,)


class FunctionCache:
    """``function -> {structure: value}``, dropped when the function is (kept for good for a
    callable that cannot be referenced weakly). Looked up by ``id`` -- a plain dict look-up on
    the per-step path -- which is safe because the entry goes when the function does, before
    its ``id`` can be reused."""

    def __init__(self) -> None:
        self._tables: dict[tuple, dict] = {}
        self._kept: list[Any] = []  # anchors without weak references: kept alive, so their ids stay theirs

    def get(self, fn: Callable, structure: Any) -> Any:
        """The value cached for ``fn`` and ``structure``, or None."""
        table = self._tables.get(tuple(map(id, _anchors(fn))))
        return None if table is None else table.get(structure)

    def put(self, fn: Callable, structure: Any, value: Any) -> Any:
        """Cache ``value`` for ``fn`` and ``structure``; returns it."""
        anchors = _anchors(fn)
        key = tuple(map(id, anchors))
        if key not in self._tables:
            for anchor in anchors:
                try:
                    weakref.finalize(anchor, self._tables.pop, key, None)
                except TypeError:  # no weak references to it
                    self._kept.append(anchor)
            self._tables[key] = {}
        self._tables[key][structure] = value
        return value

    def values(self) -> Iterator[Any]:
        """Every cached value."""
        for table in list(self._tables.values()):
            yield from table.values()

    def __len__(self) -> int:
        return sum(map(len, self._tables.values()))
