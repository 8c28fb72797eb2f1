"""Which parts of a grow sequence π = [(t, b_t, δ_t)] a search varies, as Optuna parameters.

Spaces: ``shared-delta`` (one δ for every task, the paper's), ``per-task-delta`` (δ_t per task),
``bind`` (b_t as a categorical over earlier tasks, plus δ_t), ``order`` (the task order as random
keys, plus one δ). δ dimensions exist only for strategies that take δ (``takes_delta``); the
low-budget restrictions of the paper (a fixed set of allowed bind targets, a curated δ set) apply
to every space. Any space can also search the strategy's options as categoricals (``choices``:
the grow rule, bind rule, similarity measure or granularity of l2bg), one per trial, and the
grow mode (``grow_modes``: copy or adapt, one per trial, given to every grow step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from l2bg.base.errors import L2BGError, ParamError
from l2bg.conflict.scores import check_delta

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from l2bg.learn.step import GrowStep

__all__ = ["DELTA_STEP", "SPACES", "SearchSpace"]

SPACES = ("shared-delta", "per-task-delta", "bind", "order")
DELTA_STEP = 0.05
#: the value of a searched option under which δ = 0 / 1 is exactly the strategy shared / full
PLAIN = {"granularity": "layer", "grow_mode": "copy"}


@dataclass(frozen=True)
class SearchSpace:
    """Which parts of a grow sequence are searched, over the tasks ``tasks`` (benchmark order).

    Parameter names (stable, so a study can be resumed and inspected in optuna-dashboard):
    ``delta`` (shared-delta, order), ``delta_<task>`` (per-task-delta, bind), ``bind_<task>``
    (bind: a categorical over the earlier tasks that are allowed targets; omitted when only one
    is possible), ``key_<task>`` (order: random keys in [0, 1], the order is their argsort),
    one categorical per entry of ``choices`` (``grow_rule``, ``bind_rule``, ``similarity``,
    ``granularity``: the strategy options of the trial, :meth:`strategy_options`), and
    ``grow_mode`` (with ``grow_modes``: the grow mode of every step of the trial).
    """

    mode: str
    tasks: tuple[str, ...]
    bind_targets: tuple[str, ...] | None = None
    delta_set: tuple[float, ...] | None = None
    takes_delta: bool = True
    choices: tuple[tuple[str, tuple[str, ...]], ...] = ()
    grow_modes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in SPACES:
            raise L2BGError(f"unknown search space {self.mode!r}; use one of {', '.join(SPACES)}")
        if len(self.tasks) < 2:
            raise ParamError(f"a grow-sequence search needs at least 2 tasks, got "
                             f"{len(self.tasks)}; raise {{tasks}}", "tasks")
        if self.bind_targets is not None:
            unknown = [b for b in self.bind_targets if b not in self.tasks]
            if unknown or not self.bind_targets:
                raise ParamError(f"{{bind_targets}} {list(self.bind_targets)} must name tasks of "
                                 f"the benchmark: {', '.join(self.tasks)}", "bind_targets")
        if self.delta_set is not None:
            if not self.delta_set:
                raise ParamError("{delta_set} is empty; give δ values in [0, 1]", "delta_set")
            for d in self.delta_set:  # the one rule for a grow coefficient
                check_delta(d, "delta_set")
            object.__setattr__(self, "delta_set", tuple(sorted({float(d)
                                                                for d in self.delta_set})))
        if self.grow_modes is not None:
            from l2bg.learn.experiment import GROW_MODES

            if not self.grow_modes or not set(self.grow_modes) <= set(GROW_MODES):
                raise ParamError(f"searched grow modes {list(self.grow_modes)} must be some of "
                                 f"{', '.join(GROW_MODES)}", "search_grow_mode")
        for name, values in self.choices:
            if not values or len(set(values)) != len(values):
                raise L2BGError(f"searched option {name} needs distinct choices, got "
                                f"{list(values)}")
        if not self.distributions():
            raise ParamError(f"search space {self.mode!r} has nothing to search for a strategy "
                             "that takes no grow coefficient; use {space} bind or order", "space")

    # ------------------------------------------------------------------ parameters
    def _delta_names(self) -> list[str]:
        if not self.takes_delta:
            return []
        if self.mode in ("shared-delta", "order"):
            return ["delta"]
        return [f"delta_{t}" for t in self.tasks[1:]]

    def bind_choices(self, index: int) -> list[str]:
        """Allowed bind targets of the task at benchmark position ``index`` (bind mode): the
        earlier tasks, restricted to ``bind_targets`` (all earlier tasks if none is allowed)."""
        earlier = list(self.tasks[:index])
        if self.bind_targets is None:
            return earlier
        allowed = [t for t in earlier if t in self.bind_targets]
        return allowed or earlier

    def distributions(self) -> dict[str, Any]:
        """Optuna distribution of every parameter, by name."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        delta = (CategoricalDistribution(list(self.delta_set)) if self.delta_set is not None
                 else FloatDistribution(0.0, 1.0, step=DELTA_STEP))
        out: dict[str, Any] = {}
        if self.mode == "order":
            for t in self.tasks:
                out[f"key_{t}"] = FloatDistribution(0.0, 1.0)
        if self.mode == "bind":
            for i, t in enumerate(self.tasks[1:], start=1):
                choices = self.bind_choices(i)
                if len(choices) > 1:
                    out[f"bind_{t}"] = CategoricalDistribution(choices)
        for name in self._delta_names():
            out[name] = delta
        for name, values in self.choices:
            out[name] = CategoricalDistribution(list(values))
        if self.grow_modes is not None:
            out["grow_mode"] = CategoricalDistribution(list(self.grow_modes))
        return out

    def strategy_options(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The strategy options a trial's parameters choose (empty without ``choices``)."""
        return {name: params[name] for name, _ in self.choices if name in params}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Ask ``trial`` for every parameter (a static space: the same names every trial)."""
        params: dict[str, Any] = {}
        for name, dist in self.distributions().items():
            if hasattr(dist, "choices"):
                params[name] = trial.suggest_categorical(name, dist.choices)
            else:
                params[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step)
        return params

    def decode(self, params: Mapping[str, Any]) -> tuple[list[int], list[GrowStep]]:
        """Task order (benchmark indices) and one GrowStep per task after the first."""
        from l2bg.learn.step import GrowStep

        T = len(self.tasks)
        if self.mode == "order":
            order = sorted(range(T), key=lambda j: (float(params[f"key_{self.tasks[j]}"]), j))
        else:
            order = list(range(T))
        steps = []
        for pos in range(1, T):
            j = order[pos]
            name = self.tasks[j]
            raw = params.get("delta", params.get(f"delta_{name}"))
            delta = None if raw is None else min(1.0, max(0.0, round(float(raw), 10)))
            learned = [self.tasks[k] for k in order[:pos]]
            bind_to = None
            if self.mode == "bind":
                choices = self.bind_choices(j)
                bind_to = params.get(f"bind_{name}", choices[0])
            candidates = None
            if self.bind_targets is not None and bind_to is None:
                candidates = [t for t in learned if t in self.bind_targets] or None
            steps.append(GrowStep(delta=delta, bind_to=bind_to, candidates=candidates,
                                  mode=params.get("grow_mode")))
        return order, steps

    def baseline_params(self, grow_all: bool) -> tuple[dict[str, Any], str]:
        """Parameters of the no-growth (δ = 0) or grow-all (δ = 1) end of the space, and a
        label: ``shared``/``full`` when they are exactly those strategies (bind mode, binding
        to the previous task; ``full`` grows whole layers by copy), else ``delta=0``/``delta=1``.
        A searched granularity or grow mode takes ``layer``/``copy`` when it is a choice."""
        dists = self.distributions()
        params: dict[str, Any] = {}
        exact = self.mode == "bind"
        chosen = dict(self.choices)
        if self.grow_modes is not None:
            chosen["grow_mode"] = self.grow_modes
        for name, dist in dists.items():
            if name in chosen:  # δ = 0 / 1 grows the same for every grow rule
                plain = PLAIN.get(name)  # the strategies shared/full grow whole layers by copy
                params[name] = plain if plain in chosen[name] else chosen[name][0]
                # nothing grows at δ = 0, so there it is `shared` whatever the choice
                exact = exact and (not grow_all or plain is None or params[name] == plain)
            elif name.startswith("key_"):
                params[name] = self.tasks.index(name[4:]) / (len(self.tasks) - 1)
            elif name.startswith("bind_"):
                task = name[5:]
                prev = self.tasks[self.tasks.index(task) - 1]
                exact = exact and prev in dist.choices
                params[name] = prev if prev in dist.choices else dist.choices[-1]
            elif hasattr(dist, "choices"):
                params[name] = max(dist.choices) if grow_all else min(dist.choices)
                exact = exact and params[name] == (1.0 if grow_all else 0.0)
            else:
                params[name] = 1.0 if grow_all else 0.0
        if self.mode == "bind":
            for i, t in enumerate(self.tasks[1:], start=1):
                if f"bind_{t}" not in dists:
                    exact = exact and self.bind_choices(i) == [self.tasks[i - 1]]
        if exact:
            return params, "full" if grow_all else "shared"
        return params, "delta=1" if grow_all else "delta=0"

    def diagonal_params(self, delta: float) -> dict[str, Any]:
        """The same grow coefficient for every task (a point of the paper's shared-δ space),
        snapped to the δ grid or set; bind targets and order keys are left to the sampler."""
        dists = self.distributions()
        out: dict[str, Any] = {}
        for name in self._delta_names():
            dist = dists[name]
            if hasattr(dist, "choices"):
                out[name] = min(dist.choices, key=lambda c: (abs(c - delta), -c))
            else:
                out[name] = round(round(delta / DELTA_STEP) * DELTA_STEP, 10)
        return out

    def signature(self) -> dict[str, Any]:
        return {"space": self.mode, "tasks": list(self.tasks),
                "bind_targets": None if self.bind_targets is None else list(self.bind_targets),
                "delta_set": None if self.delta_set is None else list(self.delta_set),
                "choices": {name: list(values) for name, values in self.choices},
                **({} if self.grow_modes is None else {"grow_modes": list(self.grow_modes)}),
                "params": sorted(self.distributions())}
