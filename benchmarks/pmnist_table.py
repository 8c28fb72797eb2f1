"""Regenerates the strategy tables of the closing notes on permuted MNIST.

    python benchmarks/pmnist_table.py --data-root ~/data/mnist --seeds 0 1 2 \
        --runs independent shared full l2bg:0 l2bg:0.25 l2bg:0.5 l2bg:0.75 l2bg:1 \
               random random-matched

Each run is ``strategy`` or ``l2bg:δ``. ``random`` is the paper's random-growth control;
``random-matched`` (after ``l2bg:0.5``): each task grows as many slots as l2bg did at δ=0.5, but
which slots and the bind target are random (the matched comparison). Rows go to stdout as a
markdown table and, with ``--json``, to a file. Independent nets are cached in ``--cache-dir``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from l2bg.data import build_benchmark
from l2bg.learn.independent import IndependentCache
from l2bg.learn.learner import GrowStep, Learner
from l2bg.learn.record import RunRecord
from l2bg.learn.training import default_config, resolve_device
from l2bg.net.catalog import template_for


def run_one(learner: Learner, spec: str) -> RunRecord:
    if spec.startswith("l2bg:"):
        return learner.run("l2bg", delta=float(spec.split(":", 1)[1])).record
    return learner.run(spec).record


def run_matched_random(learner: Learner, ref: RunRecord | None, seed: int) -> RunRecord:
    """The random-growth control matched to an l2bg run: every task grows as many slots as l2bg
    grew for it, but the slots and the bind target are drawn at random (seeded)."""
    if ref is None:
        raise SystemExit("random-matched needs l2bg:0.5 earlier in --runs")
    rng = random.Random(seed + 12345)
    names = [t.name for t in learner.tasks]
    slots = learner.template.expandable_slots
    seq = [GrowStep(bind_to=rng.choice(names[:i]),
                    slots=sorted(rng.sample(slots, len(ref.tasks[i].decision.slots))))
           for i in range(1, len(names))]
    return learner.run("random", sequence=seq).record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--runs", nargs="+", default=["independent", "shared", "full", "l2bg:0.5"])
    p.add_argument("--cache-dir", type=Path, default=Path("runs/bench-cache"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    device = resolve_device("auto")
    rows = []
    for seed in args.seeds:
        bench = build_benchmark("pmnist", num_tasks=args.tasks, seed=seed, data_root=args.data_root)
        template = template_for(bench)
        config = default_config(template.name, epochs=args.epochs, seed=seed)
        learner = Learner(
            bench.tasks,
            template,
            config,
            benchmark=bench.name,
            seed=seed,
            device=device,
            cache=IndependentCache(args.cache_dir),
        )
        ref = None
        for spec in args.runs:
            t0 = time.perf_counter()
            rec = None if spec == "random-matched" else run_one(learner, spec)
            if spec == "random-matched":
                rec = run_matched_random(learner, ref, seed)
            if spec == "l2bg:0.5":
                ref = rec
            row = {
                "run": spec,
                "seed": seed,
                "avg_test_acc": rec.avg_test_acc,
                "gain": rec.gain,
                "bwt": rec.bwt,
                "fwt": rec.fwt,
                "params": rec.params,
                "wall_s": time.perf_counter() - t0,
                "timings": rec.timings,
                "grown": [g["grown_slots"] for g in rec.grow_sequence()],
                "bind": [d.bind_to for d in rec.decisions],
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print("| run | seeds | avg test acc | gain Δ (%) | BWT | FWT | params | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in args.runs:
        rs = [r for r in rows if r["run"] == spec]

        def ms(key, scale=1.0, fmt=".2f", rs=rs):
            vals = [r[key] * scale for r in rs if r[key] is not None]
            if not vals:
                return "n/a"
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            return f"{statistics.mean(vals):{fmt}} ± {sd:{fmt}}"

        print(
            f"| {spec} | {len(rs)} | {ms('avg_test_acc', 100)} % | {ms('gain')} | "
            f"{ms('bwt', 100)} % | {ms('fwt', 100)} % | {ms('params', 1, '.0f')} | "
            f"{ms('wall_s', 1, '.1f')} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
