"""Grow-sequence runs over a task stream: the Learner loops over the Bind-Grow-Step.

A run takes a task stream (a benchmark, or any list of :class:`l2bg.data.Task` with a template),
a strategy (a name from :mod:`l2bg.learn.strategies` or a :class:`l2bg.learn.strategies.Strategy`)
and one :class:`GrowStep` per task after the first. For every task in order it decides
(:meth:`l2bg.learn.step.BindGrowStep.decide`) and applies the decision (bind, grow, train,
evaluate); the run record (``results.json``) is built from the typed task records. Hooks see every
task before and after it is learned, so logging, checkpointing or a memo plug in without copying the
loop.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from l2bg.base.errors import L2BGError
from l2bg.conflict import scores as conflict
from l2bg.learn import strategies
from l2bg.learn.environment import Environment
from l2bg.learn.independent import IndependentCache, IndependentNet
from l2bg.learn.record import RunRecord
from l2bg.learn.step import (
    BindGrowStep,
    GrowStep,
    SequenceState,
    StepContext,
    TaskRecord,
)
from l2bg.learn.training import TrainConfig
from l2bg.net.executor import default_backend
from l2bg.net.jointnet import JointNet
from l2bg.net.templates import Template

__all__ = ["GrowStep", "Hook", "Learner", "LogLines", "RunRecord", "RunResult"]


@dataclass
class RunResult:
    """A learned task stream: the JointNet, the run record (:class:`RunRecord`; read as a
    mapping it is ``results.json``), the independent nets in learning order, and the typed task
    records (``record.tasks``)."""

    net: JointNet
    record: RunRecord
    independent: list[IndependentNet] = field(default_factory=list)
    records: list[TaskRecord] = field(default_factory=list)


class Hook:
    """Called around every task of a run (override what you need)."""

    def before_task(self, ctx: StepContext) -> None:
        """Before the task at ``ctx.position`` is decided."""

    def after_task(self, ctx: StepContext, record: TaskRecord, elapsed_s: float) -> None:
        """After it is learned and evaluated; ``elapsed_s`` since the run started."""


class LogLines(Hook):
    """One printed line per finished task with the time since the run started: what a log
    file or batch job shows instead of a progress bar."""

    def __init__(self, slot_names: Sequence[str], file: Any = None) -> None:
        self.slot_names = list(slot_names)
        self.file = file

    def after_task(self, ctx: StepContext, record: TaskRecord, elapsed_s: float) -> None:
        d = record.decision
        grew = ",".join(self.slot_names[s] for s in d.slots) or "-"
        what = "own independent net" if d.bind_to is None else f"bound to {d.bind_to}, grew {grew}"
        print(f"[{elapsed_s:8.1f}s] task {ctx.position + 1} {ctx.task}: {what}; "
              f"val {100 * record.val_acc:.2f}% test {100 * record.test_acc:.2f}%",
              file=self.file or sys.stdout, flush=True)


class Learner:
    """Runs grow sequences on one task stream with one training recipe."""

    def __init__(self, tasks: Sequence[Any], template: Template, config: TrainConfig, *,
                 benchmark: str = "custom", seed: int = 0, device: torch.device | str = "cpu",
                 cache: IndependentCache | None = None, rsa_samples: int | None = None,
                 rsa_backend: str = "auto", quiet: bool = True,
                 hooks: Sequence[Hook] = ()) -> None:
        if not tasks:
            raise L2BGError("the task stream is empty: give at least one task")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise L2BGError(f"task names must be unique, got {names}")
        self.tasks = list(tasks)
        self.template = template
        self.config = config
        self.benchmark = benchmark
        self.seed = seed
        self.device = torch.device(device)
        self.cache = cache if cache is not None else IndependentCache(None)
        self.rsa_samples = rsa_samples
        self.rsa_backend = rsa_backend
        self.quiet = quiet
        self.hooks = list(hooks)
        self.step = BindGrowStep(self)
        if rsa_samples is not None:
            for t in self.tasks:
                conflict.sample_indices(t.x_val.shape[0], rsa_samples, 0)

    def independent(self, index: int, progress: Any = None) -> IndependentNet:
        """The independent net of stream task ``index`` (trained once per cache)."""
        return self.cache.get_or_train(self.benchmark, self.tasks[index], index, self.seed,
                                       self.template, self.config, self.device, progress)

    def prepare(self, strategy: str | strategies.Strategy = "l2bg",
                sequence: Sequence[GrowStep] | None = None, delta: float | None = None,
                order: Sequence[int] | None = None
                ) -> tuple[strategies.Strategy, list[GrowStep], list[int]]:
        """Validate a run before any training: the strategy, one step per task after the first
        (``delta`` fills them when no sequence is given) and the learning order."""
        strat = strategies.get(strategy)
        T = len(self.tasks)
        order = list(range(T)) if order is None else [int(j) for j in order]
        if sorted(order) != list(range(T)):
            raise L2BGError(f"order must be a permutation of 0..{T - 1}, got {order}")
        steps = [GrowStep(delta=delta) for _ in range(T - 1)] if sequence is None else list(
            sequence)
        if len(steps) != T - 1:
            raise L2BGError(f"a grow sequence needs one step per task after the first "
                            f"({T - 1}), got {len(steps)}")
        strat.check(steps, self.template, self.config)
        return strat, steps, order

    def run(self, strategy: str | strategies.Strategy = "l2bg",
            sequence: Sequence[GrowStep] | None = None, delta: float | None = None,
            order: Sequence[int] | None = None) -> RunResult:
        """Learn every task in ``order`` (stream indices; default the stream order) with
        ``strategy``; ``sequence`` gives one GrowStep per task after the first (or ``delta`` one
        δ for all of them)."""
        strat, steps, order = self.prepare(strategy, sequence, delta, order)
        from tqdm.auto import tqdm

        T = len(order)
        progress = tqdm(total=self.config.epochs * (2 * T - 1), unit="epoch", leave=False,
                        desc=f"{self.benchmark}:{strat.name}",
                        disable=True if self.quiet else None)
        rng = random.Random(strat.rng_seed(self.seed))
        timings: dict[str, float] = {}
        state = SequenceState(JointNet(self.template).to(self.device))
        start = time.perf_counter()
        try:
            for pos in range(T):
                spec = steps[pos - 1] if pos else GrowStep()
                ctx = self.step.context(order, pos, spec, rng, self._scorer(state, order, pos,
                                                                            timings))
                for h in self.hooks:
                    h.before_task(ctx)
                decision = self.step.decide(strat, ctx)
                record = self.step.apply(state, order, pos, decision, timings, progress)
                if pos > 0 and decision.bind_to is None:
                    progress.update(self.config.epochs)  # nothing trained inside the JointNet
                for h in self.hooks:
                    h.after_task(ctx, record, time.perf_counter() - start)
        finally:
            progress.close()
        wall = time.perf_counter() - start
        record = self.run_record(strat, state.records, timings, wall)
        return RunResult(net=state.net, record=record, records=state.records,
                         independent=[self.independent(j) for j in order])

    def _scorer(self, state: SequenceState, order: list[int], pos: int,
                timings: dict[str, float]):
        return lambda candidates, similarity: self.step.score(state.net, order, pos, candidates,
                                                              timings, similarity)

    def run_record(self, strategy: strategies.Strategy, records: Sequence[TaskRecord],
                   timings: dict[str, float], wall: float) -> RunRecord:
        """The run record of ``records`` (one per learned task, in learning order): the
        decisions, accuracy matrices, the metrics of docs/design.md and the environment
        (``config`` is set by the caller)."""
        return RunRecord.build(
            records, benchmark=self.benchmark, strategy=strategy.name,
            strategy_options=strategy.options(), seed=self.seed,
            slots=self.template.slot_names,
            expandable_slots=[self.template.slot_names[s] for s in self.template.expandable_slots],
            timings=timings, wall_s=wall, executor_backend=default_backend(),
            cache={"hits": self.cache.hits, "misses": self.cache.misses},
            environment=Environment.current(self.device))
