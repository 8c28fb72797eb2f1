"""``l2bg run --seeds 0,1,2``: one ``l2bg run`` per seed into ``--out/seed-N/``, then a summary
with mean ± sd over the seeds.

Each seed is a complete run (its own claim on ``seed-N/``, results.json, JointNet). The summary
(``summary.md``, then ``summary.json``, the completion marker) reads the seeds' results.json
through :class:`l2bg.learn.record.RunRecord` and averages them with the quality table's
aggregation (:func:`l2bg.learn.record.over_seeds`). ``--out`` itself is claimed for the summary
by the one claim rule of :mod:`l2bg.base.outdir`.
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from l2bg.base.errors import L2BGError

if TYPE_CHECKING:  # pragma: no cover
    from l2bg.learn.record import RunRecord

__all__ = ["SUMMARY", "cmd_run_seeds", "seed_summary", "summary_markdown"]

#: What ``--seeds`` writes to --out besides the seed-N/ directories (summary.json last: the
#: completion marker).
SUMMARY = ("summary.md", "summary.json")

_COLUMNS = (("test_acc", "test acc %", ".2f"), ("val_acc", "val acc %", ".2f"),
            ("params_ratio", "params / independent", ".3f"), ("gain", "gain Δ %", ".2f"),
            ("bwt", "BWT %", ".2f"))


def cmd_run_seeds(args: argparse.Namespace, run_one: Callable[[argparse.Namespace], int],
                  fresh_out: Callable[[str, str], Path]) -> int:
    """Run ``run_one`` (``l2bg run``) once per seed of ``args.seeds`` and write the summary."""
    from l2bg.base.fileio import atomic_write, read_json_or_fail, write_json
    from l2bg.base.outdir import OutDir
    from l2bg.learn.record import RunRecord

    seeds = list(args.seeds)
    if not seeds:
        raise L2BGError("--seeds is empty; give comma-separated seeds such as --seeds 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise L2BGError(f"--seeds {','.join(map(str, seeds))} repeats a seed; give each once")
    parent = fresh_out(args.benchmark, "seeds") if args.out is None else Path(args.out)
    with OutDir(parent, SUMMARY, "run-seeds") as target:
        records = []
        for seed in seeds:
            one = copy.copy(args)
            one.seed, one.seeds, one.out = seed, None, str(parent / f"seed-{seed}")
            run_one(one)
            path = Path(one.out) / "results.json"
            records.append(RunRecord.from_json(read_json_or_fail(path), str(path)))
        summary = seed_summary(records, seeds)
        atomic_write(target.staging / "summary.md", summary_markdown(summary))
        write_json(target.staging / "summary.json", summary)
        target.publish()
    if not args.quiet:
        print()
        print(summary_markdown(summary).rstrip())
        print(f"summary: {parent / 'summary.json'}")
    return 0


def seed_summary(records: Sequence[RunRecord], seeds: Sequence[int]) -> dict[str, Any]:
    """The runs of one configuration over seeds: each seed's numbers (:meth:`RunRecord.summary`)
    and their mean ± sd (``{key}_mean``, ``{key}_sd``; NaN is written as null)."""
    from l2bg.learn.record import over_seeds

    first = records[0]
    rows = [{"seed": s, "dir": f"seed-{s}", **r.summary()}
            for s, r in zip(seeds, records, strict=True)]
    stats = {k: (None if isinstance(v, float) and math.isnan(v) else v)
             for k, v in over_seeds(rows).items()}
    return {"benchmark": first.benchmark, "strategy": first.strategy,
            "strategy_options": first.strategy_options, "seeds": list(seeds), "runs": rows,
            "mean_sd": stats,
            "environment": None if first.environment is None else first.environment.to_json()}


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as a markdown table: one row per seed, then mean ± sd."""
    def cell(v: Any, fmt: str) -> str:
        return "n/a" if v is None else f"{v:{fmt}}"

    head = " | ".join(name for _, name, _ in _COLUMNS)
    lines = [f"**{summary['benchmark']} · {summary['strategy']}** (seeds "
             f"{', '.join(map(str, summary['seeds']))}; mean ± sd)", "",
             f"| seed | {head} |", "|---" * (len(_COLUMNS) + 1) + "|"]
    for r in summary["runs"]:
        lines.append(f"| {r['seed']} | "
                     + " | ".join(cell(r[k], fmt) for k, _, fmt in _COLUMNS) + " |")
    ms = summary["mean_sd"]
    lines.append("| mean ± sd | " + " | ".join(
        f"{cell(ms[f'{k}_mean'], fmt)} ± {cell(ms[f'{k}_sd'], fmt)}"
        if ms[f"{k}_mean"] is not None else "n/a" for k, _, fmt in _COLUMNS) + " |")
    return "\n".join(lines) + "\n"
