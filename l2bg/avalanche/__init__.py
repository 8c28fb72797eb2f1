"""Learn to Bind and Grow in Avalanche (``pip install l2bg[avalanche]``): the strategy
:class:`~l2bg.avalanche.strategy.L2BGStrategy`, its model
:class:`~l2bg.avalanche.model.L2BGModel` (a ``MultiTaskModule``) and the converters
:func:`~l2bg.avalanche.convert.to_avalanche` / :func:`~l2bg.avalanche.convert.from_avalanche`.
Each name is loaded on first use, so importing this package does not import Avalanche; without
Avalanche installed a name gives one line saying how to install it.
"""

from __future__ import annotations

import importlib
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


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'l2bg.avalanche' has no attribute {name!r}")
    try:
        module = importlib.import_module(_EXPORTS[name])
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in ("avalanche", "torchvision"):
            raise
        raise L2BGError(f"l2bg.avalanche.{name} needs Avalanche ({exc.name} is not "
                        "installed); pip install 'l2bg[avalanche]'") from exc
    return getattr(module, name)
