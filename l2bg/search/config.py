"""The search's configuration: everything ``l2bg search`` takes, checked before any work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from l2bg.base.errors import ParamError
from l2bg.learn.runconfig import RunConfig
from l2bg.learn.settings import Settings
from l2bg.search.report import OBJECTIVES
from l2bg.search.samplers import SAMPLERS
from l2bg.search.space import SPACES

__all__ = ["SearchConfig"]


@dataclass
class SearchConfig:
    """Everything ``l2bg search`` takes (see ``l2bg search --help`` for each field): the
    experiment's :class:`~l2bg.learn.settings.Settings` and the search's own options."""

    settings: Settings
    trials: int
    strategy: str = "l2bg"
    space: str = "shared-delta"
    objective: str = "gain"
    sampler: str = "gp"
    sampler_seed: int | None = None
    startup_trials: int | None = None
    max_params: int | None = None
    bind_targets: list[str] | None = None
    delta_set: list[float] | None = None
    enqueue_baselines: bool = False
    initial: str | None = None
    baselines: bool = True
    storage: str | None = None
    study_name: str | None = None
    workers: int = 1
    threads: int | None = None
    out: str | None = None
    lease_s: float = 60.0
    max_retry: int = 3
    quiet: bool = False
    search_rules: bool = False
    search_similarity: bool = False
    search_granularity: list[str] | None = None
    search_grow_mode: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        d = dict(d)
        return cls(settings=Settings(**d.pop("settings")), **d)

    def check(self) -> None:
        """Every option, before any work: the experiment's settings and strategy through the one
        run configuration (:class:`l2bg.learn.runconfig.RunConfig`, δ left to the search), then
        the search's own (one line per fault, naming the parameter)."""
        strategy = RunConfig(self.settings, self.strategy).check(searched=True)
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise ParamError(f"{{trials}} must be a positive number of trials to complete, got "
                             f"{self.trials}", "trials")
        for name, choices in (("space", SPACES), ("sampler", SAMPLERS),
                              ("objective", OBJECTIVES)):
            if getattr(self, name) not in choices:
                raise ParamError(f"{{{name}}} {getattr(self, name)!r} is not one of "
                                 f"{', '.join(choices)}", name)
        searched = [n for n, on in (("grow_rule", self.search_rules),
                                    ("bind_rule", self.search_rules),
                                    ("similarity", self.search_similarity)) if on]
        if searched and not set(searched) <= set(strategy.option_names):
            raise ParamError(f"{{search_rules}}/{{search_similarity}} search the conflict model "
                             f"of strategies such as l2bg, not {self.strategy}", "search_rules",
                             "search_similarity")
        fixed = [n for n in searched if self.settings.rules()[n] is not None]
        if fixed:
            flag = "search_rules" if fixed[0] != "similarity" else "search_similarity"
            raise ParamError(f"{{{fixed[0]}}} fixes what {{{flag}}} searches; give one of the two",
                             fixed[0], flag)
        if self.search_granularity is not None:
            from l2bg.conflict.units import check_granularity

            if not self.search_granularity:
                raise ParamError("{search_granularity} is empty; give layer,group:G,...",
                                 "search_granularity")
            for g in self.search_granularity:
                check_granularity(g, "search_granularity")
            if "granularity" not in strategy.option_names:
                raise ParamError(f"{{search_granularity}} searches the conflict model of "
                                 f"strategies such as l2bg, not {self.strategy}",
                                 "search_granularity")
            if self.settings.granularity != "layer":
                raise ParamError("{granularity} fixes what {search_granularity} searches; give "
                                 "one of the two", "granularity", "search_granularity")
        if self.search_grow_mode and self.settings.grow_mode != "copy":
            raise ParamError("{grow_mode} fixes what {search_grow_mode} searches; give one of "
                             "the two", "grow_mode", "search_grow_mode")
        if self.workers < 1:
            raise ParamError(f"{{workers}} must be >= 1, got {self.workers}", "workers")
        if self.threads is not None and self.threads < 1:
            raise ParamError(f"{{threads}} must be >= 1, got {self.threads}", "threads")
        if self.settings.tasks is not None and self.settings.tasks < 2:
            raise ParamError(f"a search needs {{tasks}} >= 2, got {self.settings.tasks}", "tasks")
        if self.max_params is not None and self.max_params < 1:
            raise ParamError(f"{{max_params}} must be a positive parameter count, got "
                             f"{self.max_params}", "max_params")
        if self.startup_trials is not None and self.startup_trials < 0:
            raise ParamError(f"{{startup_trials}} must be >= 0, got {self.startup_trials}",
                             "startup_trials")
        if not self.lease_s > 0 or self.lease_s == float("inf"):
            raise ParamError(f"{{lease_s}} must be positive and finite, got {self.lease_s}",
                             "lease_s")
        if self.initial not in (None, "random", "diagonal"):
            raise ParamError(f"{{initial}} {self.initial!r} is not one of random, diagonal",
                             "initial")
        if self.study_name is not None and not self.study_name.strip():
            raise ParamError("{study_name} must not be empty", "study_name")
        if self.storage is not None and not self.storage.strip():
            raise ParamError("{storage} is empty; give postgresql://…, mysql://…, "
                             "sqlite:///FILE or journal:FILE, or leave {storage} out for "
                             "journal:OUT/study.journal", "storage")
        if self.out is not None and not self.out.strip():
            raise ParamError("{out} is empty; give a directory, or leave {out} out for "
                             "runs/search-<study name>", "out")
