"""``l2bg explain``: why each task bound where it did and which slots grew, from results.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from l2bg.errors import L2BGError

__all__ = ["add_explain_parser", "cmd_explain"]


def add_explain_parser(sub: Any) -> argparse.ArgumentParser:
    e = sub.add_parser("explain", help="show why each task bound where it did and what grew",
                       description="Read DIR/results.json of an l2bg run and print, per task, "
                                   "the task score of every bind candidate and the conflict "
                                   "distribution that chose the grown slots.")
    e.add_argument("dir", type=Path, help="run directory holding results.json")
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.set_defaults(func=cmd_explain)
    return e


def cmd_explain(args: argparse.Namespace) -> int:
    from l2bg.conflict import distribution
    from l2bg.fileio import read_json

    path = args.dir / "results.json"
    if not path.is_file():
        raise L2BGError(f"{path} not found; point explain at the --out directory of `l2bg run`")
    try:
        r = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise L2BGError(f"{path} is not valid JSON ({exc})") from exc
    slots = r.get("slots") or []
    expl = []
    for t in r["tasks"]:
        entry: dict[str, Any] = {"task": t["name"], "bind_to": t["bind_to"], "delta": t["delta"],
                                 "grown_slots": [slots[s] if s < len(slots) else s
                                                 for s in t["grown_slots"]], "candidates": []}
        for cand, sc in (t.get("conflict") or {}).items():
            dist = distribution(sc["layers"])
            order = sorted(range(len(dist)), key=lambda i: (-sc["layers"][i], i))
            cum, rows = 0.0, []
            for i in order:
                cum += dist[i]
                rows.append({"slot": slots[i] if i < len(slots) else i,
                             "conflict": sc["layers"][i], "share": dist[i], "cumulative": cum})
            entry["candidates"].append({"task": cand, "score": sc["score"], "slots": rows})
        expl.append(entry)
    if args.json:
        print(json.dumps({"benchmark": r["benchmark"], "strategy": r["strategy"], "tasks": expl},
                         indent=2))
        return 0
    print(f"{r['benchmark']} · strategy {r['strategy']} · {len(expl)} tasks")
    for e in expl:
        print()
        if e["bind_to"] is None:
            print(f"{e['task']}: first task or independent; its task-net is its independent net")
            continue
        head = f"{e['task']}: bound to {e['bind_to']}"
        if not e["candidates"]:
            print(f"{head} (strategy {r['strategy']}: no conflict model), grew "
                  f"{', '.join(e['grown_slots']) or 'nothing'}")
            continue
        print(f"{head} (least task score ‖C‖₂), δ = {e['delta']}, grew "
              f"{', '.join(e['grown_slots']) or 'nothing'}")
        print(f"  {'candidate':<18}{'‖C‖₂':>8}")
        for c in sorted(e["candidates"], key=lambda c: c["score"]):
            mark = "  ← bound" if c["task"] == e["bind_to"] else ""
            print(f"  {c['task']:<18}{c['score']:>8.4f}{mark}")
        bound = next(c for c in e["candidates"] if c["task"] == e["bind_to"])
        print(f"  conflict with {e['bind_to']} by slot (descending):")
        print(f"  {'slot':<10}{'C':>8}{'C̃':>8}{'cum':>8}  grown")
        for row in bound["slots"]:
            g = "yes" if row["slot"] in e["grown_slots"] else ""
            print(f"  {row['slot']!s:<10}{row['conflict']:>8.4f}{row['share']:>8.3f}"
                  f"{row['cumulative']:>8.3f}  {g}")
    return 0
