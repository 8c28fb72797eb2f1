"""The goals of the conflict-rules issue, measured: does a search over per-task δ and the rules
beat random growth, and does some configuration come close to the independent nets with fewer
parameters?

1. **Hypervolume** (``--hv-benchmarks``, default pmnist and split-mnist), per seed: a
   ``--trials``-trial ``l2bg search`` over per-task δ with ``--search-rules`` (objective: average
   validation accuracy; sampler ``--sampler``, seeded with the seed) against ``--trials`` runs of
   the ``random`` strategy with draw seeds 0..N−1 on the same data and training. Hypervolume over
   (average validation accuracy % ↑, parameters / independent ↓) with reference point (the
   ``shared`` baseline's accuracy, 1.1). Goal: the search's is larger on every seed.
2. **Close to independent** (``--quality DIR``, the output of ``quality_table.py``): the runs whose
   mean validation accuracy is within ``--within`` points of the independent nets' at
   <= ``--max-ratio`` of their parameters (selected on validation; their test gap is reported),
   plus the search trials of step 1 that meet the same bar on their seed.

    python benchmarks/rules_goals.py --data-root DIR --tasks 5 --epochs 5 --seeds 0 1 2 \\
        --quality runs/quality --out runs/goals

Searches and random runs share one cache (``--cache-dir``: independent nets, memo nodes), so a
decision sequence both evaluate is trained once. The summary goes to ``--out/goals.json`` and
``--out/goals.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from l2bg.base.fileio import atomic_write, write_json
from l2bg.learn import strategies
from l2bg.learn.independent import IndependentCache
from l2bg.learn.settings import Settings, resolve_cache_dir
from l2bg.search import Memo, hypervolume_2d
from l2bg.search.study import SearchConfig, run_search


def hv(points: list[tuple[float, float]], shared_acc: float) -> float:
    """Hypervolume of (acc % ↑, ratio ↓) points up to (shared_acc %, 1.1)."""
    return hypervolume_2d([(-a, r) for a, r in points], (-shared_acc, 1.1))


def hv_goal(args: argparse.Namespace, bench: str, seed: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    settings = Settings(bench, data_root=args.data_root, tasks=args.tasks, seed=seed,
                        epochs=args.epochs, cache_dir=str(args.cache_dir))
    t0 = time.perf_counter()
    summary = run_search(SearchConfig(
        settings, trials=args.trials, space="per-task-delta", objective="acc",
        sampler=args.sampler, sampler_seed=seed, search_rules=True, baselines=True,
        out=str(args.out / "search" / f"{bench}-s{seed}"), quiet=True, threads=args.threads))
    search_s = time.perf_counter() - t0
    shared = 100 * summary["baselines"]["shared"]["avg_val_acc"]
    indep = 100 * summary["baselines"]["independent"]["avg_val_acc"]
    search_pts = [(100 * p["avg_val_acc"], p["params_ratio"]) for p in summary["pareto"]]

    t0 = time.perf_counter()
    built = settings.build()
    learner = settings.learner(built, IndependentCache(args.cache_dir))
    Memo.attach(learner, memo_dir=args.cache_dir)
    random_pts, random_runs = [], []
    for k in range(args.trials):
        r = learner.run(strategies.get("random").configured(draw_seed=k)).record
        point = (100 * r.avg_val_acc, r.params_ratio)
        random_pts.append(point)
        random_runs.append({"draw_seed": k, "val_acc": point[0], "params_ratio": point[1],
                            "test_acc": 100 * r.avg_test_acc})
    random_s = time.perf_counter() - t0
    close = [p for p in summary["pareto"]
             if 100 * p["avg_val_acc"] >= indep - args.within
             and p["params_ratio"] <= args.max_ratio]
    out = {"benchmark": bench, "seed": seed, "shared_val_acc": shared,
           "independent_val_acc": indep, "hv_search": hv(search_pts, shared),
           "hv_random": hv(random_pts, shared), "search_front": search_pts,
           "random_runs": random_runs, "search_trials": summary["trials"],
           "search_s": round(search_s, 1), "random_s": round(random_s, 1),
           "search_close_to_independent": [
               {"val_acc": 100 * p["avg_val_acc"], "test_acc": 100 * p["avg_test_acc"],
                "params_ratio": p["params_ratio"], "strategy_options": p["strategy_options"],
                "grow_sequence": p["grow_sequence"]} for p in close]}
    out["goal_met"] = out["hv_search"] > out["hv_random"]
    print(f"{bench} s{seed}: HV search {out['hv_search']:.3f} vs random {out['hv_random']:.3f} "
          f"({'met' if out['goal_met'] else 'NOT met'}; shared {shared:.2f}%, independent "
          f"{indep:.2f}%; search {search_s:.0f}s, random {random_s:.0f}s)", flush=True)
    return out


def close_goal(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = list(csv.DictReader((args.quality / "table.csv").open()))
    out = []
    for bench in dict.fromkeys(r["benchmark"] for r in rows):
        group = [r for r in rows if r["benchmark"] == bench]
        indep = next(r for r in group if r["run"] == "independent")
        iv, it = float(indep["val_acc_mean"]), float(indep["test_acc_mean"])
        hits = [{"run": r["run"], "val_acc": float(r["val_acc_mean"]),
                 "val_gap": float(r["val_acc_mean"]) - iv,
                 "test_gap": float(r["test_acc_mean"]) - it,
                 "params_ratio": float(r["params_ratio_mean"])} for r in group
                if float(r["val_acc_mean"]) >= iv - args.within
                and float(r["params_ratio_mean"]) <= args.max_ratio]
        best = max(((float(r["val_acc_mean"]) - iv, r["run"], float(r["params_ratio_mean"]))
                    for r in group if r["run"] != "independent"
                    and float(r["params_ratio_mean"]) <= args.max_ratio), default=None)
        out.append({"benchmark": bench, "independent_val_acc": iv, "independent_test_acc": it,
                    "hits": hits, "goal_met": bool(hits),
                    "best_at_max_ratio": None if best is None else
                    {"run": best[1], "val_gap": best[0], "params_ratio": best[2]}})
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = ["| benchmark | seed | HV search | HV random | shared val % | goal |",
             "|---|---|---|---|---|---|"]
    for r in result.get("hypervolume", []):
        lines.append(f"| {r['benchmark']} | {r['seed']} | {r['hv_search']:.3f} | "
                     f"{r['hv_random']:.3f} | {r['shared_val_acc']:.2f} | "
                     f"{'met' if r['goal_met'] else 'not met'} |")
    for bench in dict.fromkeys(r["benchmark"] for r in result.get("hypervolume", [])):
        rs = [r for r in result["hypervolume"] if r["benchmark"] == bench]
        s = [r["hv_search"] for r in rs]
        q = [r["hv_random"] for r in rs]
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        lines.append(f"| {bench} | mean ± sd | {statistics.mean(s):.3f} ± {sd(s):.3f} | "
                     f"{statistics.mean(q):.3f} ± {sd(q):.3f} | | |")
    if result.get("close"):
        lines += ["", "| benchmark | independent val % | runs within the bar (val gap, test gap, "
                  "params) | goal |", "|---|---|---|---|"]
        for c in result["close"]:
            hits = "; ".join(f"{h['run']} ({h['val_gap']:+.2f}, {h['test_gap']:+.2f}, "
                             f"{h['params_ratio']:.2f}x)" for h in c["hits"]) or (
                "none; best at the ratio bar: " + (
                    f"{c['best_at_max_ratio']['run']} ({c['best_at_max_ratio']['val_gap']:+.2f}"
                    f", {c['best_at_max_ratio']['params_ratio']:.2f}x)"
                    if c["best_at_max_ratio"] else "n/a"))
            lines.append(f"| {c['benchmark']} | {c['independent_val_acc']:.2f} | {hits} | "
                         f"{'met' if c['goal_met'] else 'not met'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--hv-benchmarks", nargs="*", default=["pmnist", "split-mnist"])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--sampler", default="gp")
    p.add_argument("--threads", type=int, default=1, help="torch threads (see quality_table.py)")
    p.add_argument("--quality", type=Path, default=None,
                   help="output directory of quality_table.py for the second goal")
    p.add_argument("--within", type=float, default=0.5, help="points of accuracy")
    p.add_argument("--max-ratio", type=float, default=0.8)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("runs/goals"))
    args = p.parse_args(argv)
    args.cache_dir = resolve_cache_dir(args.cache_dir)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"settings": {k: str(v) if isinstance(v, Path) else v
                                           for k, v in vars(args).items()}}
    result["hypervolume"] = []
    for bench in args.hv_benchmarks:
        for seed in args.seeds:
            result["hypervolume"].append(hv_goal(args, bench, seed))
            write_json(args.out / "goals.json", result)
    if args.quality is not None:
        result["close"] = close_goal(args)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    write_json(args.out / "goals.json", json.loads(json.dumps(result, default=str)))
    md = markdown(result)
    atomic_write(args.out / "goals.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
