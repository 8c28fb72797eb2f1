"""The Bind-Grow-Step (Algorithm 1 of the paper) for one task, in two halves.

* :meth:`BindGrowStep.decide` asks the strategy where the task binds and which slots grow; it
  returns a typed :class:`Decision` (bind target, grown slots, the δ that chose them, the conflict
  scores and the reason). For the first task, and for ``independent``, the decision is "no bind":
  the task-net is the task's own independent net.
* :meth:`BindGrowStep.apply` carries a decision out on a JointNet (bind, grow its units by copy
  or adapter, train the task, evaluate every learned task) and returns a typed
  :class:`TaskRecord`.

With a strategy of granularity ``group:G`` the conflict scores are per unit (slot, channel group:
:mod:`l2bg.conflict.units`) instead of per slot.

The step reads a plain :class:`l2bg.learn.experiment.Experiment` (tasks, template, training
recipe, seed, RSA settings, independent nets), never the learner.
:meth:`l2bg.learn.learner.Learner.run` is the one loop over the tasks; its plugins
(:mod:`l2bg.learn.plugins`, such as the search's memo) may serve scores or restore a stored
decision instead of ``apply``. The decision and the task record are part of
the run record (:mod:`l2bg.learn.record`, which owns them); they are importable from here as
before. Terms and formulas: docs/design.md.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from l2bg.base.errors import L2BGError, ParamError
from l2bg.conflict import scores as conflict
from l2bg.conflict.similarity import DEFAULT_SIMILARITY
from l2bg.conflict.units import list_units, unit_activations
from l2bg.learn.experiment import GROW_MODES
from l2bg.learn.independent import IndependentNet, task_seed
from l2bg.learn.record import CandidateScore, Decision, TaskRecord
from l2bg.learn.training import evaluate_all, fit
from l2bg.net.jointnet import JointNet, copy_task_net

if TYPE_CHECKING:  # pragma: no cover
    from l2bg.learn.experiment import Experiment
    from l2bg.learn.strategies import Strategy

__all__ = [
    "BindGrowStep",
    "CandidateScore",
    "Decision",
    "GrowStep",
    "grow_steps",
    "SequenceState",
    "StepContext",
    "TaskRecord",
    "activations",
    "timer",
]


@dataclass(frozen=True)
class GrowStep:
    """What the user asks of one task of a grow sequence (t, b_t, δ_t): ``delta`` the grow
    coefficient; ``bind_to`` forces the bind target (None lets the strategy choose);
    ``candidates`` restricts the bind targets; ``slots`` forces the grown slots (names or
    indices); ``mode`` how the grown units grow, ``copy`` or ``adapt`` (None: the run's grow
    mode). δ is checked here, once, by the one rule (:func:`l2bg.conflict.check_delta`)."""

    delta: float | None = None
    bind_to: str | None = None
    candidates: Sequence[str] | None = None
    slots: Sequence[int | str] | None = None
    mode: str | None = None

    def __post_init__(self) -> None:
        if self.delta is not None:
            conflict.check_delta(self.delta)
        if self.mode is not None and self.mode not in GROW_MODES:
            raise ParamError(f"{{grow_mode}} {self.mode!r} is not one of "
                             f"{', '.join(GROW_MODES)}", "grow_mode")


def grow_steps(num_tasks: int, delta: float | None = None,
               deltas: Sequence[float] | None = None) -> list[GrowStep]:
    """One :class:`GrowStep` per task after the first: ``deltas[i]`` for task i + 1, else
    ``delta`` for every one (None: no δ, for strategies that take none). Each δ is checked once,
    by the GrowStep it becomes (:func:`l2bg.conflict.check_delta`)."""
    if delta is not None and deltas is not None:
        raise ParamError("give either {delta} or {deltas}, not both", "delta", "deltas")
    if deltas is None:
        step = GrowStep(delta=delta)
        return [step for _ in range(num_tasks - 1)]
    deltas = list(deltas)
    if len(deltas) != num_tasks - 1:
        raise ParamError(f"{{deltas}} has {len(deltas)} values; {num_tasks} tasks need "
                         f"{num_tasks - 1} (one per task after the first)", "deltas")
    steps = []
    for d in deltas:
        try:
            steps.append(GrowStep(delta=d))
        except ParamError as exc:  # the same rule, named for where the value came from
            raise ParamError(exc.template.replace("{delta}", "{deltas}"), "deltas") from None
    return steps


@dataclass
class SequenceState:
    """A grow sequence after some steps: the JointNet and one record per learned task."""

    net: JointNet
    records: list[TaskRecord] = field(default_factory=list)


@contextmanager
def timer(timings: dict[str, float], key: str) -> Iterator[None]:
    """Add the time the block takes to ``timings[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


Scorer = Callable[[Sequence[str], str], tuple[dict[str, CandidateScore], "str | None"]]


@dataclass
class StepContext:
    """What a strategy sees when it decides for the task at ``position`` of the learning order.

    ``index`` is the task's index in the learner's stream (it keys the independent net);
    ``learned`` the tasks learned so far, in order; ``spec`` the user's :class:`GrowStep`;
    ``rng`` the run's one ``Random``, drawn in task order; :meth:`scores` the conflict scores of
    candidate task-nets under a similarity measure (computed once, possibly from a cache),
    per unit when ``num_groups`` (the strategy's granularity ``group:G``) is set; ``mode`` the
    grow mode of the step (the spec's, else the run's)."""

    position: int
    index: int
    task: str
    learned: list[str]
    spec: GrowStep
    rng: random.Random
    expandable: list[int]
    slot_index: Callable[[int | str], int]
    scorer: Scorer
    num_groups: int | None = None
    mode: str = "copy"

    @property
    def previous(self) -> str:
        return self.learned[-1]

    def scores(self, candidates: Sequence[str], similarity: str = DEFAULT_SIMILARITY
               ) -> tuple[dict[str, CandidateScore], str | None]:
        """Conflict scores C = 1 − similarity of this task against ``candidates``, and the
        backend that ran."""
        return self.scorer(candidates, similarity)

    def forced_slots(self) -> tuple[int, ...] | None:
        """The slots the user forced (sorted indices), or None."""
        if self.spec.slots is None:
            return None
        return tuple(sorted({self.slot_index(s) for s in self.spec.slots}))


def check_forced_bind(task: str, spec: GrowStep, learned: Sequence[str]) -> None:
    if spec.bind_to is not None and spec.bind_to not in learned:
        raise L2BGError(f"task {task!r} is forced to bind to {spec.bind_to!r}, which is not a "
                        f"learned task; learned: {list(learned)}")


@torch.no_grad()
def activations(net: JointNet, tasks: Sequence[str], x: Tensor, batch_size: int = 1024
                ) -> dict[str, list[Tensor]]:
    """Per-slot activations of every task-net in ``tasks`` on the same inputs x (eval mode), each
    (n, d_l) fp32. One :meth:`JointNet.forward_all` pass per batch computes every shared node
    once for all the tasks routed through it."""
    was = net.training
    net.eval()
    device = next(net.parameters()).device
    parts: dict[str, list[list[Tensor]]] = {t: [] for t in tasks}
    try:
        for i in range(0, x.shape[0], batch_size):
            _, acts = net.forward_all(x[i:i + batch_size].to(device), tasks=list(tasks),
                                      return_activations=True)
            for t in tasks:
                parts[t].append(acts[t])
    finally:
        net.train(was)
    return {t: [torch.cat([p[s] for p in ps]).float() for s in range(len(ps[0]))]
            for t, ps in parts.items()}


class BindGrowStep:
    """Decide and apply one task of a grow sequence in an experiment (its data and recipe)."""

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment

    # ------------------------------------------------------------------ decide
    def context(self, order: Sequence[int], position: int, spec: GrowStep, rng: random.Random,
                scorer: Scorer, *, num_groups: int | None = None) -> StepContext:
        ex = self.experiment
        names = ex.names(order)
        return StepContext(position=position, index=order[position], task=names[position],
                           learned=names[:position], spec=spec, rng=rng,
                           expandable=list(ex.template.expandable_slots),
                           slot_index=ex.template.slot_index, scorer=scorer,
                           num_groups=num_groups, mode=spec.mode or ex.grow_mode)

    def decide(self, strategy: Strategy, ctx: StepContext) -> Decision:
        """The decision for the task of ``ctx``: no bind for the first task, else the
        strategy's, with the step's grow mode (``copy`` when nothing grows) and the grown slots
        that mode ``adapt`` grows by copy (``copied``, from the template), so the same choice
        gives an equal decision whether a strategy made it or a stored task is restored."""
        if ctx.position == 0:
            return Decision(ctx.task, None, reason="first task: its task-net is its "
                                                   "independent net")
        check_forced_bind(ctx.task, ctx.spec, ctx.learned)
        decision = strategy.decide(ctx)
        if decision.grows and decision.mode != ctx.mode:
            decision = replace(decision, mode=ctx.mode)
        elif not decision.grows and decision.mode != "copy":
            decision = replace(decision, mode="copy")
        copied = self.experiment.grown_by_copy(decision.slots, decision.mode)
        if decision.copied != copied:
            decision = replace(decision, copied=copied)
        if decision.task != ctx.task:
            raise L2BGError(f"strategy {strategy.name!r} decided for task {decision.task!r} "
                            f"while asked for {ctx.task!r}")
        if decision.bind_to is not None and decision.bind_to not in ctx.learned:
            raise L2BGError(f"strategy {strategy.name!r} binds {ctx.task!r} to "
                            f"{decision.bind_to!r}, which is not a learned task")
        bad = [s for s in decision.slots if s not in ctx.expandable]
        if bad or list(decision.slots) != sorted(set(decision.slots)):
            raise L2BGError(f"strategy {strategy.name!r} grows slots {list(decision.slots)}; "
                            f"give sorted, distinct expandable slots of {ctx.expandable}")
        return decision

    def score(self, net: JointNet, order: Sequence[int], position: int,
              candidates: Sequence[str], timings: dict[str, float],
              similarity: str = DEFAULT_SIMILARITY, num_groups: int | None = None
              ) -> tuple[dict[str, CandidateScore], str | None]:
        """Conflict scores of the task at ``position`` against every candidate task-net of
        ``net``: activations of its independent net and of all candidates on the same m
        validation inputs, then one batched pass of the similarity measure per slot, or per
        unit with ``num_groups`` (each slot's channel groups, :mod:`l2bg.conflict.units`)."""
        ex = self.experiment
        index = order[position]
        task = ex.tasks[index]
        with timer(timings, "independent"):
            indep = ex.independent(index)
        idx = conflict.sample_indices(task.x_val.shape[0], ex.rsa_samples,
                                      task_seed(ex.seed, position))
        x = task.x_val[idx]
        expandable = ex.template.expandable_slots
        if num_groups is None:
            units, channels = None, None
        else:
            channels = ex.unit_channels.__getitem__  # of the template, once per experiment
            units = list_units(expandable, channels, num_groups, ex.template.slot_names)
        with timer(timings, "activations"):
            acts_t = activations(indep.net, [indep.task], x)[indep.task]
            acts_b = activations(net, candidates, x)
        with timer(timings, "rsa"):
            if units is None:
                ref = [acts_t[s] for s in expandable]
                others = {b: [acts_b[b][s] for s in expandable] for b in candidates}
            else:
                ref = unit_activations(acts_t, units, channels, num_groups)
                others = {b: unit_activations(acts_b[b], units, channels, num_groups)
                          for b in candidates}
            layers, backend = conflict.layer_conflicts(ref, others, similarity=similarity,
                                                       backend=ex.rsa_backend)
        return {b: CandidateScore.of(layers[b], units) for b in candidates}, backend

    # ------------------------------------------------------------------ apply
    def apply(self, state: SequenceState, order: Sequence[int], position: int,
              decision: Decision, timings: dict[str, float], progress: Any = None
              ) -> TaskRecord:
        """Carry ``decision`` out on ``state`` (in place): bind, grow, train, evaluate."""
        ex = self.experiment
        index = order[position]
        task = ex.tasks[index]
        net = state.net
        with timer(timings, "independent"):
            indep = ex.independent(index, progress)
        train_loss = None
        if decision.bind_to is None:
            copy_task_net(indep.net, indep.task, net, as_task=task.name)
        else:
            seed = task_seed(ex.seed, position) + 1
            torch.manual_seed(seed)
            net.bind(task.name, decision.bind_to, task.num_classes)
            grow(net, task.name, decision, ex.adapter_rank)
            with timer(timings, "training"):
                train_loss = fit(net, task.name, task.x_train, task.y_train,
                                 ex.config.replace(seed=seed), progress, plugins=ex.plugins,
                                 transform=task.train_transform)
        with timer(timings, "evaluation"):
            val_row, test_row = self.evaluate(net, order, position)
        record = _record(decision, indep, val_row, test_row, net.num_parameters(), train_loss)
        state.records.append(record)
        return record

    def evaluate(self, net: JointNet, order: Sequence[int], position: int
                 ) -> tuple[list[float | None], list[float | None]]:
        """Row ``position`` of the accuracy matrices (validation, test): every learned task."""
        learned = [self.experiment.tasks[j] for j in order[:position + 1]]
        val = evaluate_all(net, {t.name: (t.x_val, t.y_val) for t in learned})
        test = evaluate_all(net, {t.name: (t.x_test, t.y_test) for t in learned})
        pad: list[float | None] = [None] * (len(order) - position - 1)
        return [val[t.name] for t in learned] + pad, [test[t.name] for t in learned] + pad


def grow(net: JointNet, task: str, decision: Decision, rank: int) -> None:
    """Grow ``decision``'s units for ``task`` on ``net``: whole slots and channel groups, by
    copy or adapter. A layer-granularity copy decision takes today's one call, unchanged. With
    mode ``adapt``, the whole slots that cannot take an adapter (``decision.copied``, set by
    :meth:`BindGrowStep.decide`: no linear/conv2d main layer, such as a pooling slot) grow by
    copy."""
    slots = list(decision.slots)
    if decision.mode == "copy" and not decision.groups:
        net.grow(task, slots, init="copy")
        return
    if decision.copied:
        net.grow(task, list(decision.copied), init="copy")
        slots = [s for s in slots if s not in decision.copied]
    kwargs: dict[str, Any] = {"mode": decision.mode, "rank": rank}
    if decision.groups:
        kwargs.update(groups={s: list(g) for s, g in decision.groups.items()},
                      num_groups=decision.num_groups)
    net.grow(task, slots, init="copy", **kwargs)


def _record(decision: Decision, indep: IndependentNet, val_row: list[float | None],
            test_row: list[float | None], params: int, train_loss: list[float] | None
            ) -> TaskRecord:
    return TaskRecord(decision=decision, val_row=val_row, test_row=test_row, params=params,
                      independent_val_acc=indep.val_acc, independent_test_acc=indep.test_acc,
                      independent_n_val=indep.n_val,
                      independent_params=indep.net.num_parameters(),
                      independent_cached=indep.cached, train_loss=train_loss)
