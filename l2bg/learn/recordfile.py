"""Reading a results.json of any version: :func:`check_record` (one line naming the first bad
key of a hand-edited file) and :func:`upgrade` (an older layout brought to the current one, the
only place that knows older layouts). The typed record is :mod:`l2bg.learn.record`."""

from __future__ import annotations

import math
from typing import Any

from l2bg.base.errors import L2BGError
from l2bg.conflict.rules import DEFAULT_BIND_RULE, DEFAULT_GROW_RULE
from l2bg.conflict.similarity import DEFAULT_SIMILARITY

__all__ = ["RECORD_VERSION", "check_record", "upgrade"]

RECORD_VERSION = 2
"""2: ``record_version`` and ``environment`` (l2bg 0.3). 1: every results.json before, which has
no ``record_version`` (its older forms: grown slots as indices, no ``rules``, ``reason``,
``strategy_options``, ``expandable_slots`` or ``executor_backend``)."""


# ---------------------------------------------------------------------- reading older files
def upgrade(obj: Any, where: str = "results.json") -> dict[str, Any]:
    """``obj`` (a results.json of any version, checked by :func:`check_record`) in the layout
    of :data:`RECORD_VERSION`, as a new dict. Version 1 → 2: grown slots given as indices become
    names; a missing ``rules`` becomes the defaults, which were the only rules then (none for a
    task that was not scored); a missing ``reason`` is empty, ``strategy_options`` ``{}``,
    ``expandable_slots`` every slot; what the file never held (accuracy matrices, metrics,
    timings, environment) is null."""
    check_record(obj, where)
    version = obj.get("record_version", 1)
    if version != RECORD_VERSION and (not isinstance(version, int) or isinstance(version, bool)
                                      or not 1 <= version <= RECORD_VERSION):
        raise L2BGError(f"{where}: record_version {version!r} is not one this l2bg reads "
                        f"(1..{RECORD_VERSION}); a newer l2bg wrote it: upgrade l2bg")
    r = dict(obj)
    if version < 2:
        r = _upgrade_1_to_2(r)
    return r


def _upgrade_1_to_2(r: dict[str, Any]) -> dict[str, Any]:
    slots = list(r.get("slots") or [])
    r["slots"] = slots
    r["expandable_slots"] = list(r.get("expandable_slots") or slots)
    r["strategy_options"] = dict(r.get("strategy_options") or {})
    tasks = []
    for t in r["tasks"]:
        t = dict(t)
        t["grown_slots"] = [slots[s] if isinstance(s, int) else s for s in t["grown_slots"]]
        if "rules" not in t:
            scored = bool(t.get("conflict"))
            t["rules"] = {"bind": DEFAULT_BIND_RULE if scored else None,
                          "grow": DEFAULT_GROW_RULE if scored and t["delta"] is not None
                          else None,
                          "similarity": DEFAULT_SIMILARITY if scored else None}
        t.setdefault("reason", "")
        tasks.append(t)
    r["tasks"] = tasks
    r["record_version"] = RECORD_VERSION
    return r


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _unit(u: Any, num_slots: int) -> bool:
    """``[slot, group]``: a slot index of the record and a group index >= 0, or null."""
    def index(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    return (isinstance(u, list) and len(u) == 2 and index(u[0]) and u[0] < num_slots
            and (u[1] is None or index(u[1])))


def _names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def check_record(r: Any, where: str = "results.json") -> None:
    """Check a run record read from disk (a hand-edited results.json): one line naming the
    first key that is missing or of the wrong type."""
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
        by_copy = t.get("grown_by_copy")
        grown_names = {slots[g] if isinstance(g, int) else g for g in grown}
        if by_copy is not None and (not isinstance(by_copy, list) or not all(
                isinstance(g, str) and g in grown_names for g in by_copy)):
            raise bad(f"{at}.grown_by_copy", "a list of slot names of its grown_slots")
        if by_copy and t.get("grow_mode") != "adapt":
            raise bad(f"{at}.grown_by_copy", "absent unless grow_mode is adapt")
        groups = t.get("grown_groups")
        if groups is not None and (not isinstance(groups, dict) or not all(
                k in slots and isinstance(v, list) and all(
                    isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in v)
                for k, v in groups.items())):
            raise bad(f"{at}.grown_groups", "an object of slot names to channel-group lists")
        if groups and not (isinstance(t.get("num_groups"), int)
                           and not isinstance(t["num_groups"], bool) and t["num_groups"] >= 1):
            raise bad(f"{at}.num_groups", "the number of channel groups per slot (>= 1)")
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
            units = sc.get("units")
            if units is not None and (not isinstance(units, list) or len(units) != len(layers)
                                      or not all(_unit(u, len(slots)) for u in units)):
                raise bad(f"{key}.units", "a list of [slot index, group or null], one per score")
        if conflict and t["bind_to"] not in conflict:
            raise bad(f"{at}.bind_to", "one of the candidates it was scored against")
