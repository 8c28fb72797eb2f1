"""A named registry: one name per entry, one error message for an unknown or duplicate name.

Strategies, benchmarks and the conflict model's choices (grow rules, bind rules, similarity
measures) are each kept in one :class:`Registry`, so the command line, the search and
``results.json`` name them the same way and a user adds one with ``register``.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from l2bg.errors import L2BGError

__all__ = ["Registry", "check_name"]

T = TypeVar("T")


def check_name(kind: str, name: object) -> str:
    """A registry name: non-empty letters, digits, '-' or '_' (a safe CLI value and key)."""
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
        raise L2BGError(f"{kind} name {name!r} must be non-empty letters, digits, '-' or '_'")
    return name


class Registry(Generic[T]):
    """Entries with a ``name`` attribute, kept in registration order (built-ins first).

    ``kind`` names the entries in messages ("grow rule"); ``option`` is the command-line option
    that chooses one ("--grow-rule")."""

    def __init__(self, kind: str, option: str) -> None:
        self.kind = kind
        self.option = option
        self._items: dict[str, T] = {}

    def register(self, item: T, *, replace: bool = False) -> T:
        """Add ``item`` under ``item.name`` and return it; a second entry of the same name needs
        ``replace=True``."""
        name = check_name(self.kind, getattr(item, "name", None))
        if name in self._items and not replace and self._items[name] is not item:
            raise L2BGError(f"a {self.kind} named {name!r} is already registered; pass "
                            "replace=True or choose another name")
        self._items[name] = item
        return item

    def get(self, name: str | T) -> T:
        """The entry registered as ``name`` (an entry passes through)."""
        if not isinstance(name, str):
            if getattr(name, "name", None) in self._items:
                return name  # type: ignore[return-value]
            raise L2BGError(f"{self.option} expects a registered {self.kind} name, got {name!r}")
        if name not in self._items:
            raise L2BGError(f"unknown {self.kind} {name!r} for {self.option}; use one of "
                            f"{', '.join(self._items)}")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def unregister(self, name: str) -> T:
        """Remove and return the entry registered as ``name``."""
        return self._items.pop(self.get(name).name)  # type: ignore[attr-defined]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def help(self) -> str:
        """``name: help; ...`` of every entry (for ``--help``)."""
        return "; ".join(f"{n}: {getattr(v, 'help', '')}" for n, v in self._items.items())
