"""The registry of RDM comparison methods: one name, one torch reference, optional fast paths.

A method compares RDM triangles (..., m) (leading dims broadcast) and returns float64 r with the
broadcast leading shape; a constant triangle gives r = 0 (docs/design.md, "Compare").
``compare(..., method=NAME)``, the conflict model and the rsatoolbox drop-in all look methods up
here, so a method registered once (``register``) is available everywhere. Built-ins:
``spearman`` (average ranks for ties) and ``pearson`` (alias ``corr``, rsatoolbox's name).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from l2bg.errors import L2BGError
from l2bg.rsa.reference import compare_torch

__all__ = ["CompareMethod", "get", "names", "register"]


@dataclass(frozen=True)
class CompareMethod:
    """A comparison of RDM triangles: ``torch(ta, tb)`` is the reference (any device);
    ``triton`` names the method of :func:`l2bg.kernels.compare.compare` that implements it on
    the Triton backend (None: the torch reference runs there too)."""

    name: str
    torch: Callable[[Tensor, Tensor], Tensor]
    help: str = ""
    triton: str | None = None
    aliases: tuple[str, ...] = ()


_REGISTRY: dict[str, CompareMethod] = {}
_ALIASES: dict[str, str] = {}


def register(method: CompareMethod, *, replace: bool = False) -> CompareMethod:
    """Add ``method`` (and its aliases) to the registry."""
    for key in (method.name, *method.aliases):
        owner = _ALIASES.get(key, key if key in _REGISTRY else None)
        if owner is not None and owner != method.name and not replace:
            raise L2BGError(f"a comparison method named {key!r} is already registered; pass "
                            "replace=True or choose another name")
    _REGISTRY[method.name] = method
    for a in method.aliases:
        _ALIASES[a] = method.name
    return method


def get(name: str) -> CompareMethod:
    """The method registered as ``name`` (or an alias of it)."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise L2BGError(f"unknown comparison method {name!r}; use one of {', '.join(names())}")
    return _REGISTRY[key]


def names() -> list[str]:
    """Registered method names (aliases not repeated)."""
    return list(_REGISTRY)


register(CompareMethod("spearman", lambda a, b: compare_torch(a, b, "spearman"),
                       "Spearman rank correlation, average ranks for ties", triton="spearman"))
register(CompareMethod("pearson", lambda a, b: compare_torch(a, b, "pearson"),
                       "Pearson correlation", triton="pearson", aliases=("corr",)))
