"""How cheap are trials after the first, and which sampler finds the better front in few trials?

Two measurements, both with ``l2bg search`` on permuted MNIST (CPU):

1. **Trial cost** (``--timing-trials``, default 20): one fresh study (fresh cache) per space of
   ``--timing-spaces`` (default the paper's shared-delta and per-task-delta) with the gp sampler.
   Reported: the first trial's wall time (it trains the independent nets and every task) and the
   median of trials 2..N (goal: <= 40 % of the first), as the trial's whole duration (sampler
   included) and as the runner's time alone (``wall_s``).
2. **Hypervolume** (``--runs``, default ``gp:10 tpe:10 nsga2-paper:20``) over ``--seeds``
   sampler seeds, in ``--space`` (default per-task-delta). Hypervolume on (−gain %, params /
   params of independent) with reference (100, 1.1), after each run's last trial. Goal: the mean
   of gp or tpe after 10 trials >= the mean of nsga2-paper (the paper's setting) after 20. All
   studies share one cache: a decision sequence evaluated by one sampler is not retrained for
   another (values are identical either way, only time is saved).

Runs in the background (about an hour with the defaults on 2 cores)::

    nohup python benchmarks/search_hv.py --data-root ~/data/mnist > runs/search_hv.log &

Every study lives in ``--out``; rerunning the script resumes unfinished studies and reuses
finished ones. The summary goes to ``--out/summary.json`` and is printed as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_OPTIONS = {"baselines": ["--enqueue-baselines"], "random": ["--initial", "random"],
               "diagonal": ["--initial", "diagonal"]}


def _search(args: argparse.Namespace, out: Path, cache: Path, sampler: str, trials: int,
            seed: int, space: str, extra: list[str]) -> dict:
    tag = "".join(f"-{e.strip('-')}" for e in extra)
    name = f"{sampler}-{trials}-{space}-s{seed}{tag}"
    cmd = [sys.executable, "-m", "l2bg.search", "--benchmark", "pmnist", "--tasks",
           str(args.tasks), "--epochs", str(args.epochs), "--trials", str(trials),
           "--space", space, "--sampler", sampler, "--sampler-seed", str(seed), "--seed",
           str(args.data_seed), "--threads", "1", "--no-baselines", "--quiet",
           "--study-name", name, "--out", str(out / name), "--cache-dir", str(cache), *extra]
    if args.data_root:
        cmd += ["--data-root", str(args.data_root)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    log = out / f"{name}.log"
    out.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"{name} failed (exit {rc}); see {log}")
    report = json.loads((out / name / "pareto.json").read_text())
    report["_wall_s"] = time.perf_counter() - t0
    report["_name"] = name
    return report


def timing(args: argparse.Namespace, out: Path, space: str) -> dict:
    import optuna

    from l2bg.search.attrs import TrialAttrs

    cache = out / f"timing-cache-{space}"  # fresh: the first trial trains everything
    rep = _search(args, out / "timing", cache, "gp", args.timing_trials, 0, space, [])
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(out / "timing" / rep["_name"] / "study.journal")))
    study = optuna.load_study(study_name=rep["_name"], storage=storage)
    trials = sorted((t for t in study.trials if t.state.name == "COMPLETE"),
                    key=lambda t: t.number)
    dur = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    attrs = [TrialAttrs.read(t.user_attrs) for t in trials]
    wall = [a.wall_s for a in attrs]
    res = {"space": space, "trials": len(trials), "first_trial_s": dur[0],
           "first_runner_s": wall[0], "median_later_s": statistics.median(dur[1:]),
           "median_later_runner_s": statistics.median(wall[1:]),
           "full_hits": sum(bool(a.memo_full_hit) for a in attrs[1:]),
           "steps_reused": sum(a.memo_hits or 0 for a in attrs[1:]),
           "steps_trained": sum(a.memo_misses or 0 for a in attrs[1:]),
           "durations_s": [round(d, 3) for d in dur]}
    res["ratio"] = res["median_later_s"] / res["first_trial_s"]
    res["ratio_runner"] = res["median_later_runner_s"] / res["first_runner_s"]
    res["goal_met"] = res["ratio"] <= 0.40
    return res


def hypervolumes(args: argparse.Namespace, out: Path) -> dict:
    cache = args.cache or out / "cache"
    jobs = []
    for run in args.runs:
        sampler, trials, *opts = run.split(":")
        extra = []
        for opt in opts:
            if opt not in RUN_OPTIONS:
                raise SystemExit(f"unknown run option {opt!r} in {run}; use {list(RUN_OPTIONS)}")
            extra += RUN_OPTIONS[opt]
        for seed in args.seeds:
            jobs.append((run, sampler, int(trials), seed, extra))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        reports = list(pool.map(lambda j: (j, _search(args, out / "hv", cache, j[1], j[2], j[3],
                                                       args.space, j[4])), jobs))
    table: dict[str, dict] = {}
    for (run, _sampler, trials, seed, _), rep in reports:
        hist = rep["hypervolume_history"]
        hv = hist[min(trials, len(hist)) - 1]["hypervolume"] if hist else 0.0
        row = table.setdefault(run, {"trials": trials, "hv": [], "front": [], "wall_s": []})
        row["hv"].append(hv)
        row["front"].append(len(rep["pareto"]))
        row["wall_s"].append(round(rep["_wall_s"], 1))
        row.setdefault("seeds", []).append(seed)
    for row in table.values():
        row["mean_hv"] = statistics.mean(row["hv"])
    paper = next((r for k, r in table.items() if k.startswith("nsga2-paper")), None)
    if paper:
        best = max((r["mean_hv"] for k, r in table.items()
                    if k.split(":")[0] in ("gp", "tpe") and r["trials"] <= 10), default=None)
        table["_goal"] = {"paper_mean_hv": paper["mean_hv"], "best_model_based_mean_hv": best,
                          "goal_met": best is not None and best >= paper["mean_hv"]}
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=None,
                   help="MNIST IDX files (e.g. ~/data/mnist); default embedded digits")
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data-seed", type=int, default=0, help="benchmark seed (data, init)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds")
    p.add_argument("--runs", nargs="+", default=["gp:10", "tpe:10", "nsga2-paper:20"],
                   help="SAMPLER:TRIALS[:OPTION...]; options: baselines (enqueue delta 0 and 1), "
                        "random or diagonal (start-up design; default diagonal for gp/tpe)")
    p.add_argument("--space", default="per-task-delta")
    p.add_argument("--timing-trials", type=int, default=20, help="0 skips the timing studies")
    p.add_argument("--timing-spaces", nargs="+", default=["shared-delta", "per-task-delta"],
                   help="one fresh timing study (gp) per space")
    p.add_argument("--skip-hv", action="store_true")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)),
                   help="studies run in parallel (one torch thread each)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "search_hv")
    p.add_argument("--cache", type=Path, default=None,
                   help="cache of the hypervolume studies (default OUT/cache; reuse one to skip "
                        "trainings another run already did)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"settings": {k: str(v) if isinstance(v, Path) else v
                                  for k, v in vars(args).items()}}
    t0 = time.perf_counter()
    if args.timing_trials:
        summary["timing"] = []
        for space in args.timing_spaces:
            tm = timing(args, args.out, space)
            summary["timing"].append(tm)
            print(f"trial cost ({space}): first {tm['first_trial_s']:.1f}s, median of trials "
                  f"2..{tm['trials']} {tm['median_later_s']:.2f}s = {100 * tm['ratio']:.1f}% "
                  f"(runner only {100 * tm['ratio_runner']:.1f}%; {tm['full_hits']} full memo "
                  f"hits, {tm['steps_trained']} steps trained, {tm['steps_reused']} reused); "
                  f"goal <= 40%: {'met' if tm['goal_met'] else 'NOT met'}", flush=True)
    if not args.skip_hv:
        summary["hypervolume"] = hv = hypervolumes(args, args.out)
        print(f"{'run':<24}{'trials':>7}{'mean HV':>10}  per seed", flush=True)
        for k, r in hv.items():
            if not k.startswith("_"):
                print(f"{k:<24}{r['trials']:>7}{r['mean_hv']:>10.3f}  "
                      f"{', '.join(f'{x:.3f}' for x in r['hv'])}")
        if "_goal" in hv:
            g = hv["_goal"]
            print(f"goal (gp/tpe @10 >= nsga2-paper @20): "
                  f"{'met' if g['goal_met'] else 'NOT met'}")
    summary["wall_s"] = time.perf_counter() - t0
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"summary: {args.out / 'summary.json'} ({summary['wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
