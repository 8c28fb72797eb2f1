"""Learn to Bind and Grow: task-incremental learning by binding to similar task-nets and growing
only the layers where the tasks conflict.

The public API is importable from the top level (``from l2bg import JointNet, Learner``); each
name is loaded on first use, so ``import l2bg`` itself imports neither torch nor anything heavy.
Terms and formulas: docs/design.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "JointNet": "l2bg.jointnet",
    "copy_task_net": "l2bg.jointnet",
    "Template": "l2bg.templates",
    "mlp": "l2bg.templates",
    "convnet": "l2bg.templates",
    "template_for": "l2bg.templates",
    "Task": "l2bg.data",
    "Benchmark": "l2bg.data",
    "BENCHMARKS": "l2bg.data",
    "build_benchmark": "l2bg.data",
    "TrainConfig": "l2bg.training",
    "default_config": "l2bg.training",
    "fit": "l2bg.training",
    "evaluate_all": "l2bg.training",
    "GrowStep": "l2bg.step",
    "Decision": "l2bg.step",
    "TaskRecord": "l2bg.step",
    "BindGrowStep": "l2bg.step",
    "StepContext": "l2bg.step",
    "Strategy": "l2bg.strategies",
    "Learner": "l2bg.learner",
    "RunResult": "l2bg.learner",
    "Hook": "l2bg.learner",
    "IndependentCache": "l2bg.cache",
    "Settings": "l2bg.settings",
    "L2BGError": "l2bg.errors",
}
#: public submodules, also loaded on first use
_MODULES = ("rsa", "conflict", "metrics", "strategies", "search", "data", "executor")

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BindGrowStep",
    "Decision",
    "GrowStep",
    "Hook",
    "IndependentCache",
    "JointNet",
    "L2BGError",
    "Learner",
    "RunResult",
    "Settings",
    "StepContext",
    "Strategy",
    "Task",
    "TaskRecord",
    "Template",
    "TrainConfig",
    "__version__",
    "backends",
    "build_benchmark",
    "conflict",
    "convnet",
    "copy_task_net",
    "data",
    "default_config",
    "evaluate_all",
    "executor",
    "fit",
    "metrics",
    "mlp",
    "rsa",
    "search",
    "strategies",
    "template_for",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from l2bg import conflict, data, executor, metrics, rsa, search, strategies
    from l2bg.cache import IndependentCache
    from l2bg.data import BENCHMARKS, Benchmark, Task, build_benchmark
    from l2bg.errors import L2BGError
    from l2bg.jointnet import JointNet, copy_task_net
    from l2bg.learner import Hook, Learner, RunResult
    from l2bg.settings import Settings
    from l2bg.step import BindGrowStep, Decision, GrowStep, StepContext, TaskRecord
    from l2bg.strategies import Strategy
    from l2bg.templates import Template, convnet, mlp, template_for
    from l2bg.training import TrainConfig, default_config, evaluate_all, fit


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(f"l2bg.{name}")
    else:
        raise AttributeError(f"module 'l2bg' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def backends() -> dict:
    """Which fast paths are active here (native executor, Triton) and why; loads them lazily."""
    from l2bg._ext import backends as _backends

    return _backends()
