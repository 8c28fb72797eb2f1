"""How a grow sequence is written in search outputs (CLI, trials.csv, plots)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from l2bg.conflict.units import format_units

__all__ = ["delta_label", "format_options", "format_sequence"]


def delta_label(seq: Sequence[Mapping[str, Any]] | None) -> str:
    """The grow coefficients of a grow sequence: ``0.3`` when one δ serves every task, else
    ``0.3/0.5/…`` in task order; empty when no δ was used."""
    deltas = [round(float(g["delta"]), 4) for g in (seq or [])[1:] if g.get("delta") is not None]
    if not deltas:
        return ""
    if len(set(deltas)) == 1:
        return f"{deltas[0]:g}"
    return "/".join(f"{d:g}" for d in deltas)


def format_sequence(seq: Sequence[Mapping[str, Any]] | None) -> str:
    """A grow sequence on one line: ``a b<a[fc3,head]@0.3 c<b[-]@0.3``: task ``b`` bound to
    ``a``, grew slots fc3 and head (``-``: nothing), chosen with δ = 0.3; a task alone is
    unbound (its own independent net). Grown channel groups read ``fc2[0,3]`` (groups 0 and 3
    of fc2), adapters a trailing ``~adapt``: ``b<a[fc1,fc2[0,3]]~adapt@0.5``."""
    if not seq:
        return ""
    parts = []
    for g in seq:
        if g.get("bind_to") is None:
            parts.append(str(g["task"]))
        else:
            slots = ",".join(format_units([str(s) for s in g.get("grown_slots") or []],
                                          g.get("grown_groups"))) or "-"
            mode = "" if g.get("grow_mode", "copy") == "copy" else f"~{g['grow_mode']}"
            delta = "" if g.get("delta") is None else f"@{round(float(g['delta']), 4):g}"
            parts.append(f"{g['task']}<{g['bind_to']}[{slots}]{mode}{delta}")
    return " ".join(parts)


def format_options(options: Mapping[str, Any] | None) -> str:
    """A strategy's recorded options on one line, ``grow_rule=conflict bind_rule=…`` (unset ones
    left out)."""
    return " ".join(f"{k}={v}" for k, v in (options or {}).items() if v is not None)
