"""Reports of a search, from its storage alone: ``pareto.json``, ``trials.csv``, ``pareto.png``
and ``hypervolume.png`` (``l2bg search --report DIR`` rewrites them)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2bg.base.errors import ParamError
from l2bg.base.fileio import atomic_write, read_json_or_fail, sweep_stale_temps, write_json
from l2bg.learn.metrics import nondominated
from l2bg.search.attrs import TrialAttrs
from l2bg.search.format import delta_label, format_options, format_sequence
from l2bg.search.plots import plot_hypervolume, plot_pareto
from l2bg.search.storage import open_storage, redact_url

__all__ = ["IDENTITY", "META_FILE", "OBJECTIVES", "OUTPUTS", "REFERENCE_POINT", "SIGNATURE_ATTR",
           "TRIALS_DIR", "FrontPoint", "baseline_lines", "hypervolume_2d", "pareto_front",
           "report_dir", "search_meta", "summary_text", "trial_record_path", "write_report"]

#: The files a report writes (any of them left half-written by a killed writer is swept).
OUTPUTS = ("pareto.json", "trials.csv", "pareto.png", "hypervolume.png")
#: Hypervolume reference point on (−gain in %, params / params of ``independent``).
REFERENCE_POINT = (100.0, 1.1)
#: The first objective of a search (maximised; the second is the parameter count, minimised).
OBJECTIVES = ("gain", "acc")
#: What names a search in its search.json: two searches with one --out must agree on it.
IDENTITY = ("study_name", "storage")
#: The file that claims a search's --out and names its study and storage.
META_FILE = "search.json"
#: Study user attribute holding what the study was created for (benchmark, space, objective…).
SIGNATURE_ATTR = "l2bg_search"
#: Where a search keeps the run record of each completed trial, ``OUT/trials/N/results.json``
#: (written by its worker; ``l2bg explain OUT --trial N`` reads it).
TRIALS_DIR = "trials"


def trial_record_path(out: str | os.PathLike, number: int) -> Path:
    """The run record of trial ``number`` of the search whose --out is ``out``."""
    return Path(out) / TRIALS_DIR / str(number) / "results.json"


def hypervolume_2d(points: Sequence[Sequence[float]],
                   reference: Sequence[float] = REFERENCE_POINT) -> float:
    """Area dominated by ``points`` (both coordinates minimised) up to ``reference``; points not
    strictly better than the reference in both coordinates add nothing."""
    rx, ry = reference
    pts = sorted((float(x), float(y)) for x, y in points
                 if math.isfinite(x) and math.isfinite(y) and x < rx and y < ry)
    hv, best_y = 0.0, ry
    for x, y in pts:
        if y < best_y:
            hv += (rx - x) * (best_y - y)
            best_y = y
    return hv


def _hv_point(t: Any) -> tuple[float, float] | None:
    u = TrialAttrs.read(t.user_attrs)
    if u.gain is None or u.params_ratio is None:
        return None
    return (-float(u.gain), float(u.params_ratio))


def _feasible(t: Any) -> bool:
    return all(v <= 0 for v in t.constraints.values())


@dataclass
class FrontPoint:
    """One network on the Pareto front: its representative trial (the first that built it) and
    every trial that built the same network (same decisions, hence the same values)."""

    trial: Any
    trials: list[int]

    @property
    def number(self) -> int:
        return self.trial.number


def network_key(t: Any) -> str:
    """Trials with equal keys built the same JointNet (same decisions)."""
    key = TrialAttrs.read(t.user_attrs).decisions_key
    return str(f"trial-{t.number}" if key is None else key)


def pareto_front(trials: Sequence[Any]) -> list[FrontPoint]:
    """The Pareto front (first value maximised, second minimised) of ``trials``, one point per
    distinct network, sorted by parameters: the one function behind the CLI summary,
    pareto.json, trials.csv and pareto.png."""
    groups: dict[str, list[Any]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        groups.setdefault(network_key(t), []).append(t)
    reps = [g[0] for g in groups.values()]
    on_front = nondominated([(float(t.values[0]), float(t.values[1])) for t in reps])
    front = [FrontPoint(t, [x.number for x in groups[network_key(t)]])
             for t, keep in zip(reps, on_front, strict=True) if keep]
    return sorted(front, key=lambda f: (f.trial.values[1], -f.trial.values[0], f.number))


def _complete_order(t: Any) -> tuple[float, int]:
    return (t.datetime_complete.timestamp() if t.datetime_complete else float("inf"), t.number)


def write_report(study: Any, out: str | os.PathLike, storage_label: str = "") -> dict[str, Any]:
    """Write pareto.json, trials.csv, pareto.png and hypervolume.png for ``study`` into ``out``
    and return the pareto.json content."""
    from optuna.trial import TrialState

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(out, 60.0, OUTPUTS)
    sig = study.user_attrs.get(SIGNATURE_ATTR, {})
    objective = sig.get("objective", "gain")
    trials = study.get_trials(deepcopy=False)
    complete = sorted([t for t in trials if t.state == TrialState.COMPLETE], key=_complete_order)
    feasible = [t for t in complete if _feasible(t)]
    front = pareto_front(feasible)
    hist, pts = [], []
    for k, t in enumerate(complete, start=1):
        p = _hv_point(t)
        if p is not None and _feasible(t):
            pts.append(p)
        hist.append({"trials": k, "number": t.number, "hypervolume": hypervolume_2d(pts)})
    points = []
    for f in front:
        u = TrialAttrs.read(f.trial.user_attrs)
        points.append({
            "number": f.number, "trials": f.trials, "values": list(f.trial.values),
            "gain": u.gain, "gain_raw": u.gain_raw, "params": u.params,
            "params_ratio": u.params_ratio, "avg_val_acc": u.avg_val_acc,
            "avg_test_acc": u.avg_test_acc, "bwt": u.bwt, "fwt": u.fwt, "order": u.order,
            "strategy_options": u.strategy_options, "grow_sequence": u.grow_sequence,
            "net_dir": u.net_dir, "search_params": _rounded(f.trial.params),
            "baseline": u.baseline})
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    baselines = {k[len("baseline_"):]: v for k, v in study.user_attrs.items()
                 if k.startswith("baseline_")}
    if "independent" not in baselines and complete:
        pi = TrialAttrs.read(complete[0].user_attrs).params_independent
        if pi:
            baselines["independent"] = {"gain": 0.0, "params": pi, "params_independent": pi}
    summary = {
        "study": study.study_name, "storage": storage_label, "objective": objective,
        "objectives": [objective, "params"], "directions": ["maximize", "minimize"],
        "space": sig.get("space"), "benchmark": sig.get("benchmark"),
        "max_params": sig.get("max_params"), "trials": counts,
        "hypervolume_reference": {"point": list(REFERENCE_POINT),
                                  "axes": ["-gain (%)", "params / params of independent"]},
        "hypervolume": hist[-1]["hypervolume"] if hist else 0.0,
        "hypervolume_history": hist, "baselines": baselines, "pareto": points,
    }
    figure = plot_pareto(out / "pareto.png", feasible,
                         [t for t in complete if not _feasible(t)], [f.trial for f in front],
                         baselines, summary)
    summary["figure"] = figure  # what pareto.png marks as the front (same points as "pareto")
    write_json(out / "pareto.json", json.loads(json.dumps(summary, default=str)))
    _write_trials_csv(out / "trials.csv", trials, {f.number for f in front}, objective)
    plot_hypervolume(out / "hypervolume.png", hist, summary)
    return summary


def _rounded(params: Mapping[str, Any]) -> dict[str, Any]:
    """Search parameters without float noise of the δ grid (0.30000000000000004 -> 0.3)."""
    return {k: round(v, 10) if isinstance(v, float) else v for k, v in params.items()}


def _write_trials_csv(path: Path, trials: Sequence[Any], front: set[int], objective: str) -> None:
    cols = ["number", "state", f"value_{objective}", "value_params", "gain", "avg_val_acc",
            "avg_test_acc", "params_ratio", "feasible", "pareto", "same_network_as", "baseline",
            "strategy_options", "delta", "grow_sequence",
            "search_params", "duration_s", "worker", "memo_hits", "memo_misses", "memo_prefix_len",
            "memo_full_hit", "indep_trained", "retry_of"]
    first: dict[str, int] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.values:
            first.setdefault(network_key(t), t.number)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for t in sorted(trials, key=lambda t: t.number):
        u = TrialAttrs.read(t.user_attrs)
        dur = (t.datetime_complete - t.datetime_start).total_seconds() if (
            t.datetime_complete and t.datetime_start) else None
        vals = list(t.values) if t.values else [None, None]
        w.writerow([t.number, t.state.name, vals[0], vals[1], u.gain, u.avg_val_acc,
                    u.avg_test_acc, u.params_ratio, _feasible(t) if t.values else None,
                    t.number in front, _same_as(t, first), u.baseline,
                    format_options(u.strategy_options), delta_label(u.grow_sequence),
                    format_sequence(u.grow_sequence),
                    json.dumps(_rounded(t.params), sort_keys=True), dur, u.worker,
                    u.memo_hits, u.memo_misses, u.memo_prefix_len, u.memo_full_hit,
                    u.indep_trained, u.retry_of])
    atomic_write(path, buf.getvalue())


def _same_as(t: Any, first: Mapping[str, int]) -> int | None:
    """The first trial that built the same network as ``t`` (None: ``t`` is that trial)."""
    n = first.get(network_key(t)) if t.values else None
    return None if n is None or n == t.number else n


def summary_text(s: Mapping[str, Any], out: Path) -> str:
    """The report summary printed after a search (and by ``--report``)."""
    same = sum(len(p["trials"]) - 1 for p in s["pareto"])
    lines = [f"study {s['study']} ({s['storage']}): {s['trials'].get('complete', 0)} complete, "
             f"{s['trials'].get('fail', 0)} failed, {s['trials'].get('running', 0)} running; "
             f"hypervolume {s['hypervolume']:.3f}",
             f"Pareto front ({len(s['pareto'])} networks"
             + (f"; {same} more trial{'s' * (same > 1)} built one of them" if same else "")
             + "):",
             "  grow sequence: a<b[slots]@δ = task a bound to b, grew those slots, chosen by δ"]
    for p in s["pareto"]:
        dup = f" (= trials {', '.join(map(str, p['trials'][1:]))})" if len(p["trials"]) > 1 else ""
        lines.append(f"  trial {p['number']:>4}{dup}  gain {p['gain']:+7.2f}%  params "
                     f"{p['params']:>10,} ({p['params_ratio']:.2f}x)  "
                     f"{format_sequence(p['grow_sequence'])}"
                     + (f"  [{opts}]" if (opts := format_options(p.get("strategy_options")))
                        else ""))
    lines += baseline_lines(s.get("baselines") or {})
    lines.append(f"each trial's run record: {out / TRIALS_DIR}/N/results.json")
    lines.append(f"outputs: {out / 'pareto.json'}, trials.csv, pareto.png, hypervolume.png")
    return "\n".join(lines)


#: What each baseline of a search is (``l2bg search --no-baselines`` skips them).
BASELINES = {"independent": "one net per task",
             "shared": "every task bound to the previous one, nothing grown"}


def baseline_lines(baselines: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The baselines of a search as lines of the summary (the same columns as the front)."""
    if not baselines:
        return []
    lines = ["baselines (not trials; marked in pareto.png):"]
    for name in sorted(baselines, key=lambda k: (k not in BASELINES, k)):
        b = baselines[name]
        line = f"  {name:<12}"
        if b.get("gain") is not None:
            line += f"  gain {b['gain']:+7.2f}%"
        if b.get("params") is not None:
            line += f"  params {b['params']:>10,}"
            if b.get("params_independent"):
                line += f" ({b['params'] / b['params_independent']:.2f}x)"
        if b.get("avg_test_acc") is not None:
            line += f"  avg test acc {100 * b['avg_test_acc']:.2f}%"
        lines.append(line + (f"  [{BASELINES[name]}]" if name in BASELINES else ""))
    return lines


def search_meta(config: dict[str, Any], study_name: str, storage_url: str, out: Path,
                cache_dir: Path) -> dict[str, Any]:
    """The content of a search's search.json: what :func:`report_dir` reads, and whose
    IDENTITY claims --out for that search (:func:`l2bg.base.outdir.claim_shared`)."""
    storage = storage_url
    m = re.match(r"^(sqlite(?:\+\w+)?:///)(.+)$", storage)
    if m and not m.group(2).startswith("/") and m.group(2) != ":memory:":
        storage = f"{m.group(1)}{Path(m.group(2)).resolve()}"  # --report from any directory
    if storage.startswith("journal:"):
        p = Path(storage[len("journal:"):]).resolve()
        try:
            storage = f"journal:{p.relative_to(out.resolve())}"
        except ValueError:
            storage = f"journal:{p}"
    config = {**config, "storage": None if config.get("storage") is None
              else redact_url(config["storage"])}
    return {"format": "l2bg.search", "version": 2, "study_name": study_name,
            "storage": redact_url(storage), "config": config, "cache_dir": str(cache_dir)}


def report_dir(directory: str | os.PathLike, storage: str | None = None,
               study_name: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """Regenerate the outputs of the search in ``directory`` from its storage."""
    import optuna

    directory = Path(directory)
    meta_file = directory / META_FILE
    if not meta_file.is_file():
        raise ParamError(f"{meta_file} not found; point {{report}} at the {{out}} directory of a "
                         "search", "report", "out")
    meta = read_json_or_fail(meta_file, "rerun the search")
    fields = {"storage": storage, "study_name": study_name}
    for key in fields:
        if fields[key] is None:
            value = meta.get(key) if isinstance(meta, dict) else None
            if not isinstance(value, str) or not value:
                raise ParamError(f"{meta_file} has no {key} (a non-empty string) or was edited; "
                                 f"pass {{{key}}} or rerun the search", key)
            fields[key] = value
    url = fields["storage"]
    if url.startswith("journal:") and not Path(url[len("journal:"):]).is_absolute():
        url = f"journal:{directory / url[len('journal:'):]}"
    if "***" in url:
        raise ParamError(f"search.json holds the storage without its password ({url}); pass "
                         "{storage} URL with the password", "storage")
    if url.startswith("journal:") and not Path(url[len("journal:"):]).is_file():
        raise ParamError(f"journal {url[len('journal:'):]} not found; pass {{storage}} URL",
                         "storage")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = open_storage(url)
    name = fields["study_name"]
    try:
        study = optuna.load_study(study_name=name, storage=st)
    except KeyError as exc:
        raise ParamError(f"no study {name!r} in {redact_url(url)}; check {{study_name}}",
                         "study_name") from exc
    summary = write_report(study, directory, storage_label=redact_url(url))
    if not quiet:
        print(summary_text(summary, directory))
    return summary
