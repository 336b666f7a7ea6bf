"""Rendering a traced program's nodes as source text, for any kernel language.

A language is a table from node kind to a template: ``{0}``, ``{1}``, ``{2}`` are the operands
(already rendered), and any further names (the element type, a math-function suffix) come from
the caller. The C and Triton generators differ only in their tables and their loop skeletons.
"""

from __future__ import annotations

from typing import Callable

from .trace import NotTraceable


def render(table: dict[str, str], node: tuple, ref: Callable[[int], str], language: str, **context: str) -> str:
    """Source of one node: ``table[kind]`` filled with its operands ``ref(i)`` and ``context``."""
    op, *operands = node
    template = table.get(op)
    if template is None:
        raise NotTraceable(f"no {language} form for node {op}")
    return template.format(*(ref(j) for j in operands), **context)
