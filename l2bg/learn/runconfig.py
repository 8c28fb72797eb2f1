"""The run configuration: one value for everything a run takes, checked once.

A :class:`RunConfig` holds the experiment's :class:`l2bg.learn.settings.Settings` (data, training
recipe, RSA, device, cache), the strategy (its conflict-model options among the settings) and the
grow coefficients δ. :meth:`RunConfig.check` checks all of it before any data is read or any net
trained; ``l2bg run`` builds one from its flags, and ``l2bg search`` checks its settings and
strategy through one (δ is what it searches). Its grow steps come from
:func:`l2bg.learn.step.grow_steps`, the one place δ values become grow steps, which
:meth:`l2bg.learn.learner.Learner.run` uses for its ``delta`` too. :meth:`RunConfig.record` is the
``config`` block of ``results.json``.

Errors name parameters (``delta``, ``deltas``, ``strategy``), never command-line flags: the command
line shows its flags through :mod:`l2bg.cli.flags`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from l2bg.base.errors import ParamError
from l2bg.learn.settings import Settings
from l2bg.learn.step import GrowStep, grow_steps

if TYPE_CHECKING:  # pragma: no cover
    from l2bg.learn.independent import IndependentCache
    from l2bg.learn.learner import Hook, Learner, RunResult
    from l2bg.learn.record import RunRecord
    from l2bg.learn.settings import Built
    from l2bg.learn.strategies import Strategy

__all__ = ["PreparedRun", "RunConfig", "decathlon_record", "grow_steps"]


@dataclass
class PreparedRun:
    """A checked run whose data is built and whose learner is ready: calling it learns the
    tasks and returns the result, ``record.config`` filled in (:meth:`RunConfig.record`)."""

    config: RunConfig
    built: Built
    cache: IndependentCache
    learner: Learner
    strategy: Strategy
    steps: list[GrowStep]

    def __call__(self) -> RunResult:
        result = self.learner.run(self.strategy, sequence=self.steps)
        result.record.config = self.config.record(self.built, self.cache, self.strategy)
        if self.built.bench.source.get("decathlon"):
            result.record.decathlon = decathlon_record(result.record, self.built.bench)
        return result


def decathlon_record(record: RunRecord, bench: Any) -> dict[str, Any]:
    """``decathlon_score`` (S, the sum) and ``decathlon_scores`` (per domain) of a run's record:
    its final test errors against the independent nets' test errors
    (:func:`l2bg.learn.metrics.decathlon_scores`)."""
    from l2bg.learn.metrics import decathlon_scores

    sizes = {t.name: int(t.y_test.numel()) for t in bench.tasks}
    names = [t.decision.task for t in record.tasks]
    final = record.acc_matrix[-1]
    errors = [1.0 - final[j] for j in range(len(names))]
    base = [1.0 - t.independent_test_acc for t in record.tasks]
    scores = decathlon_scores(errors, base, [sizes[n] for n in names])
    return {"decathlon_score": sum(scores),
            "decathlon_scores": dict(zip(names, scores, strict=True)),
            "decathlon_score_of": "final test error (the official val split) against the "
                                  "independent nets' test error, Rebuffi et al. 2017"}


@dataclass
class RunConfig:
    """Everything one run takes: the experiment's settings, the strategy (a registered name or
    a :class:`l2bg.learn.strategies.Strategy`, configured with the settings' conflict rules) and
    the grow coefficients: ``delta`` for every task after the first, or ``deltas`` one per
    task after the first (strategies that take δ need one of them; the others take neither)."""

    settings: Settings
    strategy: str | Strategy = "l2bg"
    delta: float | None = None
    deltas: list[float] | None = None

    @classmethod
    def from_args(cls, args: Any) -> RunConfig:
        """The run configuration of parsed ``l2bg run`` arguments."""
        return cls(Settings.from_args(args), args.strategy, args.delta, args.deltas)

    def configured(self) -> Strategy:
        """The strategy with the settings' grow rule, bind rule and similarity measure."""
        return self.settings.strategy(self.strategy)

    def check(self, *, searched: bool = False, benchmark: bool = True) -> Strategy:
        """Check every setting, the strategy and δ before any work (one line per fault, naming
        the parameter); return the configured strategy. ``searched``: δ is left to a search;
        ``benchmark=False``: the tasks come from elsewhere (:meth:`Settings.check`)."""
        self.settings.check(benchmark=benchmark)
        strategy = self.configured()
        if searched:
            return strategy
        given = self.delta is not None or self.deltas is not None
        if self.delta is not None and self.deltas is not None:
            raise ParamError("give either {delta} or {deltas}, not both", "delta", "deltas")
        if given and not strategy.takes_delta:
            raise ParamError(f"{{delta}}/{{deltas}} apply to strategies that take δ (such as "
                             f"{{strategy}} l2bg), not {strategy.name}", "delta", "deltas",
                             "strategy")
        if strategy.takes_delta and not given:
            raise ParamError(f"{{strategy}} {strategy.name} needs a grow coefficient: {{delta}} D "
                             "or {deltas} d2,...,dT", "strategy", "delta", "deltas")
        self.grow_steps(2 if self.deltas is None else len(self.deltas) + 1)  # each δ's range
        return strategy

    def prepare(self, cache: IndependentCache | bool | None = None, *, quiet: bool = False,
                hooks: Sequence[Hook] = ()) -> PreparedRun:
        """Check everything, build the data, open the cache (``cache``: as for
        :class:`~l2bg.learn.learner.Learner`, the directory from the settings) and make the
        learner, all before any training: what ``l2bg run`` does before it claims ``--out``."""
        from l2bg.learn.independent import open_cache

        strategy = self.check()
        built = self.settings.build()
        steps = self.grow_steps(len(built.bench.tasks))
        cache = open_cache(cache, self.settings.cache_dir)
        learner = self.settings.learner(built, cache, quiet=quiet, hooks=tuple(hooks))
        learner.prepare(strategy, steps)
        return PreparedRun(self, built, cache, learner, strategy, steps)

    def run(self, cache: IndependentCache | bool | None = None, *, quiet: bool = False,
            hooks: Sequence[Hook] = ()) -> RunResult:
        """Learn the tasks as ``l2bg run`` does (without writing files): the result's record
        is ``results.json``'s, ``config`` included."""
        return self.prepare(cache, quiet=quiet, hooks=hooks)()

    def grow_steps(self, num_tasks: int) -> list[GrowStep]:
        """This run's grow sequence for ``num_tasks`` tasks (:func:`grow_steps`)."""
        return grow_steps(num_tasks, self.delta, self.deltas)

    def record(self, built: Built, cache: IndependentCache,
               strategy: Strategy | None = None) -> dict[str, Any]:
        """The ``config`` block of ``results.json``: every setting that shapes the result, as
        given and as resolved (the RSA sample count of every task, the template, the training
        recipe, the device, the data's source, the cache, the versions)."""
        import torch

        from l2bg.base.version import __version__
        from l2bg.conflict.scores import sample_count

        strategy = self.configured() if strategy is None else strategy
        s = self.settings
        options = strategy.options()
        given = {k: v for k, v in s.to_dict().items() if k != "template"}  # resolved below
        return {
            **given, **{k: v for k, v in options.items() if k in s.rules()},
            "tasks": len(built.bench.tasks), "strategy": strategy.name,
            "strategy_options": options, "delta": self.delta, "deltas": self.deltas,
            "rsa_samples_effective": [sample_count(t.x_val.shape[0], s.rsa_samples)
                                      for t in built.bench.tasks],
            "template": built.template.to_dict(), "train": built.train.to_dict(),
            "device": str(built.device), "data": built.bench.source,
            "cache_dir": None if cache.root is None else str(cache.root),
            "torch": torch.__version__, "l2bg": __version__,
        }
