"""Learn to Bind and Grow: task-incremental learning by binding to similar task-nets and growing
only the layers where the tasks conflict.

The public API is importable from the top level (``from l2bg import JointNet, Learner``); each
name is loaded on first use, so ``import l2bg`` itself imports neither torch nor anything heavy.
Terms and formulas: docs/design.md.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import warnings
from typing import TYPE_CHECKING, Any

from l2bg.base.version import __version__

#: public name -> module that defines it
_EXPORTS = {
    "JointNet": "l2bg.net.jointnet",
    "copy_task_net": "l2bg.net.jointnet",
    "Template": "l2bg.net.templates",
    "mlp": "l2bg.net.templates",
    "convnet": "l2bg.net.templates",
    "template_for": "l2bg.net.catalog",
    "register_template": "l2bg.net.catalog",
    "resnet18": "l2bg.net.resnets",
    "resnet26": "l2bg.net.resnets",
    "module_template": "l2bg.net.modules",
    "Task": "l2bg.data",
    "Benchmark": "l2bg.data",
    "BENCHMARKS": "l2bg.data",
    "build_benchmark": "l2bg.data",
    "TrainConfig": "l2bg.learn.training",
    "default_config": "l2bg.learn.training",
    "fit": "l2bg.learn.training",
    "evaluate_all": "l2bg.learn.training",
    "GrowStep": "l2bg.learn.step",
    "Decision": "l2bg.learn.record",
    "TaskRecord": "l2bg.learn.record",
    "RunRecord": "l2bg.learn.record",
    "BindGrowStep": "l2bg.learn.step",
    "StepContext": "l2bg.learn.step",
    "Strategy": "l2bg.learn.strategies",
    "Learner": "l2bg.learn.learner",
    "RunResult": "l2bg.learn.learner",
    "Hook": "l2bg.learn.learner",
    "Plugin": "l2bg.learn.plugins",
    "Experiment": "l2bg.learn.experiment",
    "IndependentCache": "l2bg.learn.independent",
    "Settings": "l2bg.learn.settings",
    "RunConfig": "l2bg.learn.runconfig",
    "L2BGError": "l2bg.base.errors",
    "ParamError": "l2bg.base.errors",
}
#: public submodules (attribute -> module), also loaded on first use and without a warning
_MODULES = {"rsa": "l2bg.rsa", "conflict": "l2bg.conflict", "metrics": "l2bg.learn.metrics",
            "strategies": "l2bg.learn.strategies", "search": "l2bg.search", "data": "l2bg.data",
            "executor": "l2bg.net.executor", "rules": "l2bg.conflict.rules",
            "similarity": "l2bg.conflict.similarity"}

#: module paths of 0.1 -> their place since 0.2; importing an old path still works until 0.3,
#: with a DeprecationWarning naming the new one (CHANGELOG.md lists them)
MOVED = {f"l2bg.{old}": f"l2bg.{new}" for old, new in (
    ("errors", "base.errors"), ("registry", "base.registry"), ("fileio", "base.fileio"),
    ("locks", "base.locks"), ("faults", "base.crashpoints"), ("bounds", "base.bounds"),
    ("outdir", "base.outdir"), ("_ext", "base.native"), ("templates", "net.templates"),
    ("jointnet", "net.jointnet"), ("plan", "net.plan"), ("executor", "net.executor"),
    ("cuda_graph", "net.cuda_graph"), ("similarity", "conflict.similarity"),
    ("cka", "rsa.cka"), ("rules", "conflict.rules"), ("step", "learn.step"),
    ("strategies", "learn.strategies"), ("learner", "learn.learner"),
    ("training", "learn.training"), ("metrics", "learn.metrics"), ("cache", "learn.independent"),
    ("settings", "learn.settings"), ("search.liveness", "search.heartbeat"),
    ("search.notation", "search.format"), ("search.cli", "cli.search"))}


class _MovedFinder:
    """Imports an old module path as the module at its new path, warning once per path."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: Any) -> Any:
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}; import it from there (the old "
                      "path goes in 0.3)", DeprecationWarning, stacklevel=2)
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: Any) -> None:
        """Nothing to run: the module at the new path is already imported."""


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _MovedFinder())

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BindGrowStep",
    "Decision",
    "Experiment",
    "GrowStep",
    "Hook",
    "IndependentCache",
    "JointNet",
    "L2BGError",
    "Learner",
    "ParamError",
    "Plugin",
    "RunConfig",
    "RunRecord",
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
    "module_template",
    "register_template",
    "resnet18",
    "resnet26",
    "rsa",
    "rules",
    "search",
    "similarity",
    "strategies",
    "template_for",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from l2bg import conflict, data, rsa, search
    from l2bg.base.errors import L2BGError
    from l2bg.conflict import rules, similarity
    from l2bg.data import BENCHMARKS, Benchmark, Task, build_benchmark
    from l2bg.learn import metrics, strategies
    from l2bg.learn.experiment import Experiment
    from l2bg.learn.independent import IndependentCache
    from l2bg.learn.learner import Hook, Learner, RunResult
    from l2bg.learn.plugins import Plugin
    from l2bg.learn.record import Decision, RunRecord, TaskRecord
    from l2bg.learn.settings import Settings
    from l2bg.learn.step import BindGrowStep, GrowStep, StepContext
    from l2bg.learn.strategies import Strategy
    from l2bg.learn.training import TrainConfig, default_config, evaluate_all, fit
    from l2bg.net import executor
    from l2bg.net.catalog import register_template, template_for
    from l2bg.net.jointnet import JointNet, copy_task_net
    from l2bg.net.modules import module_template
    from l2bg.net.resnets import resnet18, resnet26
    from l2bg.net.templates import Template, convnet, mlp


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    else:
        raise AttributeError(f"module 'l2bg' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def backends() -> dict:
    """Which fast paths are active here (native executor, Triton) and why; loads them lazily."""
    from l2bg.base.native import backends as _backends

    return _backends()
