"""``l2bg search``: its command-line options (the data and training options are shared with
``l2bg run``, :mod:`l2bg.cli.options`); ``python -m l2bg.search`` runs it on its own."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from l2bg.base.errors import L2BGError
from l2bg.cli.options import (
    HelpFormatter,
    add_experiment_options,
    add_strategy_option,
    floats,
    names,
)

__all__ = ["add_search_parser", "cmd_search"]


def add_search_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``l2bg search`` to the sub-parsers of the ``l2bg`` command line."""
    s = sub.add_parser(
        "search", formatter_class=HelpFormatter,
        help="search grow sequences for the Pareto front of gain and parameters",
        description="Search grow sequences [(t, b_t, delta_t)] with Optuna for the Pareto front "
                    "of gain (or accuracy) and parameter count. Re-running the same command "
                    "resumes the study; more workers or machines share it through --storage "
                    "and --cache-dir. `l2bg search --report DIR` rewrites the outputs.")
    from l2bg.search.report import OBJECTIVES  # after add_parser: `l2bg --help` stays light
    from l2bg.search.samplers import SAMPLERS
    from l2bg.search.space import SPACES

    add_experiment_options(s, benchmark_required=False)
    add_strategy_option(s, default="l2bg")
    s.add_argument("--trials", type=int, default=None,
                   help="trials to complete in total, over every worker and rerun; a trial is "
                        "one grow sequence the sampler proposes, run over every task (a "
                        "sequence that repeats decisions already evaluated costs only a memo "
                        "lookup); the baselines are not counted (no default: required unless "
                        "--report)")
    s.add_argument("--space", choices=SPACES, default="shared-delta",
                   help="shared-delta: one delta for every task (steps of 0.05, the paper's); "
                        "per-task-delta: one delta per task; bind: bind target of each task "
                        "searched (categorical over earlier tasks) plus its delta; order: task "
                        "order (random keys) plus one delta")
    s.add_argument("--objective", choices=OBJECTIVES, default="gain",
                   help="first objective, maximised: gain Δ or average validation accuracy; "
                        "the second is the parameter count, minimised")
    s.add_argument("--sampler", choices=SAMPLERS, default="gp",
                   help="gp: Gaussian process (EHVI); tpe: multivariate TPE; nsga2: NSGA-II "
                        "with a population sized to --trials; nsga2-paper: Optuna's NSGA-II "
                        "defaults (population 50), as the paper ran it; random")
    s.add_argument("--startup-trials", type=int, default=None,
                   help="random trials before gp/tpe model (default trials/4, within 3..10)")
    s.add_argument("--sampler-seed", type=int, default=None,
                   help="seed of the sampler (default --seed); the k-th worker to join the "
                        "study adds 1000*k")
    s.add_argument("--max-params", type=int, default=None,
                   help="parameter budget: trials above it are infeasible (Trial.set_constraint; "
                        "default: no budget)")
    s.add_argument("--bind-targets", type=names, default=None,
                   help="comma-separated tasks (names or indices) allowed as bind targets "
                        "(default: every earlier task)")
    s.add_argument("--delta-set", type=floats, default=None,
                   help="comma-separated curated grow coefficients to choose from (default: 0 to 1 "
                        "in steps of 0.05)")
    s.add_argument("--search-rules", action="store_true",
                   help="search the grow rule and the bind rule too (categoricals over every "
                        "registered rule, one per trial)")
    s.add_argument("--search-similarity", action="store_true",
                   help="search the similarity measure too (a categorical over every "
                        "registered measure)")
    s.add_argument("--search-granularity", type=names, default=None,
                   metavar="layer,group:G,...",
                   help="search the conflict model's granularity too, a categorical over these "
                        "values (e.g. layer,group:4,group:8; default: --granularity for every "
                        "trial)")
    s.add_argument("--search-grow-mode", action="store_true",
                   help="search the grow mode too (copy or adapt, one per trial)")
    s.add_argument("--enqueue-baselines", action="store_true",
                   help="evaluate the no-growth (delta 0) and grow-all (delta 1) sequences "
                        "first, as trials (counted in --trials)")
    s.add_argument("--initial", choices=("random", "diagonal"), default=None,
                   help="start-up design: diagonal enqueues trials with one delta for every "
                        "task (1 and evenly below, the paper's space) before the model takes "
                        "over; default diagonal for gp/tpe, random for the others")
    s.add_argument("--no-baselines", action="store_true",
                   help="skip the baselines evaluated by default after the trials (not counted "
                        "in --trials): independent, one net per task (gain 0, from the cache), "
                        "and shared, every task bound to the previous one with nothing grown; "
                        "printed at the end and marked in pareto.png")
    s.add_argument("--storage", default=None,
                   help="Optuna storage URL: postgresql://, mysql://, sqlite:///FILE or "
                        "journal:FILE (default: journal:OUT/study.journal)")
    s.add_argument("--study-name", default=None, help="default: derived from the options")
    s.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    s.add_argument("--threads", type=int, default=None,
                   help="torch threads per worker (default: cores / workers)")
    s.add_argument("--lease-seconds", type=float, default=60.0,
                   help="a RUNNING trial whose worker has not refreshed it for this long is "
                        "failed and retried (default 60)")
    s.add_argument("--out", default=None,
                   help="output directory (default runs/search-<study name>)")
    s.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="only rewrite the outputs of the search in DIR from its storage (default: "
                        "run the search)")
    s.add_argument("--quiet", action="store_true", help="no per-trial lines and no summary")
    s.set_defaults(func=cmd_search)
    return s


def cmd_search(args: argparse.Namespace) -> int:
    """``l2bg search``."""
    from l2bg.cli.flags import message
    from l2bg.learn.settings import Settings
    from l2bg.search.report import report_dir
    from l2bg.search.study import SearchConfig, run_search

    if args.report is not None:
        if args.benchmark is not None or args.trials is not None:
            raise L2BGError("--report DIR only rewrites outputs; drop --benchmark/--trials")
        report_dir(args.report, storage=args.storage, study_name=args.study_name,
                   quiet=args.quiet)
        _explain_hint(args.report, args.quiet)
        return 0
    if args.benchmark is None:
        raise L2BGError("l2bg search needs --benchmark B and --trials N (or --report DIR)")
    if args.trials is None:
        raise L2BGError("l2bg search needs --trials N, the number of trials to complete")
    cfg = SearchConfig(
        settings=Settings.from_args(args), trials=args.trials, strategy=args.strategy,
        space=args.space, objective=args.objective, sampler=args.sampler,
        sampler_seed=args.sampler_seed, startup_trials=args.startup_trials,
        max_params=args.max_params, bind_targets=args.bind_targets, delta_set=args.delta_set,
        enqueue_baselines=args.enqueue_baselines, initial=args.initial,
        baselines=not args.no_baselines, storage=args.storage, study_name=args.study_name,
        workers=args.workers, threads=args.threads,
        out=args.out, lease_s=args.lease_seconds,
        quiet=args.quiet, search_rules=args.search_rules,
        search_similarity=args.search_similarity,
        search_granularity=args.search_granularity, search_grow_mode=args.search_grow_mode)
    run_search(cfg, describe=message)
    _explain_hint(args.out, args.quiet)
    return 0


def _explain_hint(out: Any, quiet: bool) -> None:
    """The command that explains one trial (the core's summary names the record files only)."""
    if not quiet:
        where = out if out is not None else "OUT (the directory above)"
        print(f"explain trial N: l2bg explain {where} --trial N")
