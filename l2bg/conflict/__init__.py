"""Conflict between tasks: similarity measures (:mod:`.similarity`, :mod:`.cka`), the conflict
scores (:mod:`.scores`), and the grow and bind rules with the nucleus (:mod:`.rules`).

The names of the former ``l2bg.conflict`` module are re-exported here, loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["check_delta", "check_scores", "choose_bind", "distribution", "layer_conflicts",
           "nucleus", "prefix", "ranked", "sample_count", "sample_indices", "task_score"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'l2bg.conflict' has no attribute {name!r}")
    module = "l2bg.conflict.rules" if name == "nucleus" else "l2bg.conflict.scores"
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
