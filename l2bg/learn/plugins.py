"""Plugins of the one loop over tasks (:meth:`l2bg.learn.learner.Learner.run`).

A :class:`Plugin` overrides the extension points it needs; the loop calls every plugin, in the
order given, at each of them (in the style of Avalanche's strategy plugins):

* ``before_run(run)`` once, with the :class:`Run` (experiment, strategy, order, steps, the
  records so far); ``after_run(run, result)`` once at the end, also when the run failed
  (``result`` None then; also for a plugin whose ``before_run`` was not reached or raised), so
  a plugin can release what it holds;
* ``before_task(ctx)`` before the task of ``ctx`` is decided;
* ``provide_scores(ctx, candidates, similarity, compute)``: the conflict scores of a task;
  ``compute()`` computes them (or asks the next plugin), so a plugin can serve stored scores
  or keep computed ones;
* ``restore(prefix, decision)``: a stored outcome of ``decision`` after the decisions
  ``prefix`` (a :class:`Restored`: the task record and a loader of the JointNet after it), or
  None. The first plugin that restores wins and the task is not trained; the JointNet is
  loaded only when a later task needs it;
* ``after_apply(ctx, record, state)`` after the loop carried a decision out itself (bound,
  grown, trained, evaluated: ``state`` holds the JointNet and every record), not after a
  restore; what a checkpoint or the memo stores;
* ``after_task(ctx, record, elapsed_s)`` after every task, trained or restored.

Training extension points, called by :func:`l2bg.learn.training.fit` for every net the loop
trains (a task's independent net, ``phase`` ``"independent"``, and a task-net inside the
JointNet, ``"jointnet"``) with one :class:`FitState` (task, phase, net, optimiser, epoch,
iteration, mini-batch, logits, loss), in this order (:data:`TRAINING_POINTS`):

* ``before_training_epoch(state)``; then per mini-batch ``before_training_iteration(state)``
  (``x``, ``y`` set), ``after_forward(state)`` (``logits``, ``loss`` set; the gradients are
  cleared after it), ``after_backward(state)``, ``after_update(state)`` (the optimiser
  stepped: the iteration's end); ``after_training_epoch(state)`` (``history`` holds the epoch's
  mean loss).

They observe: what a plugin changes on the state does not reach the training, and a plugin's
error stops it. A net that is not trained (an independent net from the cache, a restored task)
fires none of them, nor does training outside a run (``Learner.independent``). A run without
plugins that override them trains exactly as before: nothing is called.

So the calls a plugin sees, and their arguments, are the same whether a task was trained or
restored, under ``Learner.run``, ``l2bg run`` and ``l2bg search`` (where the memo is a plugin,
:class:`l2bg.search.memo.Memo`). ``Hook`` is the former name of :class:`Plugin`.

The command line (``l2bg run``, ``l2bg search``) adds every plugin of :func:`registered`: those
added with :func:`register` and those other packages declare in the entry-point group
``l2bg.plugins`` (``[project.entry-points."l2bg.plugins"] name = "module:object"``, the object a
Plugin subclass, or a callable returning a Plugin, called once per learner).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from l2bg.base.errors import L2BGError, one_line
from l2bg.base.registry import Registry, load_entry_points

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import Tensor

    from l2bg.learn.experiment import Experiment
    from l2bg.learn.learner import RunResult
    from l2bg.learn.step import (
        CandidateScore,
        Decision,
        GrowStep,
        SequenceState,
        StepContext,
        TaskRecord,
    )
    from l2bg.learn.strategies import Strategy
    from l2bg.net.jointnet import JointNet

    Scores = tuple[dict[str, CandidateScore], str | None]

__all__ = ["ENTRY_POINT_GROUP", "TRAINING_POINTS", "FitState", "Hook", "LogLines", "Plugin",
           "Restored", "Run", "names", "register", "registered", "unregister"]

ENTRY_POINT_GROUP = "l2bg.plugins"

#: the training extension points, in the order :func:`l2bg.learn.training.fit` calls them
TRAINING_POINTS = ("before_training_epoch", "before_training_iteration", "after_forward",
                   "after_backward", "after_update", "after_training_epoch")


@dataclass
class Run:
    """One run of the loop as plugins see it: the experiment, the strategy, the learning order
    (stream indices), one step per task after the first, the timings and the records of the
    tasks learned so far (the loop appends to this list)."""

    experiment: Experiment
    strategy: Strategy
    order: list[int]
    steps: list[GrowStep]
    timings: dict[str, float] = field(default_factory=dict)
    records: list[TaskRecord] = field(default_factory=list)

    @property
    def decisions(self) -> list[Decision]:
        """The decisions of the tasks learned so far, in order."""
        return [r.decision for r in self.records]


@dataclass
class Restored:
    """A stored outcome of a decision: its task record and a loader of the JointNet after it
    (called at most once, only when a later task is scored or trained, or the result's net is
    read)."""

    record: TaskRecord
    net: Callable[[], JointNet]


@dataclass(eq=False)
class FitState:
    """One call of :func:`l2bg.learn.training.fit` as the training extension points see it:
    the task, the ``phase`` (``"independent"``: the task's independent net; ``"jointnet"``:
    its task-net inside the JointNet), the net and optimiser, ``epochs``, ``batch_size`` and
    ``num_samples``; then the current ``epoch`` and ``iteration`` (both from 0, the iteration
    within the epoch), the mini-batch ``x``, ``y`` (on the net's device), its ``logits`` and
    ``loss``, and ``history``, the mean loss of every finished epoch."""

    task: str
    phase: Literal["independent", "jointnet"]
    net: JointNet
    optimizer: torch.optim.Optimizer
    epochs: int
    batch_size: int
    num_samples: int
    epoch: int = 0
    iteration: int = 0
    x: Tensor | None = None
    y: Tensor | None = None
    logits: Tensor | None = None
    loss: Tensor | None = None
    history: list[float] = field(default_factory=list)

    @property
    def iterations(self) -> int:
        """Mini-batches per epoch."""
        return -(-self.num_samples // self.batch_size)


class Plugin:
    """Base of the loop's plugins: every extension point does nothing (see the module)."""

    name: str = ""

    def before_run(self, run: Run) -> None:
        """Once, before the first task."""

    def before_task(self, ctx: StepContext) -> None:
        """Before the task at ``ctx.position`` is decided."""

    def provide_scores(self, ctx: StepContext, candidates: Sequence[str], similarity: str,
                       compute: Callable[[], Scores]) -> Scores:
        """The conflict scores of ``ctx``'s task against ``candidates`` (default: ``compute()``)."""
        return compute()

    def restore(self, prefix: Sequence[Decision], decision: Decision) -> Restored | None:
        """A stored outcome of ``decision`` after ``prefix``, or None (the loop trains it)."""
        return None

    def after_apply(self, ctx: StepContext, record: TaskRecord, state: SequenceState) -> None:
        """After the loop carried out a decision itself (not after a restore)."""

    def after_task(self, ctx: StepContext, record: TaskRecord, elapsed_s: float) -> None:
        """After the task is learned (or restored) and evaluated; ``elapsed_s`` since the run
        started."""

    def after_run(self, run: Run, result: RunResult | None) -> None:
        """Once, at the end; ``result`` is None when the run failed."""

    # training extension points (:data:`TRAINING_POINTS`; see the module)
    def before_training_epoch(self, state: FitState) -> None:
        """Before every epoch of a trained net."""

    def before_training_iteration(self, state: FitState) -> None:
        """Before the forward pass of a mini-batch (``state.x``, ``state.y``)."""

    def after_forward(self, state: FitState) -> None:
        """After the forward pass and the loss (``state.logits``, ``state.loss``)."""

    def after_backward(self, state: FitState) -> None:
        """After the gradients of the mini-batch's loss are computed."""

    def after_update(self, state: FitState) -> None:
        """After the optimiser's step: the end of the iteration."""

    def after_training_epoch(self, state: FitState) -> None:
        """After every epoch (``state.history[-1]`` its mean loss)."""


#: The former name of :class:`Plugin` (its ``before_task`` and ``after_task`` are unchanged).
Hook = Plugin


class LogLines(Plugin):
    """One printed line per finished task with the time since the run started: what a log
    file or batch job shows instead of a progress bar."""

    name = "log-lines"

    def __init__(self, slot_names: Sequence[str], file: Any = None) -> None:
        self.slot_names = list(slot_names)
        self.file = file

    def after_task(self, ctx: StepContext, record: TaskRecord, elapsed_s: float) -> None:
        d = record.decision
        grew = ",".join(d.grown_names(self.slot_names)) or "-"
        what = "own independent net" if d.bind_to is None else f"bound to {d.bind_to}, grew {grew}"
        print(f"[{elapsed_s:8.1f}s] task {ctx.position + 1} {ctx.task}: {what}; "
              f"val {100 * record.val_acc:.2f}% test {100 * record.test_acc:.2f}%",
              file=self.file or sys.stdout, flush=True)


def provided_scores(plugins: Sequence[Plugin], ctx: StepContext, candidates: Sequence[str],
                    similarity: str, compute: Callable[[], Scores]) -> Scores:
    """The scores through every plugin's ``provide_scores``: the first plugin is asked first,
    each one's ``compute`` asks the next, the last one's computes."""
    for p in reversed(plugins):
        compute = partial(p.provide_scores, ctx, candidates, similarity, compute)
    return compute()


def restored(plugins: Sequence[Plugin], prefix: Sequence[Decision], decision: Decision
             ) -> Restored | None:
    """The first plugin's stored outcome of ``decision``, or None."""
    for p in plugins:
        found = p.restore(prefix, decision)
        if found is not None:
            return found
    return None


def _nothing(point: str, **fields: Any) -> None:
    """The training extension points of a fit without plugins that override them."""


def training_hooks(plugins: Sequence[Plugin], state: FitState) -> Callable[..., None]:
    """What :func:`l2bg.learn.training.fit` calls at a training extension point,
    ``fire(point, **fields)``: it sets ``fields`` on ``state`` and calls ``point`` of every
    plugin that overrides any training point, in order (an error propagates). Without such a
    plugin it does nothing."""
    active = [p for p in plugins if any(getattr(getattr(p, n), "__func__", None)
                                        is not getattr(Plugin, n) for n in TRAINING_POINTS)]
    if not active:
        return _nothing

    def fire(point: str, **fields: Any) -> None:
        for name, value in fields.items():
            setattr(state, name, value)
        for p in active:
            getattr(p, point)(state)

    return fire


def finish_run(plugins: Sequence[Plugin], run: Run, result: RunResult | None) -> None:
    """Every plugin's ``after_run``, each one even when an earlier one fails. After a failed run
    (``result`` None) a failing plugin is one warning, so the run's own error is the one
    raised; after a run that succeeded, the first plugin error is raised."""
    first: Exception | None = None
    for p in plugins:
        try:
            p.after_run(run, result)
        except Exception as exc:  # a plugin's fault must not hide the run's, nor skip the rest
            if result is None:
                warnings.warn(f"plugin {type(p).__name__}: after_run failed after the run "
                              f"failed ({one_line(exc, 160)}); the run's error follows",
                              RuntimeWarning, stacklevel=3)
            elif first is None:
                first = exc
    if first is not None:
        raise first


# --------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Entry:
    name: str
    factory: Callable[[], Plugin]


_REGISTRY: Registry[_Entry] = Registry("plugin", f"the {ENTRY_POINT_GROUP} entry points")
_ENTRY_POINTS_LOADED = False


def _factory(obj: Any) -> Callable[[], Plugin]:
    if isinstance(obj, Plugin):
        return lambda: obj
    if not callable(obj):
        raise L2BGError(f"a plugin is a Plugin subclass, a Plugin or a callable returning one; "
                        f"got {type(obj).__name__}")
    return obj


def register(plugin: Any, *, name: str | None = None, replace: bool = False) -> Any:
    """Add a plugin for the command line: a :class:`Plugin` subclass, a Plugin (shared by
    every run) or a callable returning one; ``name`` defaults to its ``name`` (or
    ``__name__``). Returns ``plugin`` (usable as a class decorator)."""
    key = name or getattr(plugin, "name", "") or getattr(plugin, "__name__", None)
    _REGISTRY.register(_Entry(key, _factory(plugin)), replace=replace)
    return plugin


def unregister(name: str) -> None:
    """Remove the plugin registered as ``name``."""
    _REGISTRY.unregister(name)


def _load() -> None:
    global _ENTRY_POINTS_LOADED
    if not _ENTRY_POINTS_LOADED:
        _ENTRY_POINTS_LOADED = True
        load_entry_points(_REGISTRY, ENTRY_POINT_GROUP, lambda n, obj: _Entry(n, _factory(obj)))


def names() -> list[str]:
    """Every registered plugin, entry points included."""
    _load()
    return _REGISTRY.names()


def registered() -> list[Plugin]:
    """A new instance of every registered plugin (entry points included), in registration
    order: what ``l2bg run`` and ``l2bg search`` add to their learner."""
    out = []
    for n in names():
        plugin = _REGISTRY.get(n).factory()
        if not isinstance(plugin, Plugin):
            raise L2BGError(f"plugin {n!r} gave a {type(plugin).__name__}, not an "
                            "l2bg.learn.plugins.Plugin; subclass Plugin")
        out.append(plugin)
    return out
