"""Search over grow sequences for the Pareto front of gain (or accuracy) and parameters, on Optuna.

One concept per module:

* :mod:`~l2bg.search.space`: which parts of a grow sequence are searched (Optuna parameters);
* :mod:`~l2bg.search.memo`: the decision memo, a plugin of ``Learner.run``;
* :mod:`~l2bg.search.samplers`: the samplers and the start-up design;
* :mod:`~l2bg.search.storage`: journal file or RDB storages;
* :mod:`~l2bg.search.journal`: the journal file backend that sets a torn tail aside;
* :mod:`~l2bg.search.heartbeat`: heartbeats or leases, retry of dead workers' trials;
* :mod:`~l2bg.search.config`: the search's configuration (:class:`SearchConfig`);
* :mod:`~l2bg.search.study`: the study and its workers (:func:`run_search`);
* :mod:`~l2bg.search.report`: pareto.json, trials.csv and the plots;
* :mod:`~l2bg.search.format`: how values are written in reports and on the console.

``l2bg search`` itself is a command of the CLI (:mod:`l2bg.cli.search`).

Names are loaded on first use, so ``import l2bg.search`` imports neither torch nor optuna.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SPACES": "space", "DELTA_STEP": "space", "SearchSpace": "space",
    "Memo": "memo", "Outcome": "memo",
    "SAMPLERS": "samplers", "make_sampler": "samplers", "initial_design": "samplers",
    "nsga2_population": "samplers",
    "open_storage": "storage", "redact_url": "storage",
    "OBJECTIVES": "report", "SearchConfig": "config", "run_search": "study",
    "REFERENCE_POINT": "report", "hypervolume_2d": "report", "pareto_front": "report",
    "report_dir": "report", "write_report": "report",
    # deprecated (0.2): the command moved to l2bg.cli.search; importing l2bg.search.cli warns
    "add_search_parser": "cli",
}

__all__ = sorted(k for k, v in _EXPORTS.items() if v != "cli")


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'l2bg.search' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"l2bg.search.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
