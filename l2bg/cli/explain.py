"""``l2bg explain``: why each task bound where it did and which slots grew, from results.json."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from l2bg.base.errors import L2BGError
from l2bg.cli.options import HelpFormatter

__all__ = ["LEGEND", "add_explain_parser", "check_record", "cmd_explain", "explain",
           "record_path"]


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
           grown slot gets a copy of the bound task's layer
Definitions: docs/design.md, "Definitions" (rules: "Conflict rules in use")."""


def _slot_name(names: list[str], s: Any) -> str:
    """A slot as its name (results.json from older versions gives indices)."""
    if isinstance(s, int) and 0 <= s < len(names):
        return names[s]
    return str(s)


def _rules_of(task: dict[str, Any]) -> dict[str, str | None]:
    """The rules and measure behind a task's decision (records older than the rules: the
    defaults, which were the only rules then)."""
    from l2bg.conflict.rules import DEFAULT_BIND_RULE, DEFAULT_GROW_RULE
    from l2bg.conflict.similarity import DEFAULT_SIMILARITY

    if "rules" in task:
        return dict(task["rules"] or {"bind": None, "grow": None, "similarity": None})
    scored = bool(task.get("conflict"))
    return {"bind": DEFAULT_BIND_RULE if scored else None,
            "grow": DEFAULT_GROW_RULE if scored and task.get("delta") is not None else None,
            "similarity": DEFAULT_SIMILARITY if scored else None}


def _registered(registry: Any, name: str | None, default: str) -> Any:
    """The rule ``name``, or the default when it is not registered in this process (a plug-in
    rule of another installation): explain still shows the scores."""
    return registry.get(name if name in registry else default)


def explain(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Per task: the decision, the rules and measure that made it, every candidate's task score
    and bind key, and the bound candidate's slots in the order of the grow rule with their
    weight, share and cumulative share (the data behind ``l2bg explain``)."""
    from l2bg.conflict.rules import BIND_RULES, DEFAULT_BIND_RULE, DEFAULT_GROW_RULE, GROW_RULES

    slots = list(r.get("slots") or [])
    expandable = list(r.get("expandable_slots") or slots)
    out = []
    for t in r["tasks"]:
        rules = _rules_of(t)
        entry: dict[str, Any] = {
            "task": t["name"], "bind_to": t["bind_to"], "delta": t["delta"],
            "reason": t.get("reason", ""), "rules": rules,
            "grown_slots": [_slot_name(slots, s) for s in t["grown_slots"]], "candidates": []}
        bind = _registered(BIND_RULES, rules.get("bind"), DEFAULT_BIND_RULE)
        grow = _registered(GROW_RULES, rules.get("grow"), DEFAULT_GROW_RULE)
        for cand, sc in (t.get("conflict") or {}).items():
            rows = [{"slot": _slot_name(expandable, row["position"]),
                     "conflict": row["conflict"], "weight": row["weight"],
                     "share": row["share"], "cumulative": row["cumulative"]}
                    for row in grow.table(sc["layers"])]
            entry["candidates"].append({
                "task": cand, "score": sc["score"], "bind_key": bind.key(sc["layers"]),
                "bind_symbol": bind.symbol, "grow_rule": grow.name, "weight": grow.symbol,
                "slots": rows})
        out.append(entry)
    return out


def cmd_explain(args: argparse.Namespace) -> int:
    from l2bg.base.fileio import read_json_or_fail

    path = record_path(args.dir, args.trial)
    r = read_json_or_fail(path)
    check_record(r, str(path))
    expl = explain(r)
    if args.json:
        print(json.dumps({"benchmark": r["benchmark"], "strategy": r["strategy"],
                          "strategy_options": r.get("strategy_options") or {}, "tasks": expl},
                         indent=2))
        return 0
    opts = r.get("strategy_options") or {}
    shown = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in opts.items() if v is not None)
    print(f"{r['benchmark']} · strategy {r['strategy']}{f' ({shown})' if shown else ''} · "
          f"{len(expl)} tasks")
    if any(e["candidates"] for e in expl):
        print()
        print(LEGEND)
    for e in expl:
        print()
        grew = ", ".join(e["grown_slots"]) or "nothing"
        if e["bind_to"] is None:
            why = e["reason"] or "its task-net is its independent net"
            print(f"{e['task']}: not bound ({why}); all its slots are its own")
            continue
        head = f"{e['task']}: bound to {e['bind_to']}"
        if not e["candidates"]:
            why = e["reason"] or f"strategy {r['strategy']}"
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
        print(f"  slots of {e['bind_to']} in the order of grow rule {bound['grow_rule']} "
              f"(w = {w}):")
        wcol = f"{w:>8}" if w != "C" else ""
        print(f"  {'slot':<10}{'C':>8}{wcol}{'share':>8}{'cum':>8}  grown")
        for row in bound["slots"]:
            g = "yes" if row["slot"] in e["grown_slots"] else ""
            wv = f"{row['weight']:>8.4f}" if wcol else ""
            print(f"  {row['slot']:<10}{row['conflict']:>8.4f}{wv}{row['share']:>8.3f}"
                  f"{row['cumulative']:>8.3f}  {g}".rstrip())
    return 0


def record_path(directory: Path, trial: int | None) -> Path:
    """The results.json that ``explain`` reads: DIR's own (``l2bg run``) or, with ``--trial``,
    that of a search's trial; one line naming what to pass when it is not there."""
    from l2bg.search.report import TRIALS_DIR, trial_record_path

    search = (directory / "search.json").is_file()
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


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def check_record(r: Any, where: str = "results.json") -> None:
    """Check what ``explain`` reads of a run record (a hand-edited results.json): one line naming
    the first key that is missing or of the wrong type."""
    def bad(key: str, want: str) -> L2BGError:
        return L2BGError(f"{where}: {key} must be {want}; it was edited or is not the "
                         "results.json of `l2bg run`")

    if not isinstance(r, dict):
        raise bad("the file", "a JSON object")
    for key in ("benchmark", "strategy"):
        if not isinstance(r.get(key), str):
            raise bad(key, "a string")
    for key in ("slots", "expandable_slots"):
        if r.get(key) is not None and not _names(r[key]):
            raise bad(key, "a list of slot names")
    if r.get("strategy_options") is not None and not isinstance(r["strategy_options"], dict):
        raise bad("strategy_options", "an object")
    slots = r.get("slots") or []
    if not isinstance(r.get("tasks"), list):
        raise bad("tasks", "a list")
    for i, t in enumerate(r["tasks"]):
        at = f"tasks[{i}]"
        if not isinstance(t, dict):
            raise bad(at, "an object")
        for key in ("name", "bind_to", "delta", "grown_slots"):
            if key not in t:
                raise bad(f"{at}.{key}", "present (null where it does not apply)")
        if not isinstance(t["name"], str):
            raise bad(f"{at}.name", "a string")
        if t["bind_to"] is not None and not isinstance(t["bind_to"], str):
            raise bad(f"{at}.bind_to", "a task name or null")
        if t["delta"] is not None and not _number(t["delta"]):
            raise bad(f"{at}.delta", "a number or null")
        if t.get("reason") is not None and not isinstance(t["reason"], str):
            raise bad(f"{at}.reason", "a string")
        rules = t.get("rules")
        if rules is not None and (not isinstance(rules, dict) or not all(
                v is None or isinstance(v, str) for v in rules.values())):
            raise bad(f"{at}.rules", "an object of rule names (or null)")
        grown = t["grown_slots"]
        if not isinstance(grown, list) or not all(
                (isinstance(g, str) and g in slots) or (
                    isinstance(g, int) and not isinstance(g, bool) and 0 <= g < len(slots))
                for g in grown):
            raise bad(f"{at}.grown_slots", "a list of the record's slot names")
        conflict = t.get("conflict") or {}
        if not isinstance(conflict, dict):
            raise bad(f"{at}.conflict", "an object")
        for cand, sc in conflict.items():
            key = f"{at}.conflict[{cand!r}]"
            if not isinstance(sc, dict) or not _number(sc.get("score")):
                raise bad(key, "{\"layers\": [...], \"score\": number}")
            layers = sc.get("layers")
            if not isinstance(layers, list) or not layers or not all(
                    _number(c) and 0 <= c <= 2 for c in layers):  # C = 1 - similarity
                raise bad(f"{key}.layers", "a list of conflict scores in [0, 2], one per slot")
        if conflict and t["bind_to"] not in conflict:
            raise bad(f"{at}.bind_to", "one of the candidates it was scored against")
