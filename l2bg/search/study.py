"""The study: search grow sequences π = [(t, b_t, δ_t)] for the Pareto front of gain Δ (or
accuracy) ↑ and parameters ↓ (paper §3, "Grow Sequences" and "Global Optimization").

:func:`run_search` creates (or resumes) an Optuna study in the storage, then runs workers (this
process, ``--workers`` processes, or other machines on the same storage) that ask for a trial,
decode its parameters into a grow sequence, evaluate it with ``Learner.run`` and the memo
plugin (:class:`l2bg.search.memo.Memo`, with every registered plugin), and tell the
values, until ``trials`` trials have completed in total. Trials that die are retried
(:mod:`l2bg.search.heartbeat`). Each completed trial's run record is written to
``OUT/trials/N/results.json`` (``l2bg explain OUT --trial N``); the outputs are written by
:mod:`l2bg.search.report`.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from l2bg.base.errors import L2BGError, ParamError, warn
from l2bg.base.fileio import refused, write_json
from l2bg.base.locks import FileLocks
from l2bg.base.outdir import claim_shared, release_shared
from l2bg.learn.settings import Built, resolve_cache_dir
from l2bg.search.attrs import TrialAttrs
from l2bg.search.config import SearchConfig
from l2bg.search.format import format_sequence
from l2bg.search.heartbeat import (
    Liveness,
    give_back,
    reap_stale_trials,
    register_worker,
    taken_over,
    trial_by_number,
)
from l2bg.search.memo import Memo, Outcome
from l2bg.search.report import (
    IDENTITY,
    META_FILE,
    OUTPUTS,
    SIGNATURE_ATTR,
    search_meta,
    summary_text,
    trial_record_path,
    write_report,
)
from l2bg.search.samplers import initial_design, make_sampler
from l2bg.search.space import SearchSpace
from l2bg.search.storage import open_storage, redact_url

if TYPE_CHECKING:  # pragma: no cover
    from l2bg.learn.learner import Learner
    from l2bg.learn.record import RunRecord
    from l2bg.learn.strategies import Strategy

__all__ = ["SearchConfig", "run_search"]

#: Testing hook: seconds every trial sleeps (while alive) before it runs.
DELAY_ENV = "L2BG_SEARCH_TRIAL_DELAY"


@dataclass
class _Setup:
    """What a worker needs: the built experiment, the space, where things go, and the learner
    with its memo plugin."""

    cfg: SearchConfig
    built: Built
    space: SearchSpace
    cache_dir: Path
    out: Path
    storage_url: str
    study_name: str
    learner: Learner | None = None
    memo: Memo | None = None
    strategy: Strategy | None = None
    locks: FileLocks = field(default_factory=FileLocks)

    def make_learner(self) -> Learner:
        """The learner of every trial: the registered plugins and, first, the memo."""
        from l2bg.learn.independent import IndependentCache
        from l2bg.learn.plugins import registered

        if self.learner is None:
            self.locks = FileLocks(self.cfg.lease_s)
            learner: Learner = self.cfg.settings.learner(
                self.built, IndependentCache(self.cache_dir, self.locks), hooks=registered())
            self.memo = Memo.attach(learner, memo_dir=self.cache_dir, locks=self.locks)
            self.strategy = self.cfg.settings.strategy(self.cfg.strategy)
            self.learner = learner
        return self.learner

    def evaluate(self, order: list[int] | None, steps: Any, strategy: Any) -> Outcome:
        """One grow sequence through ``Learner.run`` with the memo."""
        return self.memo.outcome(self.make_learner().run(strategy, steps, order=order))

    def signature(self) -> dict[str, Any]:
        self.make_learner()
        cfg = self.cfg
        sig = {"version": 2, "benchmark": self.built.bench.name, "objective": cfg.objective,
               "strategy": cfg.strategy, "epochs": self.built.train.epochs,
               "seed": cfg.settings.seed, "rsa_samples": cfg.settings.rsa_samples,
               "strategy_options": self.strategy.options(),
               "max_params": cfg.max_params, "context": self.memo.context,
               **self.space.signature()}
        return sig


def _resolve_task_names(names: list[str], tasks: tuple[str, ...], what: str) -> list[str]:
    out = []
    for n in names:
        n = str(n).strip()
        if n in tasks:
            out.append(n)
        elif n.isdigit() and int(n) < len(tasks):
            out.append(tasks[int(n)])
        else:
            raise ParamError(f"{{{what}}} {n!r} is not a task of the benchmark; use a name "
                             f"({', '.join(tasks)}) or an index 0..{len(tasks) - 1}", what)
    return list(dict.fromkeys(out))


def _setup(cfg: SearchConfig) -> _Setup:
    from l2bg.conflict.rules import BIND_RULES, GROW_RULES
    from l2bg.conflict.similarity import MEASURES
    from l2bg.learn import strategies

    cfg.check()
    built = cfg.settings.build()
    bench = built.bench
    names = tuple(t.name for t in bench.tasks)
    if len(names) < 2:
        raise L2BGError(f"a grow-sequence search needs at least 2 tasks; {bench.name} has "
                        f"{len(names)}")
    targets = (tuple(_resolve_task_names(cfg.bind_targets, names, "bind_targets"))
               if cfg.bind_targets else None)
    choices = []
    if cfg.search_rules:
        choices += [("grow_rule", tuple(GROW_RULES.names())),
                    ("bind_rule", tuple(BIND_RULES.names()))]
    if cfg.search_similarity:
        choices.append(("similarity", tuple(MEASURES.names())))
    if cfg.search_granularity:
        from l2bg.conflict.units import check_granularity

        choices.append(("granularity", tuple(dict.fromkeys(
            check_granularity(g, "search_granularity") for g in cfg.search_granularity))))
    space = SearchSpace(cfg.space, names, bind_targets=targets,
                        delta_set=tuple(cfg.delta_set) if cfg.delta_set else None,
                        takes_delta=strategies.get(cfg.strategy).takes_delta,
                        choices=tuple(choices),
                        grow_modes=("copy", "adapt") if cfg.search_grow_mode else None)
    T = len(names)
    strategy = "" if cfg.strategy == "l2bg" else f"{cfg.strategy}-"
    tags = [v for v in (cfg.settings.template, *cfg.settings.rules().values()) if v is not None]
    tags += [name for name, on in (("rules", cfg.search_rules),
                                   ("similarity", cfg.search_similarity),
                                   ("granularity", cfg.search_granularity),
                                   ("grow-mode", cfg.search_grow_mode)) if on]
    tag = "".join(f"-{t}" for t in tags)
    study_name = cfg.study_name or (f"l2bg-{bench.name}-{T}t-{strategy}{cfg.space}{tag}-"
                                    f"{cfg.objective}-{cfg.sampler}-s{cfg.settings.seed}")
    out = Path(cfg.out) if cfg.out is not None else Path("runs") / f"search-{study_name}"
    storage_url = cfg.storage if cfg.storage is not None else f"journal:{out / 'study.journal'}"
    return _Setup(cfg=cfg, built=built, space=space,
                  cache_dir=resolve_cache_dir(cfg.settings.cache_dir), out=out,
                  storage_url=storage_url, study_name=study_name)


def _open_study(setup: _Setup, storage: Any, create: bool) -> Any:
    """Create (or load) the study and check it was made for this search."""
    import optuna

    sig = setup.signature()
    name = setup.study_name
    shown = redact_url(setup.storage_url)
    created = False
    if create:
        try:
            optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            try:
                study = optuna.create_study(storage=storage, study_name=name,
                                            directions=["maximize", "minimize"])
                study.set_user_attr(SIGNATURE_ATTR, sig)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    study.set_metric_names([setup.cfg.objective, "params"])
                created = True
            except optuna.exceptions.DuplicatedStudyError:
                pass
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError as exc:
        raise ParamError(f"no study {name!r} in {shown}; run the search first or check "
                         "{study_name}", "study_name") from exc
    found = study.user_attrs.get(SIGNATURE_ATTR)
    for _ in range(50):  # another machine may have created it a moment ago
        if found is not None:
            break
        time.sleep(0.1)
        found = optuna.load_study(study_name=name, storage=storage).user_attrs.get(SIGNATURE_ATTR)
    if found is None:
        raise ParamError(f"study {name!r} in {shown} was not created by l2bg search; choose "
                         "another {study_name}", "study_name")
    if found != sig:
        diffs = [f"{k}: {found.get(k)!r} (study) vs {sig.get(k)!r} (now)"
                 for k in sorted(set(found) | set(sig)) if found.get(k) != sig.get(k)
                 and k != "context"]
        if not diffs:
            diffs = ["data, template, training recipe or seed differ"]
        raise ParamError(f"study {name!r} in {shown} was created for a different search "
                         f"({'; '.join(diffs[:3])}); rerun with the same options or choose "
                         "another {study_name}", "study_name")
    if created:
        _enqueue_initial(setup, study)
    return study


def _enqueue_initial(setup: _Setup, study: Any) -> None:
    cfg = setup.cfg
    if cfg.enqueue_baselines:
        for grow_all in (False, True):
            params, label = setup.space.baseline_params(grow_all)
            study.enqueue_trial(params, user_attrs={"baseline": label})
    if not setup.space.takes_delta:
        return
    for delta in initial_design(cfg.sampler, cfg.initial, cfg.trials, cfg.startup_trials):
        params = setup.space.diagonal_params(delta)
        if cfg.enqueue_baselines and set(params.values()) <= {0.0, 1.0}:
            continue  # the grow-all / no-growth baseline is already queued
        study.enqueue_trial(params, user_attrs={"initial": f"diagonal delta={delta:.2f}"})


def trial_attrs(outcome: Outcome) -> dict[str, Any]:
    """The user attributes of a trial: the run record's metrics, grow sequence and environment,
    and the memo counters (what optuna-dashboard shows, what the reports read;
    :class:`l2bg.search.attrs.TrialAttrs`)."""
    return TrialAttrs.of(outcome).to_attrs()


def _objective_values(cfg: SearchConfig, record: RunRecord) -> list[float]:
    first = record.gain if cfg.objective == "gain" else record.avg_val_acc
    return [float(first), float(record.params)]


def _counts(study: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _work(setup: _Setup, index: int) -> int:
    """One worker: run trials until ``trials`` have completed in total. Returns how many trials
    this worker completed."""
    import optuna
    import torch
    from optuna.trial import TrialState

    cfg = setup.cfg
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // cfg.workers)
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(setup.storage_url, lease_s=cfg.lease_s, max_retry=cfg.max_retry)
    seed = cfg.settings.seed if cfg.sampler_seed is None else cfg.sampler_seed
    rank = register_worker(optuna.load_study(study_name=setup.study_name, storage=storage))
    sampler = make_sampler(cfg.sampler, seed + 1000 * rank, cfg.trials, cfg.startup_trials)
    study = optuna.load_study(study_name=setup.study_name, storage=storage, sampler=sampler)
    setup.make_learner()
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    done_here = 0
    start = time.perf_counter()
    while True:
        reap_stale_trials(study, storage, cfg.lease_s, cfg.max_retry)
        counts = _counts(study)
        if counts.get("COMPLETE", 0) >= cfg.trials:
            break
        if counts.get("COMPLETE", 0) + counts.get("RUNNING", 0) >= cfg.trials:
            time.sleep(min(1.0, cfg.lease_s / 4))  # the running ones finish, or die: retry them
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = study.ask()
        alive = Liveness(trial, storage, cfg.lease_s).start()
        try:
            frozen = trial_by_number(study, trial.number)  # its system attributes, publicly
            if _surplus(study, trial, frozen, cfg.trials):  # another worker took the last slot
                alive.stop()
                study.tell(trial, state=TrialState.PRUNED)
                break
            retry_of = frozen.system_attrs.get("failed_trial")
            if retry_of is not None:
                trial.set_user_attr("retry_of", retry_of)
            params = setup.space.suggest(trial)
            order, steps = setup.space.decode(params)
            strategy = setup.strategy.configured(**setup.space.strategy_options(params))
            if delay > 0:
                time.sleep(delay)
            outcome = setup.evaluate(order, steps, strategy)
            for k, v in trial_attrs(outcome).items():
                trial.set_user_attr(k, v)
            if cfg.max_params is not None:
                trial.set_constraint("max_params",
                                     float(outcome.record.params - cfg.max_params))
            alive.stop()
            study.tell(trial, _objective_values(cfg, outcome.record))
        except KeyboardInterrupt:
            alive.stop()
            with suppress(Exception):  # give the trial back: fail it and re-enqueue its params
                give_back(study, trial.number, cfg.max_retry)
            raise
        except BaseException:
            alive.stop()
            if taken_over(study, trial):  # paused past its lease: another worker retried it
                warn(f"[worker {index}] trial {trial.number} was failed and retried by another "
                     f"worker while this one was stopped for longer than its lease "
                     f"({cfg.lease_s:g} s); its result is dropped")
                continue
            study.tell(trial, state=TrialState.FAIL)
            raise
        done_here += 1
        write_trial_record(setup.out, trial.number, outcome.record)
        if not cfg.quiet:
            _print_trial(index, trial.number, outcome, setup, time.perf_counter() - start)
    return done_here


def write_trial_record(out: Path, number: int, record: RunRecord) -> Path:
    """The run record of completed trial ``number`` (as ``l2bg run`` writes results.json);
    a refused write is one line (:func:`l2bg.base.fileio.atomic_write`)."""
    return write_json(trial_record_path(out, number), record.to_json())


def _surplus(study: Any, trial: Any, frozen: Any, trials: int) -> bool:
    """True (and the trial's fixed parameters given back to the queue) when ``trials`` trials
    numbered before this one already completed or run."""
    from optuna.trial import TrialState

    ahead = [t for t in study.get_trials(deepcopy=False,
                                         states=(TrialState.COMPLETE, TrialState.RUNNING))
             if t.number < trial.number]
    if len(ahead) < trials:
        return False
    trial.set_user_attr("surplus", True)
    fixed = frozen.system_attrs.get("fixed_params") or dict(trial.params)
    if fixed:
        study.enqueue_trial(fixed, user_attrs={k: v for k, v in trial.user_attrs.items()
                                               if k == "baseline"})
    return True


def _print_trial(index: int, number: int, outcome: Outcome, setup: _Setup,
                 elapsed: float) -> None:
    """One line per finished trial (also when the output is not a terminal)."""
    r, s = outcome.record, outcome.stats
    T = len(setup.space.tasks)
    print(f"[w{index} {elapsed:7.1f}s] trial {number}: gain {r.gain:+.2f}%  params "
          f"{r.params:,} ({r.params_ratio:.2f}x independent)  val acc "
          f"{100 * r.avg_val_acc:.2f}%  memo {s['memo_hits']}/{T} reused  "
          f"{r.wall_time_s:.1f}s  {format_sequence(r.grow_sequence())}", flush=True)


def _worker_entry(cfg_dict: dict[str, Any], index: int,
                  describe: Callable[[BaseException], str] = str) -> None:
    """Entry of a ``workers`` process (spawned); ``describe`` words its error (the command
    line's: flags for parameters)."""
    from l2bg.base.errors import one_line_warnings

    one_line_warnings()
    try:
        _work(_setup(SearchConfig.from_dict(cfg_dict)), index)
    except L2BGError as exc:
        print(f"l2bg: error: [worker {index}] {describe(exc)}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _run_workers(cfg: SearchConfig, describe: Callable[[BaseException], str]) -> list[str]:
    """Run ``cfg.workers`` worker processes to the end; what went wrong with each that did not
    exit cleanly (a trial it was running is failed and retried by the others)."""
    import multiprocessing
    import signal

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_entry, args=(asdict(cfg), i, describe),
                         name=f"l2bg-search-{i}") for i in range(cfg.workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.join()
        raise
    problems = []
    for i, p in enumerate(procs):
        if p.exitcode is not None and p.exitcode < 0:
            try:
                name = signal.Signals(-p.exitcode).name
            except ValueError:
                name = f"signal {-p.exitcode}"
            problems.append(f"worker {i} (pid {p.pid}) was killed by {name}")
        elif p.exitcode:
            problems.append(f"worker {i} (pid {p.pid}) exited with code {p.exitcode}"
                            f"{' (message above)' if p.exitcode == 2 else ''}")
    return problems


def _baselines(setup: _Setup, study: Any) -> None:
    """Store the independent and shared baselines (gain, params, accuracies) as study user
    attributes, for the plot; shared is evaluated through the memo (bind to the previous task,
    grow nothing), so it costs T − 1 trainings once per cache directory."""
    if "baseline_shared" in study.user_attrs:
        return
    r = setup.evaluate(None, None, "shared").record
    indep_val = [t.independent_val_acc for t in r.tasks]
    indep_test = [t.independent_test_acc for t in r.tasks]
    study.set_user_attr("baseline_shared", {
        "gain": r.gain, "params": r.params, "avg_val_acc": r.avg_val_acc,
        "avg_test_acc": r.avg_test_acc, "params_independent": r.params_independent})
    study.set_user_attr("baseline_independent", {
        "gain": 0.0, "params": r.params_independent,
        "avg_val_acc": sum(indep_val) / len(indep_val),
        "avg_test_acc": sum(indep_test) / len(indep_test),
        "params_independent": r.params_independent})


def run_search(cfg: SearchConfig,
               describe: Callable[[BaseException], str] = str) -> dict[str, Any]:
    """Run (or resume) a search until ``cfg.trials`` trials have completed; write the outputs
    and return the report summary (see :func:`l2bg.search.report.write_report`). Workers
    that die do not lose the report: it is written from the storage, and the error (or, when
    the others completed every trial, the warning) names them; ``describe`` words a worker's
    error (a module-level function: it travels to the worker processes)."""
    import optuna

    setup = _setup(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    meta = search_meta(asdict(cfg), setup.study_name, setup.storage_url, setup.out,
                       setup.cache_dir)
    # before any work: --out is this search's (l2bg.base.outdir's claim rule), the storage opens,
    # the cache is writable; a failure takes the claim back
    created = claim_shared(setup.out, META_FILE, meta, IDENTITY, OUTPUTS)
    try:
        storage = open_storage(setup.storage_url, lease_s=cfg.lease_s, max_retry=cfg.max_retry)
        try:
            setup.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise refused(exc, setup.cache_dir, "choose another {cache_dir}",
                          ("cache_dir",)) from exc
        study = _open_study(setup, storage, create=True)
    except BaseException:
        release_shared(setup.out, META_FILE, created)
        raise
    write_json(setup.out / META_FILE, meta)  # ours: this run's config
    problems: list[str] = []
    if cfg.workers == 1:
        _work(setup, 0)
    else:
        problems = _run_workers(cfg, describe)
    study = optuna.load_study(study_name=setup.study_name, storage=storage)
    done = _counts(study).get("COMPLETE", 0)
    if cfg.baselines and done:
        import torch

        torch.set_num_threads(cfg.threads or (os.cpu_count() or 1))
        _baselines(setup, study)
    summary = write_report(study, setup.out, storage_label=redact_url(setup.storage_url))
    if problems:  # the report covers what completed; say what happened to the others
        what = "; ".join(problems)
        if done < cfg.trials:
            raise L2BGError(f"search {what}; the report in {setup.out} covers the {done} "
                            f"trials completed of {cfg.trials}: rerun the same command to "
                            "resume")
        warn(f"search {what}; the other workers completed all {cfg.trials} trials (its "
             "running trial was retried) and the report was written")
    if not cfg.quiet:
        print(summary_text(summary, setup.out))
    return summary
