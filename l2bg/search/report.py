"""Reports of a search, from its storage alone: ``pareto.json``, ``trials.csv``, ``pareto.png``
and ``hypervolume.png`` (``l2bg search --report DIR`` rewrites them)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from l2bg.errors import L2BGError
from l2bg.fileio import atomic_write, read_json, write_json
from l2bg.search.storage import open_storage, redact_url

__all__ = ["REFERENCE_POINT", "SIGNATURE_ATTR", "hypervolume_2d", "pareto_trials",
           "report_dir", "summary_text", "write_report"]

#: Hypervolume reference point on (−gain in %, params / params of ``independent``).
REFERENCE_POINT = (100.0, 1.1)
#: Study user attribute holding what the study was created for (benchmark, space, objective…).
SIGNATURE_ATTR = "l2bg_search"


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
    gain = t.user_attrs.get("gain")
    ratio = t.user_attrs.get("params_ratio")
    if gain is None or ratio is None:
        return None
    return (-float(gain), float(ratio))


def _feasible(t: Any) -> bool:
    return all(v <= 0 for v in t.constraints.values())


def pareto_trials(trials: Sequence[Any]) -> list[Any]:
    """Non-dominated trials (first value maximised, second minimised) among ``trials``."""
    pts = [(t, float(t.values[0]), float(t.values[1])) for t in trials]
    front = []
    for t, a, p in pts:
        dominated = any((a2 >= a and p2 <= p) and (a2 > a or p2 < p) for _, a2, p2 in pts)
        if not dominated:
            front.append(t)
    return sorted(front, key=lambda t: (t.values[1], -t.values[0], t.number))


def _complete_order(t: Any) -> tuple[float, int]:
    return (t.datetime_complete.timestamp() if t.datetime_complete else float("inf"), t.number)


def write_report(study: Any, out: str | os.PathLike, storage_label: str = "") -> dict[str, Any]:
    """Write pareto.json, trials.csv, pareto.png and hypervolume.png for ``study`` into ``out``
    and return the pareto.json content."""
    from optuna.trial import TrialState

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sig = study.user_attrs.get(SIGNATURE_ATTR, {})
    objective = sig.get("objective", "gain")
    trials = study.get_trials(deepcopy=False)
    complete = sorted([t for t in trials if t.state == TrialState.COMPLETE], key=_complete_order)
    feasible = [t for t in complete if _feasible(t)]
    front = pareto_trials(feasible)
    hist, pts = [], []
    for k, t in enumerate(complete, start=1):
        p = _hv_point(t)
        if p is not None and _feasible(t):
            pts.append(p)
        hist.append({"trials": k, "number": t.number, "hypervolume": hypervolume_2d(pts)})
    groups: dict[str, dict[str, Any]] = {}
    for t in front:
        key = t.user_attrs.get("decisions_key", str(t.number))
        if key in groups:
            groups[key]["trials"].append(t.number)
            continue
        u = t.user_attrs
        groups[key] = {
            "number": t.number, "trials": [t.number], "values": list(t.values),
            **{k: u.get(k) for k in ("gain", "gain_raw", "params", "params_ratio",
                                     "avg_val_acc", "avg_test_acc", "bwt", "fwt", "order",
                                     "grow_sequence", "net_dir")},
            "search_params": dict(t.params), "baseline": u.get("baseline")}
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    baselines = {k[len("baseline_"):]: v for k, v in study.user_attrs.items()
                 if k.startswith("baseline_")}
    if "independent" not in baselines and complete:
        pi = complete[0].user_attrs.get("params_independent")
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
        "hypervolume_history": hist, "baselines": baselines, "pareto": list(groups.values()),
    }
    write_json(out / "pareto.json", json.loads(json.dumps(summary, default=str)))
    _write_trials_csv(out / "trials.csv", trials, {t.number for t in front}, objective)
    _plot_pareto(out / "pareto.png", complete, front, baselines, summary)
    _plot_hv(out / "hypervolume.png", hist, summary)
    return summary


def _fmt_sequence(seq: Sequence[Mapping[str, Any]] | None) -> str:
    if not seq:
        return ""
    parts = []
    for g in seq:
        if g.get("bind_to") is None:
            parts.append(str(g["task"]))
        else:
            slots = ",".join(str(s) for s in g.get("grown_slots") or []) or "-"
            delta = "" if g.get("delta") is None else f"@{g['delta']:g}"
            parts.append(f"{g['task']}<{g['bind_to']}[{slots}]{delta}")
    return " ".join(parts)


def _write_trials_csv(path: Path, trials: Sequence[Any], front: set[int], objective: str) -> None:
    cols = ["number", "state", f"value_{objective}", "value_params", "gain", "avg_val_acc",
            "avg_test_acc", "params_ratio", "feasible", "pareto", "baseline", "grow_sequence",
            "search_params", "duration_s", "worker", "memo_hits", "memo_misses", "memo_prefix_len",
            "memo_full_hit", "indep_trained", "retry_of"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for t in sorted(trials, key=lambda t: t.number):
        u = t.user_attrs
        dur = (t.datetime_complete - t.datetime_start).total_seconds() if (
            t.datetime_complete and t.datetime_start) else None
        vals = list(t.values) if t.values else [None, None]
        w.writerow([t.number, t.state.name, vals[0], vals[1], u.get("gain"),
                    u.get("avg_val_acc"), u.get("avg_test_acc"), u.get("params_ratio"),
                    _feasible(t) if t.values else None, t.number in front,
                    u.get("baseline"), _fmt_sequence(u.get("grow_sequence")),
                    json.dumps(t.params, sort_keys=True), dur, u.get("worker"),
                    u.get("memo_hits"), u.get("memo_misses"), u.get("memo_prefix_len"),
                    u.get("memo_full_hit"), u.get("indep_trained"), u.get("retry_of")])
    atomic_write(path, buf.getvalue())


def _figure(width: float = 6.4, height: float = 4.4) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save_fig(fig: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def _plot_pareto(path: Path, complete: Sequence[Any], front: Sequence[Any],
                 baselines: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
    acc = summary.get("objective") == "acc"
    ykey, scale = ("avg_val_acc", 100.0) if acc else ("gain", 1.0)

    def xy(items: Sequence[Any]) -> tuple[list[float], list[float]]:
        return ([t.user_attrs["params"] for t in items],
                [scale * t.user_attrs[ykey] for t in items])

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    usable = [t for t in complete if t.user_attrs.get(ykey) is not None]
    feas = [t for t in usable if _feasible(t)]
    infeas = [t for t in usable if not _feasible(t)]
    if feas:
        ax.scatter(*xy(feas), s=18, c="0.6", label=f"trials ({len(complete)})", zorder=2)
    if infeas:
        ax.scatter(*xy(infeas), s=22, c="0.6", marker="x", label="over --max-params", zorder=2)
    if front:
        xs, ys = xy(sorted(front, key=lambda t: t.user_attrs["params"]))
        ax.step(xs, ys, where="post", c="tab:red", lw=1, zorder=3)
        ax.scatter(xs, ys, s=36, c="tab:red", edgecolors="k", linewidths=0.5,
                   label=f"Pareto front ({len(front)})", zorder=4)
    marks = {"independent": ("D", "tab:blue"), "shared": ("s", "tab:green")}
    for name, (marker, color) in marks.items():
        b = baselines.get(name)
        if b and b.get("params") is not None and b.get(ykey) is not None:
            ax.scatter([b["params"]], [scale * b[ykey]], marker=marker, s=110,
                       facecolors="none", edgecolors=color, linewidths=1.6,
                       label=f"{name} baseline", zorder=5)
    if summary.get("max_params"):
        ax.axvline(summary["max_params"], ls="--", c="0.4", lw=0.8, label="--max-params")
    ax.set_xlabel("parameters of the JointNet")
    ax.set_ylabel("average validation accuracy (%)" if acc else "gain Δ (%)")
    ax.set_title(f"{summary.get('study')}: hypervolume {summary.get('hypervolume', 0):.2f}",
                 fontsize=8)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save_fig(fig, path)


def _plot_hv(path: Path, hist: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> None:
    fig = _figure(5.6, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    if hist:
        ax.step([h["trials"] for h in hist], [h["hypervolume"] for h in hist], where="post",
                c="tab:red")
    ax.set_xlabel("completed trials")
    ax.set_ylabel("hypervolume")
    ref = REFERENCE_POINT
    ax.set_title(f"hypervolume of (-gain, params/independent), reference {ref}", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_fig(fig, path)


def summary_text(s: Mapping[str, Any], out: Path) -> str:
    lines = [f"study {s['study']} ({s['storage']}): {s['trials'].get('complete', 0)} complete, "
             f"{s['trials'].get('fail', 0)} failed, {s['trials'].get('running', 0)} running; "
             f"hypervolume {s['hypervolume']:.3f}",
             f"Pareto front ({len(s['pareto'])}):"]
    for p in s["pareto"]:
        lines.append(f"  trial {p['number']:>4}  gain {p['gain']:+7.2f}%  params "
                     f"{p['params']:>10,} ({p['params_ratio']:.2f}x)  "
                     f"{_fmt_sequence(p['grow_sequence'])}")
    lines.append(f"outputs: {out / 'pareto.json'}, trials.csv, pareto.png, hypervolume.png")
    return "\n".join(lines)


def report_dir(directory: str | os.PathLike, storage: str | None = None,
               study_name: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """Regenerate the outputs of the search in ``directory`` from its storage."""
    import optuna

    directory = Path(directory)
    meta_file = directory / "search.json"
    if not meta_file.is_file():
        raise L2BGError(f"{meta_file} not found; point --report at the --out directory of a "
                        "search")
    try:
        meta = read_json(meta_file)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise L2BGError(f"{meta_file} is not valid JSON ({exc}); rerun the search") from exc
    url = storage or meta.get("storage", "")
    if url.startswith("journal:") and not Path(url[len("journal:"):]).is_absolute():
        url = f"journal:{directory / url[len('journal:'):]}"
    if "***" in url:
        raise L2BGError(f"search.json holds the storage without its password ({url}); pass "
                        "--storage URL with the password")
    if url.startswith("journal:") and not Path(url[len("journal:"):]).is_file():
        raise L2BGError(f"journal {url[len('journal:'):]} not found; pass --storage URL")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = open_storage(url)
    name = study_name or meta["study_name"]
    try:
        study = optuna.load_study(study_name=name, storage=st)
    except KeyError as exc:
        raise L2BGError(f"no study {name!r} in {redact_url(url)}; check --study-name") from exc
    summary = write_report(study, directory, storage_label=redact_url(url))
    if not quiet:
        print(summary_text(summary, directory))
    return summary
