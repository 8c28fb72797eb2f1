"""``l2bg explain``: why each task bound where it did and which slots grew, from results.json."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from l2bg.base.errors import L2BGError
from l2bg.cli.options import HelpFormatter

if TYPE_CHECKING:  # pragma: no cover
    from l2bg.learn.record import RunRecord

__all__ = ["LEGEND", "add_explain_parser", "cmd_explain", "explain", "record_path"]


def __getattr__(name: str) -> Any:
    """``check_record`` lives with the run record (:mod:`l2bg.learn.record`); loaded on use so
    that the CLI's parser does not import torch."""
    if name == "check_record":
        from l2bg.learn.record import check_record

        return check_record
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_explain_parser(sub: Any) -> argparse.ArgumentParser:
    e = sub.add_parser(
        "explain", formatter_class=HelpFormatter,
        help="show why each task bound where it did and what grew",
        description="Read DIR/results.json of an l2bg run and print, per task, the rules and "
                    "similarity measure that decided, the task score of every bind candidate "
                    "and the slots in the order of the grow rule with their share and "
                    "cumulative share, with a legend of the terms.")
    e.add_argument("dir", type=Path, help="run directory holding results.json (or, with "
                                         "--trial, the --out of `l2bg search`)")
    e.add_argument("--trial", type=int, default=None, metavar="N",
                   help="DIR is the --out of `l2bg search`: explain its trial N "
                        "(DIR/trials/N/results.json; trial numbers as in trials.csv; default: "
                        "DIR is the --out of `l2bg run`)")
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.set_defaults(func=cmd_explain)
    return e


LEGEND = """\
Legend
  C        conflict of a slot between this task's independent net and a candidate task-net:
           1 - similarity of their activations on the same validation inputs (rsa-spearman,
           the default: 1 - Spearman correlation of their RDMs; 0 = same geometry, up to 2)
  ‖C‖₂     task score, the norm of C over the expandable slots; the bind rule least-conflict
           binds to the candidate with the least (ties to the earliest-learned)
  ρ        similarity max(0, 1 - C): the released rules bind to the least ‖ρ‖₂ and grow by ρ
  w        the grow rule's weight of a slot (C for conflict and similar-first, ρ for released)
  share    the slot's share of the weight, w / Σw
  cum      running sum of the shares down the table (slots in the grow rule's order)
  grown    the slots from the top until cum ≥ δ (δ = 0 grows nothing, δ = 1 every slot); a
           grown slot gets a copy of the bound task's layer (--grow-mode adapt: an adapter,
           or a copy where no adapter fits, such as a pooling slot)
  fc2[3]   a unit of --granularity group:G: channel group 3 of slot fc2, scored on its own
           channels; fc2[0,3] in "grew" are its groups 0 and 3
Definitions: docs/design.md, "Definitions" (rules: "Conflict rules in use")."""


def _registered(registry: Any, name: str | None, default: str) -> Any:
    """The rule ``name``, or the default when it is not registered in this process (a plug-in
    rule of another installation): explain still shows the scores."""
    return registry.get(name if name in registry else default)


def explain(r: RunRecord | Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per task: the decision, the rules and measure that made it, every candidate's task score
    and bind key, and the bound candidate's slots in the order of the grow rule with their
    weight, share and cumulative share (the data behind ``l2bg explain``). ``r``: a run record,
    or a results.json of any version as a dict."""
    from l2bg.conflict.rules import BIND_RULES, DEFAULT_BIND_RULE, DEFAULT_GROW_RULE, GROW_RULES
    from l2bg.conflict.units import unit_name
    from l2bg.learn.record import RunRecord

    if not isinstance(r, RunRecord):
        r = RunRecord.from_json(r)
    out = []
    for t in r.tasks:
        d = t.decision
        rules = dict(d.rules or {"bind": None, "grow": None, "similarity": None})
        grown_units = [r.slots[s] for s in d.slots] + [
            unit_name(r.slots, (s, g)) for s, gs in d.groups.items() for g in gs]
        entry: dict[str, Any] = {
            "task": d.task, "bind_to": d.bind_to, "delta": d.delta, "reason": d.reason,
            "rules": rules, "grown_slots": [r.slots[s] for s in d.slots],
            "grown_units": grown_units, "grow_mode": d.mode,
            "grown_by_copy": [r.slots[s] for s in d.copied],
            "grown": d.grown_names(r.slots),
            "candidates": []}
        bind = _registered(BIND_RULES, rules.get("bind"), DEFAULT_BIND_RULE)
        grow = _registered(GROW_RULES, rules.get("grow"), DEFAULT_GROW_RULE)
        for cand, sc in d.conflict.items():
            rows = [{"slot": _slot_name(r.expandable_slots, row["position"]) if sc.units is None
                     else unit_name(r.slots, sc.units[row["position"]]),
                     "conflict": row["conflict"], "weight": row["weight"],
                     "share": row["share"], "cumulative": row["cumulative"]}
                    for row in grow.table(list(sc.layers))]
            entry["candidates"].append({
                "task": cand, "score": sc.score, "bind_key": bind.key(list(sc.layers)),
                "bind_symbol": bind.symbol, "grow_rule": grow.name, "weight": grow.symbol,
                "slots": rows})
        out.append(entry)
    return out


def _how_grown(e: Mapping[str, Any]) -> str:
    """How a task's units grew under a grow mode other than copy: adapters on the shared nodes,
    and the slots that no adapter fits, grown by copy."""
    copied = e["grown_by_copy"]
    parts = [] if len(copied) == len(e["grown_units"]) else ["adapters on the shared nodes"]
    if copied:
        it = "it" if len(copied) == 1 else "them"
        parts.append(f"{', '.join(copied)} grown by copy: no adapter fits {it}")
    return f"{e['grow_mode']}: {'; '.join(parts)}"


def _slot_name(names: list[str], position: int) -> str:
    """An expandable slot by name (its position when the record names fewer slots)."""
    return names[position] if 0 <= position < len(names) else str(position)


def cmd_explain(args: argparse.Namespace) -> int:
    from l2bg.base.fileio import read_json_or_fail
    from l2bg.learn.record import RunRecord

    path = record_path(args.dir, args.trial)
    r = RunRecord.from_json(read_json_or_fail(path), str(path))
    expl = explain(r)
    if args.json:
        print(json.dumps({"benchmark": r.benchmark, "strategy": r.strategy,
                          "strategy_options": r.strategy_options, "tasks": expl}, indent=2))
        return 0
    opts = r.strategy_options
    shown = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in opts.items() if v is not None)
    print(f"{r.benchmark} · strategy {r.strategy}{f' ({shown})' if shown else ''} · "
          f"{len(expl)} tasks")
    if any(e["candidates"] for e in expl):
        print()
        print(LEGEND)
    for e in expl:
        print()
        grew = ", ".join(e["grown"]) or "nothing"
        if e["grown"] and e["grow_mode"] != "copy":
            grew += f" ({_how_grown(e)})"
        if e["bind_to"] is None:
            why = e["reason"] or "its task-net is its independent net"
            print(f"{e['task']}: not bound ({why}); all its slots are its own")
            continue
        head = f"{e['task']}: bound to {e['bind_to']}"
        if not e["candidates"]:
            why = e["reason"] or f"strategy {r.strategy}"
            print(f"{head} ({why}; no conflict scores), grew {grew}")
            continue
        rules = e["rules"]
        how = f"bind rule {rules['bind']}" if rules.get("bind") else "forced bind target"
        grow = (f"grow rule {rules['grow']}, δ = {e['delta']:g}" if rules.get("grow")
                and e["delta"] is not None else "forced slots")
        print(f"{head} ({how}; {grow}; similarity {rules.get('similarity')}), grew {grew}")
        sym = e["candidates"][0]["bind_symbol"]
        extra = f"{sym:>8}" if sym != "‖C‖₂" else ""
        print(f"  {'candidate':<18}{'‖C‖₂':>8}{extra}")
        for c in sorted(e["candidates"], key=lambda c: c["bind_key"]):
            mark = "  ← bound" if c["task"] == e["bind_to"] else ""
            key = f"{c['bind_key']:>8.4f}" if extra else ""
            print(f"  {c['task']:<18}{c['score']:>8.4f}{key}{mark}")
        bound = next(c for c in e["candidates"] if c["task"] == e["bind_to"])
        w = bound["weight"]
        what = "units" if any("[" in row["slot"] for row in bound["slots"]) else "slots"
        print(f"  {what} of {e['bind_to']} in the order of grow rule {bound['grow_rule']} "
              f"(w = {w}):")
        wcol = f"{w:>8}" if w != "C" else ""
        print(f"  {what[:-1]:<10}{'C':>8}{wcol}{'share':>8}{'cum':>8}  grown")
        for row in bound["slots"]:
            g = "yes" if row["slot"] in e["grown_units"] else ""
            wv = f"{row['weight']:>8.4f}" if wcol else ""
            print(f"  {row['slot']:<10}{row['conflict']:>8.4f}{wv}{row['share']:>8.3f}"
                  f"{row['cumulative']:>8.3f}  {g}".rstrip())
    return 0


def record_path(directory: Path, trial: int | None) -> Path:
    """The results.json that ``explain`` reads: DIR's own (``l2bg run``) or, with ``--trial``,
    that of a search's trial; one line naming what to pass when it is not there."""
    from l2bg.search.report import META_FILE, TRIALS_DIR, trial_record_path

    search = (directory / META_FILE).is_file()
    if trial is None:
        path = directory / "results.json"
        if not path.is_file():
            hint = (f"{directory} is the --out of `l2bg search`: add --trial N" if search else
                    "point explain at the --out directory of `l2bg run`")
            raise L2BGError(f"{path} not found; {hint}")
        return path
    if not search:
        raise L2BGError(f"--trial {trial}: {directory} is not the --out of `l2bg search` (no "
                        "search.json); drop --trial for the --out of `l2bg run`")
    path = trial_record_path(directory, trial)
    if not path.is_file():
        found = sorted(int(p.parent.name) for p in (directory / TRIALS_DIR).glob("*/results.json")
                       if p.parent.name.isdigit())
        have = f"recorded trials: {_ranges(found)}" if found else "no trial is recorded yet"
        raise L2BGError(f"--trial {trial}: {directory} holds no record of trial {trial} "
                        f"({have}; failed and running trials have none); pick one of them")
    return path


def _ranges(numbers: list[int]) -> str:
    """0, 1, 2, 5, 7, 8 -> '0-2, 5, 7-8'."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)
