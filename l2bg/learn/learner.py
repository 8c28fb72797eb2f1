"""Grow-sequence runs over a task stream: the Learner loops over the Bind-Grow-Step.

A run takes a task stream (a benchmark, or any list of :class:`l2bg.data.Task` with a template),
a strategy (a name from :mod:`l2bg.learn.strategies` or a :class:`l2bg.learn.strategies.Strategy`)
and one :class:`GrowStep` per task after the first. For every task in order it decides
(:meth:`l2bg.learn.step.BindGrowStep.decide`) and applies the decision (bind, grow, train,
evaluate); the run record (``results.json``) is built from the typed task records.
:meth:`Learner.run` is the only loop over tasks: plugins (:mod:`l2bg.learn.plugins`) see every
task before and after it is learned, may serve conflict scores and may restore a stored outcome
instead of training, so logging, checkpointing and the search's memo plug in without copying it.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any

import torch

from l2bg.base.errors import L2BGError
from l2bg.conflict import scores as conflict
from l2bg.conflict.units import list_units
from l2bg.learn import strategies
from l2bg.learn.environment import Environment
from l2bg.learn.experiment import DEFAULT_ADAPTER_RANK, Experiment
from l2bg.learn.independent import IndependentCache, IndependentNet, open_cache
from l2bg.learn.plugins import (
    Hook,
    LogLines,
    Plugin,
    Run,
    finish_run,
    provided_scores,
    restored,
)
from l2bg.learn.record import RunRecord
from l2bg.learn.step import (
    BindGrowStep,
    CandidateScore,
    GrowStep,
    SequenceState,
    StepContext,
    TaskRecord,
    grow_steps,
)
from l2bg.learn.training import TrainConfig
from l2bg.net.executor import default_backend
from l2bg.net.jointnet import JointNet
from l2bg.net.templates import Template

__all__ = ["GrowStep", "Hook", "Learner", "LogLines", "Plugin", "RunRecord", "RunResult"]


@dataclass
class RunResult:
    """A learned task stream: the run record (:class:`RunRecord`; read as a mapping it is
    ``results.json``) and the typed task records; the JointNet and the independent nets
    (learning order) are loaded on first use (after a run whose tasks a plugin restored,
    nothing is loaded unless they are read)."""

    record: RunRecord
    records: list[TaskRecord]
    load_net: Callable[[], JointNet] = field(repr=False)
    load_independent: Callable[[], list[IndependentNet]] = field(repr=False)

    @cached_property
    def net(self) -> JointNet:
        return self.load_net()

    @cached_property
    def independent(self) -> list[IndependentNet]:
        return self.load_independent()


class Learner:
    """Runs grow sequences on one task stream with one training recipe."""

    def __init__(self, tasks: Sequence[Any], template: Template, config: TrainConfig, *,
                 benchmark: str = "custom", seed: int = 0, device: torch.device | str = "cpu",
                 cache: IndependentCache | bool | None = None,
                 cache_dir: str | os.PathLike | None = None, rsa_samples: int | None = None,
                 rsa_backend: str = "auto", quiet: bool = False,
                 hooks: Sequence[Plugin] = (), plugins: Sequence[Plugin] = (),
                 grow_mode: str = "copy", adapter_rank: int = DEFAULT_ADAPTER_RANK,
                 task_bn: bool = False) -> None:
        """``cache``: the independent nets' cache by the command line's rule (None:
        ``cache_dir``, else ``$L2BG_CACHE_DIR``, else the user cache directory; False: in
        memory only; or an :class:`IndependentCache`). Progress shows as a bar on a terminal
        and as one line per task otherwise (:class:`LogLines`); ``quiet=True`` silences it.
        ``plugins`` (``hooks``: their former name) fire at the loop's extension points
        (:class:`l2bg.learn.plugins.Plugin`), the training ones for every net a run trains.
        ``grow_mode`` (``copy`` or ``adapt``, for every step that names none), ``adapter_rank``
        and ``task_bn`` (every task owns its batch norm) shape how units grow (docs/design.md,
        "Units"); the granularity of the conflict model is the strategy's
        (``strategies.get("l2bg").configured(granularity="group:4")``)."""
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
        self.cache = open_cache(cache, cache_dir)
        self.rsa_samples = rsa_samples
        self.rsa_backend = rsa_backend
        self.quiet = quiet
        self.plugins = [*plugins, *hooks]  # hooks: the former name
        if not quiet and not sys.stderr.isatty():  # no bar in a log file: one line per task
            self.plugins.append(LogLines(template.slot_names))
        self.experiment = Experiment(tuple(self.tasks), template, config, benchmark, seed,
                                     self.device, self.cache, rsa_samples, rsa_backend,
                                     grow_mode, adapter_rank, task_bn, self.plugins)
        self.step = BindGrowStep(self.experiment)
        if rsa_samples is not None:
            for t in self.tasks:
                conflict.sample_indices(t.x_val.shape[0], rsa_samples, 0)

    @property
    def hooks(self) -> list[Plugin]:
        """The plugins (their former name)."""
        return self.plugins

    def independent(self, index: int, progress: Any = None) -> IndependentNet:
        """The independent net of stream task ``index`` (trained once per cache). Outside
        :meth:`run` (also when a result's ``independent`` is read) the plugins' training
        extension points do not fire."""
        return self.experiment.independent(index, progress, plugins=())

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
        steps = grow_steps(T, delta) if sequence is None else list(sequence)
        if len(steps) != T - 1:
            raise L2BGError(f"a grow sequence needs one step per task after the first "
                            f"({T - 1}), got {len(steps)}")
        strat.check(steps, self.template, self.config)
        if strat.num_groups is not None:  # G <= C at every slot cut, before any training
            list_units(self.template.expandable_slots, self.experiment.unit_channels.__getitem__,
                       strat.num_groups, self.template.slot_names)
        return strat, steps, order

    def run(self, strategy: str | strategies.Strategy = "l2bg",
            sequence: Sequence[GrowStep] | None = None, delta: float | None = None,
            order: Sequence[int] | None = None) -> RunResult:
        """Learn every task in ``order`` (stream indices; default the stream order) with
        ``strategy``; ``sequence`` gives one GrowStep per task after the first (or ``delta`` one
        δ for all of them). The only loop over tasks: every plugin is called at its extension
        points (:mod:`l2bg.learn.plugins`)."""
        strat, steps, order = self.prepare(strategy, sequence, delta, order)
        from tqdm.auto import tqdm

        T, epochs = len(order), self.config.epochs
        progress = tqdm(total=epochs * (2 * T - 1), unit="epoch", leave=False,
                        desc=f"{self.benchmark}:{strat.name}",
                        disable=True if self.quiet else None)
        rng = random.Random(strat.rng_seed(self.seed))
        run = Run(self.experiment, strat, order, steps)
        state = SequenceState(self.new_net(), run.records)
        pending: list[Callable[[], JointNet]] = []  # the last restored task's JointNet loader

        def net() -> JointNet:
            """The JointNet after the tasks so far (loaded now if the last one was restored)."""
            if pending:
                state.net = pending.pop()()
            return state.net

        result = None
        start = time.perf_counter()
        try:
            for p in self.plugins:
                p.before_run(run)
            for pos in range(T):
                spec = steps[pos - 1] if pos else GrowStep()
                ctx = self.step.context(order, pos, spec, rng, None,
                                        num_groups=strat.num_groups)
                ctx.scorer = partial(self._scores, ctx, order, net, run.timings)
                for p in self.plugins:
                    p.before_task(ctx)
                decision = self.step.decide(strat, ctx)
                found = restored(self.plugins, run.decisions, decision)
                if found is None:
                    net()
                    record = self.step.apply(state, order, pos, decision, run.timings, progress)
                    for p in self.plugins:
                        p.after_apply(ctx, record, state)
                    trained_inside = pos > 0 and decision.bind_to is not None
                    progress.update(0 if pos == 0 or trained_inside else epochs)
                else:
                    record = found.record
                    state.records.append(record)
                    pending[:] = [found.net]
                    progress.update(epochs if pos == 0 or decision.bind_to is None
                                    else 2 * epochs)
                for p in self.plugins:
                    p.after_task(ctx, record, time.perf_counter() - start)
            wall = time.perf_counter() - start
            record = self.run_record(strat, state.records, run.timings, wall)
            result = RunResult(record=record, records=state.records, load_net=net,
                               load_independent=partial(self._independents, order))
        finally:
            progress.close()
            finish_run(self.plugins, run, result)
        return result

    def _scores(self, ctx: StepContext, order: list[int], net: Callable[[], JointNet],
                timings: dict[str, float], candidates: Sequence[str], similarity: str
                ) -> tuple[dict[str, CandidateScore], str | None]:
        """The conflict scores of ``ctx``'s task, through the plugins' ``provide_scores``."""
        def compute() -> tuple[dict[str, CandidateScore], str | None]:
            return self.step.score(net(), order, ctx.position, candidates, timings, similarity,
                                   ctx.num_groups)

        return provided_scores(self.plugins, ctx, candidates, similarity, compute)

    def new_net(self) -> JointNet:
        """An empty JointNet of this learner's template (task batch norm when asked) on its
        device."""
        if self.experiment.task_bn:
            return JointNet(self.template, task_bn=True).to(self.device)
        return JointNet(self.template).to(self.device)

    def _independents(self, order: Sequence[int]) -> list[IndependentNet]:
        return [self.independent(j) for j in order]

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
