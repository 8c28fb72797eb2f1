"""The search's figures: ``pareto.png`` (every trial, the front, the baselines) and
``hypervolume.png`` (hypervolume against completed trials). The x axis is the one convention of
l2bg's plots (:func:`l2bg.base.figures.param_axes`): parameters / independent nets, the absolute
count on top. matplotlib is imported when drawing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from l2bg.base.figures import count_label, figure, integer_ticks, param_axes, place_labels, save
from l2bg.search.format import delta_label

__all__ = ["count_label", "pareto_figure", "plot_hypervolume", "plot_pareto"]

REFERENCE = "(-gain, params/independent)"
BASELINE_MARKS = {"independent": ("D", "tab:blue"), "shared": ("s", "tab:green")}


def _independent(trials: Sequence[Any], baselines: Mapping[str, Any]) -> float | None:
    """The parameter count of the independent nets (the x axis' unit)."""
    for t in trials:
        if t.user_attrs.get("params_independent"):
            return float(t.user_attrs["params_independent"])
    for b in baselines.values():
        if b and b.get("params_independent"):
            return float(b["params_independent"])
    return None


def plot_pareto(path: Path, feasible: Sequence[Any], infeasible: Sequence[Any],
                front: Sequence[Any], baselines: Mapping[str, Any],
                summary: Mapping[str, Any]) -> dict[str, Any]:
    """Draw ``pareto.png``; returns the plotted data (front points with their δ labels), so
    tests can hold the figure against pareto.json."""
    fig, data = pareto_figure(feasible, infeasible, front, baselines, summary)
    save(fig, path)
    return data


def pareto_figure(feasible: Sequence[Any], infeasible: Sequence[Any], front: Sequence[Any],
                  baselines: Mapping[str, Any], summary: Mapping[str, Any]
                  ) -> tuple[Any, dict[str, Any]]:
    """The figure of ``pareto.png`` and its data: trials (hollow), the front (red, each point
    labelled ``#trial δ=…`` where no label or marker is), the baselines, ``--max-params``."""
    from matplotlib.lines import Line2D

    acc = summary.get("objective") == "acc"
    ykey, scale = ("avg_val_acc", 100.0) if acc else ("gain", 1.0)
    unit = _independent([*feasible, *infeasible], baselines)

    def ratio(attrs: Mapping[str, Any]) -> float:
        if attrs.get("params_ratio") is not None:
            return float(attrs["params_ratio"])
        return float(attrs["params"]) / unit if unit else float(attrs["params"])

    def xy(items: Sequence[Any]) -> tuple[list[float], list[float]]:
        items = [t for t in items if t.user_attrs.get(ykey) is not None]
        return ([ratio(t.user_attrs) for t in items],
                [scale * t.user_attrs[ykey] for t in items])

    fig = figure(7.4, 4.4, constrained=True)
    ax = fig.add_subplot(1, 1, 1)
    handles: list[Any] = []
    points: list[tuple[float, float]] = []
    n = len(feasible) + len(infeasible)
    xs, ys = xy(feasible)
    same = Counter(zip(xs, ys, strict=True))  # trials that built one network share a point
    if feasible:  # hollow, one circle per point, its area growing with the trials on it
        spots = list(same)
        ax.scatter([x for x, _ in spots], [y for _, y in spots], s=[26 * same[p] for p in spots],
                   facecolors="none", edgecolors="0.45", linewidths=0.8, zorder=2)
        points += spots
        handles.append(Line2D([], [], ls="", marker="o", ms=5, mfc="none", mec="0.45",
                              label=f"trials ({n}; larger: several on one point)"))
    if infeasible:
        xs, ys = xy(infeasible)
        ax.scatter(xs, ys, s=22, c="0.6", marker="x", zorder=2)
        points += zip(xs, ys, strict=True)
        handles.append(Line2D([], [], ls="", marker="x", ms=5, c="0.6",
                              label="over --max-params"))
    data: dict[str, Any] = {"front": []}
    labels: list[tuple[tuple[float, float], str]] = []
    step: list[tuple[float, float]] = []  # the front's line, kept free of labels
    if front:
        ordered = sorted(front, key=lambda t: t.user_attrs["params"])
        xs, ys = xy(ordered)
        ax.step(xs, ys, where="post", c="tab:red", lw=1, zorder=3)
        for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
            step += [(x, y)] + ([(xs[k + 1], y)] if k + 1 < len(xs) else [])
        ax.scatter(xs, ys, s=30, c="tab:red", edgecolors="k", linewidths=0.5, zorder=4)
        handles.append(Line2D([], [], c="tab:red", lw=1, marker="o", ms=5, mec="k", mew=0.5,
                              label=f"Pareto front ({len(front)}), chosen on these axes"))
        for t, x, y in zip(ordered, xs, ys, strict=True):
            d = delta_label(t.user_attrs.get("grow_sequence"))
            text = f"#{t.number}" + (f" δ={d}" if d else "")
            text += f" ({same[(x, y)]} trials)" if same[(x, y)] > 1 else ""
            labels.append(((x, y), text))
            data["front"].append({"number": t.number, "params": t.user_attrs["params"],
                                  "ratio": x, "value": y, "label": text})
    for name, (marker, color) in BASELINE_MARKS.items():
        b = baselines.get(name)
        if b and b.get("params") is not None and b.get(ykey) is not None:
            x, y = ratio(b), scale * b[ykey]
            ax.scatter([x], [y], marker=marker, s=90, facecolors="none", edgecolors=color,
                       linewidths=1.6, zorder=6)
            points.append((x, y))
            handles.append(Line2D([], [], ls="", marker=marker, ms=6, mfc="none", mec=color,
                                  mew=1.4, label=f"{name} baseline"))
    if summary.get("max_params"):
        mp = float(summary["max_params"])
        ax.axvline(mp / unit if unit else mp, ls="--", c="0.4", lw=0.8)
        handles.append(Line2D([], [], ls="--", c="0.4", lw=0.8, label="--max-params"))
    param_axes(ax, unit)
    ax.set_ylabel("average validation accuracy (%)" if acc else "gain Δ (%)")
    ax.set_title(f"{summary.get('study')}: hypervolume {summary.get('hypervolume', 0):.2f}",
                 fontsize=8)
    ax.grid(alpha=0.3)
    ax.margins(x=0.08, y=0.1)
    if handles:  # beside the axes: never over a point
        fig.legend(handles=handles, loc="outside right upper", fontsize=7, frameon=False)
    fig.canvas.draw()  # the layout is final: labels are placed in pixels
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    place_labels(ax, [a for a, _ in labels], [s for _, s in labels], colors=["tab:red"] *
                 len(labels), obstacles=points, lines=[step], fontsize=6.5)
    return fig, data


def plot_hypervolume(path: Path, hist: Sequence[Mapping[str, Any]],
                     summary: Mapping[str, Any]) -> Any:
    """Draw ``hypervolume.png``: the hypervolume after each completed trial (integer ticks)."""
    fig = figure(5.6, 3.6, constrained=True)
    ax = fig.add_subplot(1, 1, 1)
    if hist:
        xs, ys = [h["trials"] for h in hist], [h["hypervolume"] for h in hist]
        ax.step(xs, ys, where="post", c="tab:red")
        ax.plot(xs, ys, ls="", marker="o", ms=3, c="tab:red")
        ax.set_xlim(0.5, max(xs) + 0.5)
    integer_ticks(ax.xaxis)
    ax.set_xlabel("completed trials")
    ax.set_ylabel("hypervolume")
    point = (summary.get("hypervolume_reference") or {}).get("point")
    ax.set_title(f"hypervolume of {REFERENCE}, reference {tuple(point or ())}", fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, path)
    return fig
