"""The settings of an experiment (data, training recipe, RSA, device, cache) and what they build.

``l2bg run`` and ``l2bg search`` take the same options (declared once, in
:mod:`l2bg.cli.options`) into one :class:`Settings`, checked before any work, which builds the
benchmark, template, training recipe, :class:`l2bg.learn.learner.Learner` and the configured
strategy (its conflict rules and similarity measure) the same way for both.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from l2bg.base.bounds import MAX_TASKS
from l2bg.base.errors import ParamError
from l2bg.learn.independent import default_cache_dir, open_cache, resolve_cache_dir

if TYPE_CHECKING:  # pragma: no cover
    from l2bg.data import Benchmark
    from l2bg.learn.independent import IndependentCache
    from l2bg.learn.learner import Hook, Learner
    from l2bg.learn.strategies import Strategy
    from l2bg.learn.training import TrainConfig
    from l2bg.net.templates import Template

__all__ = ["MAX_SEED", "Built", "Settings", "default_cache_dir", "open_cache",
           "resolve_cache_dir"]

#: Seeds are drawn below 2^32 so that every derived per-task seed fits torch's generator.
MAX_SEED = 2**32


@dataclass
class Built:
    """What settings build: the task stream, its template, the training recipe, the device."""

    bench: Benchmark
    template: Template
    train: TrainConfig
    device: Any


@dataclass
class Settings:
    """Data, training, RSA, conflict-model and growth settings shared by ``l2bg run`` and
    ``l2bg search``; None means the template's, benchmark's or strategy's default (see
    ``--help``). ``granularity`` (``layer`` or ``group:G``) is the conflict model's unit,
    ``grow_mode`` (``copy`` or ``adapt``), ``adapter_rank`` and ``task_bn`` how units grow
    (docs/design.md, "Units")."""

    benchmark: str
    data_root: str | None = None
    tasks: int | None = None
    class_order_seed: int | None = None
    seed: int = 0
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    shared_lr_scale: float | None = None
    rsa_samples: int | None = None
    device: str = "auto"
    cache_dir: str | None = None
    angles: list[float] | None = None
    domains: list[str] | None = None
    max_per_class: int | None = None
    grow_rule: str | None = None
    bind_rule: str | None = None
    similarity: str | None = None
    granularity: str = "layer"
    grow_mode: str = "copy"
    adapter_rank: int = 8
    task_bn: bool = False
    template: str | None = None

    @classmethod
    def from_args(cls, args: Any, **overrides: Any) -> Settings:
        """Settings from parsed arguments that carry every field (see l2bg.cli.options)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        for k in ("data_root", "cache_dir"):
            if values[k] is not None:
                values[k] = str(values[k])
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self, *, benchmark: bool = True) -> None:
        """Every number finite and in range, before any work (one line per fault).
        ``benchmark=False``: the data comes from elsewhere (an Avalanche stream), so
        ``benchmark`` need not name a registered benchmark."""
        from l2bg.data import BENCHMARKS

        if benchmark and self.benchmark not in BENCHMARKS:
            raise ParamError(f"unknown benchmark {self.benchmark!r} for {{benchmark}}; use one of "
                             f"{', '.join(BENCHMARKS)}", "benchmark")
        resolve_cache_dir(self.cache_dir)  # an empty cache_dir, before any work
        _int("seed", self.seed, 0, MAX_SEED - 1)
        _int("class_order_seed", self.class_order_seed, 0, MAX_SEED - 1)
        _int("tasks", self.tasks, 1, MAX_TASKS)
        _int("epochs", self.epochs, 1, None)
        _int("batch_size", self.batch_size, 1, None)
        _int("rsa_samples", self.rsa_samples, 3, None)
        _int("max_per_class", self.max_per_class, 1, None)
        if self.template is not None:
            from l2bg.net.catalog import TEMPLATES

            TEMPLATES.get(self.template)
        from l2bg.data.decathlon import check_domains

        check_domains(self.domains)
        _real("lr", self.lr, positive=True)
        _real("shared_lr_scale", self.shared_lr_scale, positive=False)
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith(
                "cuda:"):
            raise ParamError(f"{{device}} {self.device!r} is not auto, cpu, cuda or cuda:N",
                             "device")
        from l2bg.conflict.rules import BIND_RULES, GROW_RULES
        from l2bg.conflict.similarity import MEASURES

        for registry, value in ((GROW_RULES, self.grow_rule), (BIND_RULES, self.bind_rule),
                                (MEASURES, self.similarity)):
            if value is not None:
                registry.get(value)
        from l2bg.conflict.units import check_granularity
        from l2bg.learn.experiment import check_growth

        check_granularity(self.granularity)
        check_growth(self.grow_mode, self.adapter_rank, self.task_bn)

    def rules(self) -> dict[str, str | None]:
        """The conflict-model options given (None: the strategy's default; a granularity
        ``layer``, the default, is left to the strategy, so that strategies without the
        conflict model take these settings)."""
        from l2bg.conflict.units import check_granularity

        granularity = check_granularity(self.granularity)
        return {"grow_rule": self.grow_rule, "bind_rule": self.bind_rule,
                "similarity": self.similarity,
                "granularity": None if granularity == "layer" else granularity}

    def strategy(self, name: str | Strategy) -> Strategy:
        """The strategy ``name`` configured with these settings' rules and similarity measure
        (an error when a rule is given to a strategy without the conflict model)."""
        from l2bg.learn import strategies

        return strategies.get(name).configured(**self.rules())

    def build(self) -> Built:
        """The benchmark, template, training recipe and device of these settings."""
        from l2bg.data import build_benchmark
        from l2bg.data.fit import fit_benchmark
        from l2bg.learn.training import default_config, resolve_device
        from l2bg.net.catalog import template_for

        self.check()
        device = resolve_device(self.device)
        bench = build_benchmark(self.benchmark, num_tasks=self.tasks, seed=self.seed,
                                data_root=self.data_root, class_order_seed=self.class_order_seed,
                                angles=self.angles, domains=self.domains,
                                max_per_class=self.max_per_class)
        name = bench.template if self.template is None else self.template
        template = template_for(bench, name)
        bench = fit_benchmark(bench, template.input_shape)
        if bench.template != name:  # the stream records the template it runs on
            bench = dataclasses.replace(bench, template=name)
        train = default_config(name, epochs=self.epochs, lr=self.lr,
                               batch_size=self.batch_size, shared_lr_scale=self.shared_lr_scale,
                               seed=self.seed)
        return Built(bench, template, train, device)

    def learner(self, built: Built, cache: IndependentCache, *, quiet: bool = True,
                hooks: tuple[Hook, ...] = ()) -> Learner:
        from l2bg.learn.learner import Learner

        return Learner(built.bench.tasks, built.template, built.train,
                       benchmark=built.bench.name, seed=self.seed, device=built.device,
                       cache=cache, rsa_samples=self.rsa_samples, quiet=quiet, hooks=hooks,
                       grow_mode=self.grow_mode, adapter_rank=self.adapter_rank,
                       task_bn=self.task_bn)


def _int(name: str, value: Any, low: int, high: int | None) -> None:
    """Parameter ``name`` is None or an integer in [low, high]."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamError(f"{{{name}}} must be an integer, got {value!r}", name)
    if value < low or (high is not None and value > high):
        hi = f" and <= {high}" if high is not None else ""
        raise ParamError(f"{{{name}}} must be >= {low}{hi}, got {value}", name)


def _real(name: str, value: Any, *, positive: bool) -> None:
    """Parameter ``name`` is None or a finite number, > 0 (``positive``) or >= 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParamError(f"{{{name}}} must be a finite number, got {value!r}", name)
    if (value <= 0) if positive else (value < 0):
        raise ParamError(f"{{{name}}} must be {'> 0' if positive else '>= 0'}, got {value}",
                         name)
