"""Strategies: how a task binds and what grows, as small named objects in one registry.

A strategy turns a :class:`l2bg.learn.step.StepContext` into a :class:`l2bg.learn.step.Decision`.
The built-ins are the paper's baselines and method (docs/design.md, "Strategies"):

* ``independent``: a fresh task-net per task, its own independent net (the baseline φ);
* ``shared``: bind to the previous task, grow nothing;
* ``full``: bind to the previous task, grow every expandable slot by copy;
* ``random``: the paper's seeded control, drawing from the run's one ``Random(seed)`` in task
  order: the bind target among the learned tasks, a number of slots k in 0..L, then k slots;
* ``l2bg``: bind to the candidate with the least task score ‖C‖₂ and grow the nucleus for δ.

A user adds a strategy with :func:`register` (in code) or through the entry-point group
``l2bg.strategies`` (a package's ``pyproject.toml``: ``[project.entry-points."l2bg.strategies"]
name = "module:object"``, the object a :class:`Strategy` or a callable returning one); it then runs
through ``Learner.run``, ``l2bg run --strategy NAME`` and ``l2bg search --strategy NAME``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from l2bg.base.errors import L2BGError, ParamError
from l2bg.base.registry import Registry, load_entry_points
from l2bg.conflict.rules import BIND_RULES, DEFAULT_BIND_RULE, DEFAULT_GROW_RULE, GROW_RULES
from l2bg.conflict.similarity import DEFAULT_SIMILARITY, MEASURES
from l2bg.conflict.units import (
    DEFAULT_GRANULARITY,
    check_granularity,
    parse_granularity,
    split_units,
)
from l2bg.learn.step import CandidateScore, Decision, GrowStep, StepContext

if TYPE_CHECKING:  # pragma: no cover
    from l2bg.learn.training import TrainConfig
    from l2bg.net.templates import Template

__all__ = [
    "ENTRY_POINT_GROUP",
    "Full",
    "Independent",
    "L2BG",
    "RandomGrowth",
    "Shared",
    "Strategy",
    "get",
    "names",
    "register",
    "unregister",
]

ENTRY_POINT_GROUP = "l2bg.strategies"


class Strategy:
    """Base of every strategy. Subclasses set ``name`` (and ``help``), ``takes_delta`` when the
    grow coefficient δ means something to them (so ``l2bg search`` searches δ for them), and
    implement :meth:`decide`."""

    name: str = ""
    help: str = ""
    takes_delta: bool = False
    #: constructor arguments that configure the strategy (``configured``, ``options``)
    option_names: tuple[str, ...] = ()
    #: G of the conflict model's granularity ``group:G`` (None: whole slots); see
    #: :mod:`l2bg.conflict.units`
    num_groups: int | None = None

    def options(self) -> dict[str, Any]:
        """The options this strategy is configured with (``results.json``:
        ``strategy_options``)."""
        return {k: getattr(self, k) for k in self.option_names}

    def configured(self, **options: Any) -> Strategy:
        """This strategy with ``options`` set (a None value leaves that option as it is): the
        same object when nothing changes, else a configured copy."""
        given = {k: v for k, v in options.items() if v is not None}
        bad = sorted(set(given) - set(self.option_names))
        if bad and set(bad) <= {"grow_rule", "bind_rule", "similarity", "granularity"}:
            named = ", ".join(f"{{{k}}}" for k in bad)
            raise ParamError(f"{named} {'applies' if len(bad) == 1 else 'apply'} to strategies "
                             f"that use the conflict model (such as l2bg), not {self.name}",
                             *bad)
        if bad:
            takes = ", ".join(self.option_names) or "none"
            raise L2BGError(f"strategy {self.name} takes no option {', '.join(bad)}; its "
                            f"options: {takes}")
        current = self.options()
        if all(getattr(self, k) == v for k, v in given.items()):
            return self
        other = copy.copy(self)
        other.__init__(**{**current, **given})  # type: ignore[misc]
        return other

    def rng_seed(self, run_seed: int) -> int:
        """Seed of the run's one ``random.Random`` (drawn in task order): the run seed."""
        return run_seed

    def check(self, steps: Sequence[GrowStep], template: Template, config: TrainConfig) -> None:
        """Reject a grow sequence this strategy cannot run, before any training."""

    def decide(self, ctx: StepContext) -> Decision:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<strategy {self.name}>"


def _forced_or(ctx: StepContext, slots: Sequence[int]) -> tuple[tuple[int, ...], str]:
    forced = ctx.forced_slots()
    return (forced, "forced slots") if forced is not None else (tuple(slots), "")


class Independent(Strategy):
    name = "independent"
    help = "a fresh task-net per task (the baseline φ)"

    def decide(self, ctx: StepContext) -> Decision:
        return Decision(ctx.task, None, reason="independent: its task-net is its independent net")


class _BindPrevious(Strategy):
    """Bind to the previous task (or the forced target) and grow :meth:`grown` slots."""

    def grown(self, ctx: StepContext) -> Sequence[int]:
        raise NotImplementedError

    def decide(self, ctx: StepContext) -> Decision:
        slots, why = _forced_or(ctx, self.grown(ctx))
        b = ctx.spec.bind_to or ctx.previous
        return Decision(ctx.task, b, slots, reason=why or _bound_why(ctx, "previous task"))


class Shared(_BindPrevious):
    name = "shared"
    help = "bind to the previous task, grow nothing"

    def check(self, steps: Sequence[GrowStep], template: Template, config: TrainConfig) -> None:
        if (steps and config.shared_lr_scale == 0 and not template.per_task_heads
                and any(s.slots is None for s in steps)):
            raise ParamError("strategy shared with {shared_lr_scale} 0 and no per-task head "
                             "leaves nothing to train; use a positive {shared_lr_scale}",
                             "shared_lr_scale")

    def grown(self, ctx: StepContext) -> Sequence[int]:
        return ()


class Full(_BindPrevious):
    name = "full"
    help = "bind to the previous task and grow every slot by copy"

    def grown(self, ctx: StepContext) -> Sequence[int]:
        return ctx.expandable


class RandomGrowth(Strategy):
    """The paper's seeded control. ``draw_seed`` seeds its draws apart from the run seed, so
    several random sequences can be drawn on the same data and training (None: the run seed)."""

    name = "random"
    help = "random bind target and slots (the paper's seeded control)"

    option_names = ("draw_seed",)

    def __init__(self, draw_seed: int | None = None) -> None:
        if draw_seed is not None and (isinstance(draw_seed, bool)
                                      or not isinstance(draw_seed, int)):
            raise L2BGError(f"draw_seed must be an integer or None, got {draw_seed!r}")
        self.draw_seed = draw_seed

    def rng_seed(self, run_seed: int) -> int:
        return run_seed if self.draw_seed is None else self.draw_seed

    def decide(self, ctx: StepContext) -> Decision:
        b = ctx.spec.bind_to or ctx.rng.choice(ctx.learned)
        forced = ctx.forced_slots()
        if forced is not None:
            return Decision(ctx.task, b, forced, reason="forced slots")
        k = ctx.rng.randint(0, len(ctx.expandable))
        slots = tuple(sorted(ctx.rng.sample(ctx.expandable, k)))
        return Decision(ctx.task, b, slots, reason=_bound_why(ctx, "random draw"))


def _bound_why(ctx: StepContext, default: str) -> str:
    return "forced bind target" if ctx.spec.bind_to is not None else default


def bind_candidates(spec: GrowStep, learned: Sequence[str]) -> list[str]:
    """The tasks a step scores: its ``candidates`` (default every learned task), plus a forced
    ``bind_to`` so its scores are recorded too."""
    candidates = list(spec.candidates) if spec.candidates else list(learned)
    unknown = [c for c in candidates if c not in learned]
    if unknown:
        raise L2BGError(f"bind candidates {unknown} are not learned tasks; "
                        f"learned: {list(learned)}")
    if spec.bind_to is not None and spec.bind_to not in candidates:
        candidates.append(spec.bind_to)
    return candidates


class L2BG(Strategy):
    """Learn to Bind and Grow: score every bind candidate with a similarity measure (conflict
    C = 1 − similarity), bind by a bind rule and grow by a grow rule for δ. The defaults are the
    paper's text: RSA-Spearman, bind to the least ‖C‖₂, grow the nucleus of C descending
    (:mod:`l2bg.conflict.rules`, :mod:`l2bg.conflict.similarity`)."""

    name = "l2bg"
    help = "bind by least conflict and grow the nucleus for δ (rules and measure are options)"
    takes_delta = True
    option_names = ("grow_rule", "bind_rule", "similarity", "granularity")

    def __init__(self, grow_rule: str = DEFAULT_GROW_RULE, bind_rule: str = DEFAULT_BIND_RULE,
                 similarity: str = DEFAULT_SIMILARITY,
                 granularity: str = DEFAULT_GRANULARITY) -> None:
        self.grow_rule = GROW_RULES.get(grow_rule).name
        self.bind_rule = BIND_RULES.get(bind_rule).name
        self.similarity = MEASURES.get(similarity).name
        self.granularity = check_granularity(granularity)
        self.num_groups = parse_granularity(self.granularity)

    def options(self) -> dict[str, Any]:
        """The options; ``granularity`` only when it is not ``layer`` (so a default run records,
        and a study signs, what it always did)."""
        out = super().options()
        if out["granularity"] == DEFAULT_GRANULARITY:
            del out["granularity"]
        return out

    def check(self, steps: Sequence[GrowStep], template: Template, config: TrainConfig) -> None:
        for spec in steps:  # each δ was checked when its GrowStep was made
            if spec.slots is None and spec.delta is None:
                raise ParamError(f"strategy {self.name} needs a grow coefficient: pass {{delta}} "
                                 "D or {deltas} d2,...,dT", "delta", "deltas")

    def choose_bind(self, scores: Mapping[str, CandidateScore]) -> str:
        """The bind rule: the least key of ``bind_rule``, ties to the earliest candidate."""
        return BIND_RULES.get(self.bind_rule).choose({c: s.layers for c, s in scores.items()})

    def grow(self, layers: Sequence[float], delta: float) -> list[int]:
        """The grow rule: positions (into the expandable slots) that ``grow_rule`` grows for δ."""
        return GROW_RULES.get(self.grow_rule).grow(layers, delta)

    def decide(self, ctx: StepContext) -> Decision:
        spec = ctx.spec
        candidates = bind_candidates(spec, ctx.learned)
        scores, backend = ctx.scores(candidates, self.similarity)
        rules: dict[str, str | None] = {"bind": None, "grow": None,
                                        "similarity": self.similarity}
        if spec.bind_to is not None:
            b, why = spec.bind_to, "forced bind target"
        else:
            b = self.choose_bind({c: scores[c] for c in candidates})
            rules["bind"] = self.bind_rule
            why = f"bind rule {self.bind_rule}: {BIND_RULES.get(self.bind_rule).formula}"
        forced = ctx.forced_slots()
        if forced is not None:
            return Decision(ctx.task, b, forced, None, scores, f"{why}; forced slots", backend,
                            rules)
        picked = self.grow(scores[b].layers, spec.delta)
        rules["grow"] = self.grow_rule
        units = scores[b].units
        if units is None:
            slots, groups = tuple(ctx.expandable[p] for p in picked), {}
        else:  # one nucleus over the units of every expandable slot (slot, then group)
            slots, groups = split_units(units, picked)
        return Decision(ctx.task, b, slots, float(spec.delta), scores,
                        f"{why}; grow rule {self.grow_rule} for δ", backend, rules,
                        groups=groups, num_groups=self.num_groups if groups else None,
                        mode=ctx.mode)


# --------------------------------------------------------------------------------- registry

_REGISTRY: Registry[Strategy] = Registry("strategy", "strategy")
_ENTRY_POINTS_LOADED = False


def register(strategy: Strategy, *, replace: bool = False) -> Strategy:
    """Add ``strategy`` to the registry under ``strategy.name`` and return it (usable as a class
    decorator on a subclass with no constructor arguments)."""
    if isinstance(strategy, type) and issubclass(strategy, Strategy):
        register(strategy(), replace=replace)
        return strategy
    if not isinstance(strategy, Strategy):
        raise L2BGError(f"register() takes an l2bg.learn.strategies.Strategy, got "
                        f"{type(strategy).__name__}; subclass Strategy and implement decide()")
    return _REGISTRY.register(strategy, replace=replace)


def unregister(name: str) -> Strategy:
    """Remove the strategy registered as ``name`` (and return it)."""
    return _REGISTRY.unregister(name)


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if not _ENTRY_POINTS_LOADED:
        _ENTRY_POINTS_LOADED = True
        load_entry_points(_REGISTRY, ENTRY_POINT_GROUP, _from_entry_point)


def _from_entry_point(name: str, obj: Any) -> Strategy:
    """A strategy from an entry point's object: a Strategy, or a callable returning one."""
    strategy = obj if isinstance(obj, Strategy) else obj()
    if not isinstance(strategy, Strategy):
        raise L2BGError(f"it gives a {type(strategy).__name__}, not an "
                        "l2bg.learn.strategies.Strategy")
    return strategy


def names() -> list[str]:
    """Every registered strategy, built-ins first."""
    _load_entry_points()
    return _REGISTRY.names()


def get(name: str | Strategy) -> Strategy:
    """The strategy registered as ``name`` (a Strategy passes through)."""
    if isinstance(name, Strategy):
        return name
    if name not in _REGISTRY:
        _load_entry_points()
    return _REGISTRY.get(name)


for _builtin in (Independent(), Shared(), Full(), RandomGrowth(), L2BG()):
    register(_builtin)
del _builtin
