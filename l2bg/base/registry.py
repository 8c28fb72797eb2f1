"""A named registry: one name per entry, one error message for an unknown or duplicate name.

Strategies, benchmarks and the conflict model's choices (grow rules, bind rules, similarity
measures) are each kept in one :class:`Registry`, so the command line, the search and
``results.json`` name them the same way and a user adds one with ``register``. Other packages
add entries through an entry-point group (:func:`load_entry_points`: ``l2bg.strategies``,
``l2bg.plugins``).
"""

from __future__ import annotations

import importlib.metadata
import warnings
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from l2bg.base.errors import L2BGError, ParamError

__all__ = ["Registry", "check_name", "load_entry_points"]

T = TypeVar("T")


def check_name(kind: str, name: object) -> str:
    """A registry name: non-empty letters, digits, '-' or '_' (a safe CLI value and key)."""
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
        raise L2BGError(f"{kind} name {name!r} must be non-empty letters, digits, '-' or '_'")
    return name


class Registry(Generic[T]):
    """Entries with a ``name`` attribute, kept in registration order (built-ins first).

    ``kind`` names the entries in messages ("grow rule"); ``param`` is the parameter that chooses
    one ("grow_rule"; the command line names its flag, see :mod:`l2bg.cli.flags`)."""

    def __init__(self, kind: str, param: str) -> None:
        self.kind = kind
        self.param = param
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}  # alias -> name (an entry's ``aliases`` attribute)

    def register(self, item: T, *, replace: bool = False) -> T:
        """Add ``item`` under ``item.name`` and return it; a second entry of the same name needs
        ``replace=True``."""
        name = check_name(self.kind, getattr(item, "name", None))
        aliases = tuple(check_name(self.kind, a) for a in getattr(item, "aliases", ()))
        for key in (name, *aliases):
            owner = self._aliases.get(key, key if key in self._items else None)
            if owner is not None and owner != name and not replace:
                raise L2BGError(f"a {self.kind} named {key!r} is already registered; pass "
                                "replace=True or choose another name")
        if name in self._items and not replace and self._items[name] is not item:
            raise L2BGError(f"a {self.kind} named {name!r} is already registered; pass "
                            "replace=True or choose another name")
        self._items[name] = item
        for a in aliases:
            self._aliases[a] = name
        return item

    def get(self, name: str | T) -> T:
        """The entry registered as ``name`` (an entry passes through)."""
        if not isinstance(name, str):
            if getattr(name, "name", None) in self._items:
                return name  # type: ignore[return-value]
            raise ParamError(f"{{{self.param}}} expects a registered {self.kind} name, got "
                             f"{name!r}", self.param)
        key = self._aliases.get(name, name)
        if key not in self._items:
            raise ParamError(f"unknown {self.kind} {name!r} for {{{self.param}}}; use one of "
                             f"{', '.join(self._items)}", self.param)
        return self._items[key]

    def names(self) -> list[str]:
        """Registered names in registration order (aliases not repeated)."""
        return list(self._items)

    def unregister(self, name: str) -> T:
        """Remove and return the entry registered as ``name``."""
        item = self._items.pop(self.get(name).name)  # type: ignore[attr-defined]
        for a in [a for a, owner in self._aliases.items() if owner == item.name]:  # type: ignore[attr-defined]
            del self._aliases[a]
        return item

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def help(self) -> str:
        """``name: help; ...`` of every entry (for ``--help``)."""
        return "; ".join(f"{n}: {getattr(v, 'help', '')}" for n, v in self._items.items())


def load_entry_points(registry: Registry[T], group: str, make: Callable[[str, Any], T]) -> None:
    """Register the entry points of ``group`` whose names are not taken: ``make(name, obj)``
    turns the loaded object into the entry, which must carry the entry point's name. A broken
    entry point is skipped with one warning (a broken plug-in must not break l2bg)."""
    for ep in importlib.metadata.entry_points(group=group):
        if ep.name in registry:
            continue
        try:
            item = make(ep.name, ep.load())
            if getattr(item, "name", None) != ep.name:
                raise L2BGError(f"entry point {ep.name!r} gives a {registry.kind} named "
                                f"{getattr(item, 'name', None)!r}")
            registry.register(item)
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not break l2bg
            warnings.warn(f"l2bg: {registry.kind} entry point {ep.name} = {ep.value} failed to "
                          f"load ({type(exc).__name__}: {exc}); it is skipped", RuntimeWarning,
                          stacklevel=3)
