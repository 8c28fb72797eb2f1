"""Quality table: strategies × conflict rules × δ × seeds → mean ± sd, parameters relative to the
independent nets, and the Pareto front (CSV, markdown and an accuracy-against-parameters plot).

    python benchmarks/quality_table.py --benchmarks pmnist split-mnist rotated-mnist \\
        --data-root DIR --tasks 5 --epochs 5 --seeds 0 1 2 --out runs/quality

Runs are ``independent``, ``shared``, ``full``, ``random`` or
``l2bg:GROW_RULE:DELTA[:BIND_RULE[:SIMILARITY]]``, each l2bg run optionally followed by
``@GRANULARITY`` and ``~MODE`` (``l2bg:conflict:0.5@group:4~adapt``); ``--baselines`` and the grid
``--grow-rules × --deltas × --granularities × --grow-modes`` add to ``--runs``. ``--task-bn``
gives every task its own batch norm in every run. Every run of a (benchmark, seed) shares the
independent nets (``--cache-dir``, the same cache rule as ``l2bg run``) and one in-memory decision
memo, so a decision sequence that two runs share (two δ with the same nucleus) is trained once.

Outputs in ``--out``: ``runs.csv`` (one row per run and seed), ``table.csv`` and ``table.md``
(mean ± sd over seeds), ``plot.png`` (test accuracy against parameters / independent, one panel
per benchmark, the front marked) and ``runs/<benchmark>/s<seed>/<run>/results.json`` for
``l2bg explain``. The Pareto front is taken on the mean *validation* accuracy (↑) and the mean
parameter ratio (↓), so selecting on it never looks at the test set; the table reports both.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2bg.base.figures import figure, param_axes, place_labels, save
from l2bg.base.fileio import atomic_write, write_json
from l2bg.conflict.rules import DEFAULT_BIND_RULE
from l2bg.conflict.similarity import DEFAULT_SIMILARITY
from l2bg.learn.environment import Environment
from l2bg.learn.independent import IndependentCache
from l2bg.learn.learner import GrowStep
from l2bg.learn.metrics import nondominated
from l2bg.learn.record import over_seeds
from l2bg.learn.settings import Settings, resolve_cache_dir
from l2bg.search import Memo

BASELINES = ("independent", "shared", "full", "random")


@dataclass(frozen=True)
class RunSpec:
    """One row of the table: a strategy, its options and (for l2bg) one δ for every task."""

    label: str
    strategy: str
    options: dict[str, Any] = field(default_factory=dict)
    delta: float | None = None
    mode: str = "copy"

    @classmethod
    def parse(cls, text: str) -> RunSpec:
        if text in BASELINES:
            return cls(text, text)
        text, _, mode = text.partition("~")
        text, _, granularity = text.partition("@")
        parts = text.split(":")
        if parts[0] != "l2bg" or not 3 <= len(parts) <= 5:
            raise SystemExit(f"run {text!r}: use one of {', '.join(BASELINES)} or "
                             "l2bg:GROW_RULE:DELTA[:BIND_RULE[:SIMILARITY]]")
        grow, delta = parts[1], float(parts[2])
        bind = parts[3] if len(parts) > 3 else DEFAULT_BIND_RULE
        sim = parts[4] if len(parts) > 4 else DEFAULT_SIMILARITY
        label = f"l2bg-{grow}-{delta:g}"
        label += f"-bind-{bind}" if bind != DEFAULT_BIND_RULE else ""
        label += f"-{sim}" if sim != DEFAULT_SIMILARITY else ""
        options = {"grow_rule": grow, "bind_rule": bind, "similarity": sim}
        if granularity and granularity != "layer":
            label += f"-{granularity.replace(':', '')}"
            options["granularity"] = granularity
        if mode and mode != "copy":
            label += f"-{mode}"
        return cls(label, "l2bg", options, delta, mode or "copy")


def run_specs(args: argparse.Namespace) -> list[RunSpec]:
    texts = list(args.baselines) + [f"l2bg:{g}:{d:g}@{u}~{m}" for g in args.grow_rules
                                    for d in args.deltas for u in args.granularities
                                    for m in args.grow_modes] + list(args.runs)
    specs = [RunSpec.parse(t) for t in dict.fromkeys(texts)]
    if not specs:
        raise SystemExit("nothing to run: give --baselines, --grow-rules with --deltas, or --runs")
    return specs


def run_all(args: argparse.Namespace, specs: list[RunSpec]) -> list[dict[str, Any]]:
    """Every spec on every benchmark and seed; one row per run (and results.json on disk)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cache = IndependentCache(resolve_cache_dir(args.cache_dir))
    rows = []
    for bench in args.benchmarks:
        for seed in args.seeds:
            settings = Settings(bench, data_root=args.data_root, tasks=args.tasks, seed=seed,
                                epochs=args.epochs, cache_dir=args.cache_dir,
                                rsa_samples=args.rsa_samples, task_bn=args.task_bn)
            built = settings.build()
            learner = settings.learner(built, cache)
            memo = Memo.attach(learner, memo_dir=None)
            T = len(built.bench.tasks)
            for spec in specs:
                t0 = time.perf_counter()
                strategy = settings.strategy(spec.strategy).configured(**spec.options)
                steps = ([GrowStep(delta=spec.delta, mode=spec.mode)] * (T - 1)
                         if strategy.takes_delta else None)
                record = memo.outcome(learner.run(strategy, steps)).record
                record.config = {**settings.to_dict(), "tasks": T, "strategy": spec.strategy,
                                 "strategy_options": strategy.options(),
                                 "granularity": spec.options.get("granularity", "layer"),
                                 "grow_mode": spec.mode, "delta": spec.delta,
                                 "data": built.bench.source,
                                 "train": built.train.to_dict()}
                write_json(args.out / "runs" / bench / f"s{seed}" / spec.label / "results.json",
                           record.to_json())
                row = {"benchmark": bench, "run": spec.label, "seed": seed,
                       "strategy": spec.strategy, **_options(spec), "delta": spec.delta,
                       **record.summary(), "params_independent": record.params_independent,
                       "granularity": spec.options.get("granularity", "layer"),
                       "grow_mode": spec.mode, "task_bn": args.task_bn,
                       "grown": " ".join(",".join(d.grown_names(record.slots)) or "-"
                                         for d in record.decisions[1:]),
                       "bind": " ".join(str(d.bind_to) for d in record.decisions[1:]),
                       "trained": record.memo["memo_misses"],
                       "wall_s": round(time.perf_counter() - t0, 2)}
                rows.append(row)
                print(f"{bench} s{seed} {spec.label:<34} test {row['test_acc']:6.2f}%  val "
                      f"{row['val_acc']:6.2f}%  params {row['params_ratio']:.2f}x  "
                      f"gain {row['gain']:+8.2f}%  {row['wall_s']:.1f}s", flush=True)
    return rows


def _options(spec: RunSpec) -> dict[str, Any]:
    return {k: spec.options.get(k) for k in ("grow_rule", "bind_rule", "similarity")}


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± sd over seeds per (benchmark, run), and the Pareto front per benchmark on (mean
    validation accuracy ↑, mean parameter ratio ↓)."""
    table: list[dict[str, Any]] = []
    keys = list(dict.fromkeys((r["benchmark"], r["run"]) for r in rows))
    for bench, run in keys:
        rs = [r for r in rows if r["benchmark"] == bench and r["run"] == run]
        out = {k: rs[0].get(k) for k in ("benchmark", "run", "strategy", "grow_rule",
                                         "bind_rule", "similarity", "granularity", "grow_mode",
                                         "task_bn", "delta")}
        out["seeds"] = len(rs)
        out["params_independent"] = rs[0].get("params_independent")  # the x axis' unit
        out.update(over_seeds(rs))
        table.append(out)
    for bench in dict.fromkeys(r["benchmark"] for r in table):
        group = [r for r in table if r["benchmark"] == bench]
        on_front = nondominated([(r["val_acc_mean"], r["params_ratio_mean"]) for r in group])
        for r, keep in zip(group, on_front, strict=True):
            r["front"] = keep
        indep = next((r for r in group if r["run"] == "independent"), None)
        for r in group:
            r["val_gap_to_independent"] = (None if indep is None
                                           else r["val_acc_mean"] - indep["val_acc_mean"])
            r["test_gap_to_independent"] = (None if indep is None
                                            else r["test_acc_mean"] - indep["test_acc_mean"])
    return table


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue())


def markdown(table: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def pm(r: dict[str, Any], key: str, fmt: str = ".2f") -> str:
        m, s = r[f"{key}_mean"], r[f"{key}_sd"]
        return "n/a" if math.isnan(m) else f"{m:{fmt}} ± {s:{fmt}}"

    lines = []
    for bench in dict.fromkeys(r["benchmark"] for r in table):
        lines += [f"**{bench}** ({meta['tasks_label']}, {meta['epochs_label']}, seeds "
                  f"{meta['seeds']}; mean ± sd)", "",
                  "| run | test acc % | val acc % | params / independent | gain Δ % | "
                  "BWT % | front |", "|---|---|---|---|---|---|---|"]
        for r in (r for r in table if r["benchmark"] == bench):
            lines.append(f"| {r['run']} | {pm(r, 'test_acc')} | {pm(r, 'val_acc')} | "
                         f"{pm(r, 'params_ratio')} | {pm(r, 'gain', '.1f')} | {pm(r, 'bwt')} | "
                         f"{'yes' if r['front'] else ''} |")
        lines.append("")
    return "\n".join(lines)


def plot(path: Path, table: list[dict[str, Any]]) -> None:
    """Write ``plot.png`` (:func:`plot_figure`)."""
    save(plot_figure(table), path)


#: Runs closer than this (a fraction of each axis' span) are drawn as one spot: concentric
#: markers, the first drawn largest, so none hides another.
COINCIDENT = 0.012
BASELINE_MARKS = {"independent": ("D", "tab:blue"), "shared": ("s", "tab:green"),
                  "full": ("^", "tab:brown"), "random": ("x", "0.3")}
GROW_COLORS = {"conflict": "tab:orange", "similar-first": "tab:purple", "released": "tab:cyan"}
FRONT_LABEL = "Pareto front, chosen on validation\naccuracy (test accuracy shown)"


def _style(r: dict[str, Any]) -> tuple[str, Any, str, bool]:
    """(marker, colour, legend label, hollow) of a run: baselines hollow, l2bg filled."""
    if r["strategy"] in BASELINE_MARKS:
        m, c = BASELINE_MARKS[r["strategy"]]
        return m, c, r["strategy"], True
    m, c = "o", GROW_COLORS.get(r["grow_rule"], "tab:gray")
    label = f"l2bg {r['grow_rule']}"
    if r["bind_rule"] != DEFAULT_BIND_RULE:
        m, label = "P", f"{label}, bind {r['bind_rule']}"
    if r["similarity"] != DEFAULT_SIMILARITY:
        m, label = "v", f"{label}, {r['similarity']}"
    return m, c, label, False


def _spots(group: list[dict[str, Any]]) -> list[int]:
    """The spot of each run: runs within COINCIDENT of a spot's first run share it."""
    xs = [r["params_ratio_mean"] for r in group]
    ys = [r["test_acc_mean"] for r in group]
    sx = max(max(xs) - min(xs), 0.05)
    sy = max(max(ys) - min(ys), 0.5)
    firsts: list[int] = []
    spot = []
    for k in range(len(group)):
        near = next((f for f in firsts if abs(xs[k] - xs[f]) <= COINCIDENT * sx
                     and abs(ys[k] - ys[f]) <= COINCIDENT * sy), None)
        if near is None:
            firsts.append(k)
            near = k
        spot.append(near)
    return spot


def plot_figure(table: list[dict[str, Any]]) -> Any:
    """Test accuracy against parameters / independent (the absolute count on top), one panel
    per benchmark. Baselines are hollow markers drawn over the filled l2bg ones; runs on one
    spot are concentric markers; each δ is labelled where no label or marker is (a leader line
    when it had to move away); the front, chosen on validation accuracy, is ringed in red and
    the legend, beside the panels, says so."""
    from matplotlib.lines import Line2D

    benches = list(dict.fromkeys(r["benchmark"] for r in table))
    fig = figure(4.6 * len(benches) + 2.4, 4.6, constrained=True)
    legend: dict[str, Any] = {}
    pending = []  # (axes, δ labels, every point, front): placed once the layout is final
    for k, bench in enumerate(benches):
        ax = fig.add_subplot(1, len(benches), k + 1)
        group = [r for r in table if r["benchmark"] == bench]
        spot = _spots(group)
        totals = Counter(spot)
        drawn: Counter = Counter()
        labels = []
        for i, r in enumerate(group):
            nth = drawn[spot[i]]
            drawn[spot[i]] += 1
            size = 6 + 3 * (totals[spot[i]] - 1 - nth)
            m, c, label, hollow = _style(r)
            ax.errorbar(r["params_ratio_mean"], r["test_acc_mean"],
                        xerr=r["params_ratio_sd"] or None, yerr=r["test_acc_sd"] or None,
                        fmt=m, color=c, ms=size, capsize=2, lw=0.8,
                        mfc="none" if hollow else c, mew=1.5 if hollow else 0.5,
                        mec=c if hollow else "white", zorder=(5 if hollow else 3) + 0.01 * nth)
            legend.setdefault(label, Line2D([], [], ls="", marker=m, ms=6, color=c,
                                            mfc="none" if hollow else c,
                                            mew=1.5 if hollow else 0.5))
            if r["delta"] is not None:
                labels.append(((r["params_ratio_mean"], r["test_acc_mean"]),
                               f"δ={r['delta']:g}", c))
        front = sorted((r for r in group if r["front"]), key=lambda r: r["params_ratio_mean"])
        fx = [r["params_ratio_mean"] for r in front]
        fy = [r["test_acc_mean"] for r in front]
        if front:
            ax.plot(fx, fy, ls=":", c="tab:red", lw=1, zorder=2)
            ax.scatter(fx, fy, s=150, facecolors="none", edgecolors="tab:red", linewidths=1.0,
                       zorder=4)
            legend.setdefault(FRONT_LABEL, Line2D([], [], ls=":", c="tab:red", marker="o",
                                                  ms=8, mfc="none", mec="tab:red"))
        unit = next((r.get("params_independent") for r in group
                     if r.get("params_independent")), None)
        param_axes(ax, unit)
        ax.set_ylabel("average test accuracy (%)")
        ax.set_title(bench, fontsize=9)
        ax.grid(alpha=0.3)
        ax.margins(x=0.1, y=0.1)
        lines = [list(zip(fx, fy, strict=True))]  # the front and every error bar
        for r in group:
            x, y, dx, dy = (r["params_ratio_mean"], r["test_acc_mean"], r["params_ratio_sd"],
                            r["test_acc_sd"])
            lines += [[(x - dx, y), (x + dx, y)], [(x, y - dy), (x, y + dy)]] if dx or dy else []
        pending.append((ax, labels, [(r["params_ratio_mean"], r["test_acc_mean"])
                                     for r in group], lines))
    fig.legend(handles=list(legend.values()), labels=list(legend), loc="outside right upper",
               fontsize=7, frameon=False)
    fig.canvas.draw()
    for ax, labels, points, lines in pending:
        ax.set_xlim(ax.get_xlim())
        ax.set_ylim(ax.get_ylim())
        place_labels(ax, [a for a, _, _ in labels], [t for _, t, _ in labels],
                     colors=[c for _, _, c in labels], obstacles=points, lines=lines,
                     marker_pt=7.5)
    return fig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmarks", nargs="+", default=["pmnist"])
    p.add_argument("--data-root", default=None, help="MNIST IDX files (default: embedded digits)")
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--epochs", type=int, default=None, help="default: the template's")
    p.add_argument("--rsa-samples", type=int, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES)
    p.add_argument("--grow-rules", nargs="*", default=["conflict", "similar-first", "released"])
    p.add_argument("--deltas", type=float, nargs="*", default=[0.25, 0.5, 0.75])
    p.add_argument("--granularities", nargs="+", default=["layer"],
                   help="the l2bg grid's conflict-model units: layer, group:G (default layer)")
    p.add_argument("--grow-modes", nargs="+", default=["copy"], choices=("copy", "adapt"),
                   help="the l2bg grid's grow modes (default copy)")
    p.add_argument("--task-bn", action="store_true",
                   help="every task owns its batch norm, in every run")
    p.add_argument("--runs", nargs="*", default=[],
                   help="more runs: l2bg:GROW_RULE:DELTA[:BIND_RULE[:SIMILARITY]]"
                        "[@GRANULARITY][~MODE]")
    p.add_argument("--cache-dir", default=None,
                   help="independent-net cache (default: $L2BG_CACHE_DIR or ~/.cache/l2bg)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: these small nets train fastest on one "
                        "thread, and on a busy machine more threads slow training many-fold)")
    p.add_argument("--out", type=Path, default=Path("runs/quality"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    specs = run_specs(args)
    t0 = time.perf_counter()
    rows = run_all(args, specs)
    table = aggregate(rows)
    meta = {"benchmarks": args.benchmarks, "tasks_label": f"{args.tasks} tasks",
            "epochs_label": f"{args.epochs or 'default'} epochs", "seeds": args.seeds,
            "data_root": args.data_root, "wall_s": round(time.perf_counter() - t0, 1),
            "argv": sys.argv[1:] if argv is None else argv,
            "environment": Environment.current().to_json()}
    write_csv(args.out / "runs.csv", rows)
    write_csv(args.out / "table.csv", table)
    md = markdown(table, meta)
    atomic_write(args.out / "table.md", md)
    write_json(args.out / "meta.json", json.loads(json.dumps(meta, default=str)))
    plot(args.out / "plot.png", table)
    print()
    print(md)
    print(f"outputs: {args.out}/table.md, table.csv, runs.csv, plot.png "
          f"({meta['wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
