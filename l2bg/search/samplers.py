"""Optuna samplers of ``l2bg search --sampler`` and the start-up design, sized to the budget."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from l2bg.base.errors import L2BGError

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = ["SAMPLERS", "default_startup_trials", "initial_design", "make_sampler",
           "nsga2_population"]

SAMPLERS = ("gp", "tpe", "nsga2", "nsga2-paper", "random")


def default_startup_trials(trials: int) -> int:
    """Random trials before a model-based sampler (gp, tpe) starts modelling: a quarter of the
    budget, between 3 and 10 (Optuna's fixed 10 would make a short study random search)."""
    return min(10, max(3, trials // 4))


def initial_design(sampler: str, initial: str | None, trials: int,
                   startup_trials: int | None = None) -> list[float]:
    """Grow coefficients of the diagonal start-up trials (one δ for every task, enqueued when a
    study is created). ``initial=None`` means diagonal for the model-based samplers (gp, tpe)
    and none for the others (nsga2-paper stays as the paper ran it). The diagonal holds all but
    one of the start-up trials (the last stays random, so the model sees the tasks' δ vary
    independently), from δ = 1 (grow everything) down in equal steps, never δ = 0."""
    if (initial or ("diagonal" if sampler in ("gp", "tpe") else "random")) != "diagonal":
        return []
    startup = default_startup_trials(trials) if startup_trials is None else startup_trials
    k = max(1, min(startup, trials) - 1)
    return [1.0 - j / (k + 1) for j in range(k)]


def nsga2_population(trials: int) -> int:
    """NSGA-II population sized to the budget: about four generations, between 4 and 50."""
    return min(50, max(4, trials // 4))


def make_sampler(name: str, seed: int | None, trials: int,
                 startup_trials: int | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of ``l2bg search --sampler NAME`` for a budget of ``trials``."""
    import optuna

    startup = default_startup_trials(trials) if startup_trials is None else startup_trials
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup,
                                              multivariate=True, constant_liar=True)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed,
                                                 population_size=nsga2_population(trials))
        if name == "nsga2-paper":
            return optuna.samplers.NSGAIISampler(seed=seed)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
    raise L2BGError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}")
