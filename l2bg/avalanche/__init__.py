"""Learn to Bind and Grow in Avalanche (``pip install l2bg[avalanche]``): the strategy
:class:`~l2bg.avalanche.strategy.L2BGStrategy`, its model
:class:`~l2bg.avalanche.model.L2BGModel` (a ``MultiTaskModule``) and the converters
:func:`~l2bg.avalanche.convert.to_avalanche` / :func:`~l2bg.avalanche.convert.from_avalanche`.
Each name is loaded on first use, and the classes that subclass Avalanche's are built on first
use (:func:`lazy_classes`), so importing this package or its modules does not import Avalanche;
without Avalanche installed a name gives one line saying how to install it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from l2bg.base.errors import L2BGError

_EXPORTS = {
    "L2BGStrategy": "l2bg.avalanche.strategy",
    "L2BGModel": "l2bg.avalanche.model",
    "to_avalanche": "l2bg.avalanche.convert",
    "from_avalanche": "l2bg.avalanche.convert",
    "make_task": "l2bg.avalanche.convert",
}

__all__ = sorted(_EXPORTS)


def _missing(name: str, exc: ModuleNotFoundError) -> Exception:
    """The one line for a name that needs Avalanche (or torchvision) when it is not installed;
    any other missing module is re-raised as it is."""
    if exc.name is None or exc.name.split(".")[0] not in ("avalanche", "torchvision"):
        return exc
    return L2BGError(f"l2bg.avalanche.{name} needs Avalanche ({exc.name} is not installed); "
                     "pip install 'l2bg[avalanche]'")


def lazy_classes(namespace: dict[str, Any], builders: dict[str, Callable[[], type]]
                 ) -> Callable[[str], Any]:
    """A module ``__getattr__`` for classes that subclass Avalanche's: each is built (and
    Avalanche imported) on first use, then bound in the module under its own name, so
    ``from ... import`` and pickle (Avalanche's checkpoints) find it there."""
    module = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        build = builders.get(name)
        if build is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        try:
            cls = build()
        except ModuleNotFoundError as exc:
            raise _missing(name, exc) from exc
        cls.__module__, cls.__qualname__ = module, name
        namespace[name] = cls
        return cls

    return __getattr__


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'l2bg.avalanche' has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    except ModuleNotFoundError as exc:
        raise _missing(name, exc) from exc
