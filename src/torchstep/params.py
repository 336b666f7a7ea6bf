"""Parameter groups built from a model's ``named_parameters()``.

``param_groups(model, lr=..., weight_decay=..., ...)`` returns a list of group dicts that any
torchstep or torch optimizer accepts in place of ``model.parameters()``::

    groups = param_groups(model, lr=3e-4, weight_decay=0.05, lr_mult={"head.*": 10.0},
                          layer_decay=0.75, freeze=["embed.*"])
    print(groups.summary())
    opt = torchstep.optim.AdamW(groups)

The rules, in the order they apply (an earlier rule wins where they overlap):

1. **freeze** -- a parameter whose name matches a ``freeze`` pattern gets ``requires_grad=False``
   and is left out, as is one that already has ``requires_grad=False``. No other rule sees it.
2. **weight decay** -- a parameter is *exempt* (``weight_decay=0.0``) when it is a bias (its
   attribute is ``bias`` or ends in ``_bias``), when it belongs to a module of one of
   ``no_decay_types`` (normalization and embedding layers by default, found with
   ``isinstance``, so subclasses count), or when its name matches a ``no_decay`` pattern.
   Exemption beats ``wd_mult``. Otherwise its weight decay is ``weight_decay`` times the
   ``wd_mult`` of the first matching pattern (1 if none).
3. **lr** -- ``lr`` times ``layer_decay ** (L - 1 - layer)`` times the ``lr_mult`` of the first
   matching pattern (1 if none): layer decay and a multiplier both apply, multiplied.
4. Within ``lr_mult`` or ``wd_mult``, patterns are tried in the mapping's order and the first
   match wins.

Patterns are ``fnmatch`` globs on the full dotted name (``*`` also crosses dots, so
``"encoder.*"`` matches every parameter under ``encoder``). A pattern that matches no parameter
name warns. Parameters with equal options share one group; groups come in the order of their
first parameter in ``named_parameters()``.

Layers for ``layer_decay``: by default the model's top-level children in registration order, with
``Sequential`` / ``ModuleList`` / ``ModuleDict`` children opened one level (so ``embed``,
``blocks.0`` ... ``blocks.11``, ``norm``, ``head``); only children that own parameters count, and
parameters held by the model itself are layer 0. The last layer keeps the full ``lr``. Pass
``layer_of(name) -> int`` (larger is closer to the output) to choose otherwise.
"""

from __future__ import annotations

import fnmatch
import warnings
from typing import Any, Callable, Iterable, Mapping

from torch import nn

from .core import check

__all__ = ["param_groups", "ParamGroups", "NO_DECAY_TYPES"]

NO_DECAY_TYPES: tuple[type, ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*, lazy variants
    nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.LocalResponseNorm,
    nn.Embedding, nn.EmbeddingBag,
)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class ParamGroups(list):
    """The group dicts (a ``list``, so it goes straight to an optimizer), plus what built them:
    ``names`` (per group), ``frozen`` (names left out) and :meth:`summary`."""

    def __init__(self, groups: list[dict], names: list[list[str]], numels: list[int], frozen: list[str],
                 frozen_numel: int) -> None:
        super().__init__(groups)
        self.names = names
        self.frozen = frozen
        self._numels = numels
        self._frozen_numel = frozen_numel
        self._options = [{k: v for k, v in g.items() if k != "params"} for g in groups]

    def summary(self, max_names: int = 3) -> str:
        """A table: group, number of tensors and elements, lr, weight_decay, first names."""
        def fmt(options: dict, key: str) -> str:
            return f"{options[key]:g}" if key in options else "(optimizer default)"

        rows = [[str(i), str(len(n)), f"{e:,}", fmt(o, "lr"), fmt(o, "weight_decay"), _shorten(n, max_names)]
                for i, (n, e, o) in enumerate(zip(self.names, self._numels, self._options))]
        if self.frozen:
            rows.append(["frozen", str(len(self.frozen)), f"{self._frozen_numel:,}", "-", "-",
                         _shorten(self.frozen, max_names)])
        head = ["group", "tensors", "elements", "lr", "weight_decay", "parameters"]
        widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [head, *rows])

    def __str__(self) -> str:
        return self.summary()


def _shorten(names: list[str], most: int) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", ... (+{len(names) - most})" if len(names) > most else "")


def _patterns(value: str | Iterable[str], arg: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    patterns = list(value)
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"{arg} patterns must be strings, got {type(p).__name__} ({p!r})")
    return patterns


def _first_match(name: str, mults: Mapping[str, float]) -> float:
    return next((m for pattern, m in mults.items() if fnmatch.fnmatchcase(name, pattern)), 1.0)


def _warn_unmatched(arg: str, patterns: Iterable[str], names: list[str]) -> None:
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            warnings.warn(f"param_groups: {arg} pattern {pattern!r} matches no parameter name", stacklevel=3)


def _owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """id(parameter) -> every (module, attribute) that holds it (tied weights have several)."""
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for attr, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append((module, attr))
    return owners


def default_layers(model: nn.Module) -> Callable[[str], int]:
    """The default ``layer_of``: top-level children (containers opened one level) that own parameters."""
    units = []
    for name, child in model.named_children():
        subs = [f"{name}.{s}" for s, _ in child.named_children()] if isinstance(child, _CONTAINERS) else [name]
        units += [u for u in subs if any(True for _ in model.get_submodule(u).parameters())]

    def layer_of(param_name: str) -> int:
        return next((i for i, u in enumerate(units) if param_name.startswith(u + ".")), 0)

    return layer_of


def _check_mults(arg: str, mults: Mapping[str, float]) -> None:
    for pattern, mult in mults.items():
        check.at_least(mult, arg, f"{arg}[{pattern!r}]")


def param_groups(
    model: nn.Module,
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
    no_decay: str | Iterable[str] = (),
    no_decay_types: tuple[type, ...] = NO_DECAY_TYPES,
    lr_mult: Mapping[str, float] | None = None,
    wd_mult: Mapping[str, float] | None = None,
    layer_decay: float | None = None,
    layer_of: Callable[[str], int] | None = None,
    freeze: str | Iterable[str] = (),
    names: bool = False,
    state_dtype: Any = None,
) -> ParamGroups:
    """Group ``model``'s parameters by the rules of the module docstring.

    ``lr`` and ``weight_decay`` go into every group when given; otherwise the optimizer's
    defaults apply (exempt groups still get ``weight_decay=0.0``). ``lr_mult`` / ``layer_decay``
    need ``lr``, and ``wd_mult`` needs ``weight_decay``. ``names=True`` hands the optimizer
    ``(name, parameter)`` pairs, so its state_dict carries ``param_names``. ``state_dtype``
    (``torch.bfloat16`` or ``"int8"``; see :mod:`torchstep.core.lowbit`) goes into every group
    when given.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"param_groups expects an nn.Module, got {type(model).__name__}")
    lr_mult, wd_mult = dict(lr_mult or {}), dict(wd_mult or {})
    if lr is not None:
        check.at_least(lr, "lr", "learning rate")
    if weight_decay is not None:
        check.at_least(weight_decay, "weight_decay", "weight_decay value")
    if (lr_mult or layer_decay is not None) and lr is None:
        raise ValueError("lr_mult and layer_decay scale a base lr: pass lr=...")
    if wd_mult and weight_decay is None:
        raise ValueError("wd_mult scales a base weight decay: pass weight_decay=...")
    if layer_decay is not None:
        check.positive(layer_decay, "layer_decay", "layer_decay value")
    _check_mults("lr_mult", lr_mult)
    _check_mults("wd_mult", wd_mult)
    no_decay, freeze = _patterns(no_decay, "no_decay"), _patterns(freeze, "freeze")

    named = list(model.named_parameters())
    all_names = [n for n, _ in named]
    for arg, patterns in (("freeze", freeze), ("no_decay", no_decay), ("lr_mult", lr_mult), ("wd_mult", wd_mult)):
        _warn_unmatched(arg, patterns, all_names)
    owners = _owners(model)
    layers = {}
    if layer_decay is not None:
        layer_of = layer_of or default_layers(model)
        layers = {n: layer_of(n) for n in all_names}
    top = max(layers.values(), default=0)

    by_options: dict[tuple, dict[str, Any]] = {}
    frozen: list[str] = []
    frozen_numel = 0
    for name, p in named:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in freeze):
            p.requires_grad_(False)
        if not p.requires_grad:
            frozen.append(name)
            frozen_numel += p.numel()
            continue
        exempt = (any(attr == "bias" or attr.endswith("_bias") or isinstance(m, no_decay_types)
                      for m, attr in owners[id(p)])
                  or any(fnmatch.fnmatchcase(name, pattern) for pattern in no_decay))
        options: dict[str, Any] = {}
        if lr is not None:
            options["lr"] = lr * _first_match(name, lr_mult) * (
                layer_decay ** (top - layers[name]) if layer_decay is not None else 1.0)
        if exempt:
            options["weight_decay"] = 0.0
        elif weight_decay is not None:
            options["weight_decay"] = weight_decay * _first_match(name, wd_mult)
        entry = by_options.setdefault(tuple(options.items()), {"options": options, "items": []})
        entry["items"].append((name, p))

    groups, group_names, numels = [], [], []
    for entry in by_options.values():
        items = entry["items"]
        group = {"params": list(items) if names else [p for _, p in items], **entry["options"]}
        if state_dtype is not None:
            group["state_dtype"] = state_dtype
        groups.append(group)
        group_names.append([n for n, _ in items])
        numels.append(sum(p.numel() for _, p in items))
    return ParamGroups(groups, group_names, numels, frozen, frozen_numel)
