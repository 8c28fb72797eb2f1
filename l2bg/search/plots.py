"""The search's figures: ``pareto.png`` (every trial, the front, the baselines) and
``hypervolume.png`` (hypervolume against completed trials). matplotlib is imported when drawing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from l2bg.base.fileio import atomic_write
from l2bg.search.format import delta_label

__all__ = ["count_label", "plot_hypervolume", "plot_pareto"]

REFERENCE = "(-gain, params/independent)"


def count_label(n: float) -> str:
    """A parameter count as people say it: 950, 420k, 1.26M."""
    n = float(n)
    if abs(n) >= 1e6:
        return f"{n / 1e6:.3g}M"
    if abs(n) >= 1e3:
        return f"{n / 1e3:.3g}k"
    return f"{n:.0f}"


def _figure(width: float = 6.4, height: float = 4.4) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def _params_axis(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: count_label(v)))
    ax.set_xlabel("parameters of the JointNet")


def plot_pareto(path: Path, feasible: Sequence[Any], infeasible: Sequence[Any],
                front: Sequence[Any], baselines: Mapping[str, Any],
                summary: Mapping[str, Any]) -> dict[str, Any]:
    """Draw ``pareto.png``; returns the plotted data (front points with their δ labels), so
    tests can hold the figure against pareto.json."""
    acc = summary.get("objective") == "acc"
    ykey, scale = ("avg_val_acc", 100.0) if acc else ("gain", 1.0)

    def xy(items: Sequence[Any]) -> tuple[list[float], list[float]]:
        items = [t for t in items if t.user_attrs.get(ykey) is not None]
        return ([t.user_attrs["params"] for t in items],
                [scale * t.user_attrs[ykey] for t in items])

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    n = len(feasible) + len(infeasible)
    if feasible:  # hollow, so trials that land on the same point stay visible
        ax.scatter(*xy(feasible), s=26, facecolors="none", edgecolors="0.45", linewidths=0.8,
                   label=f"trials ({n})", zorder=2)
    if infeasible:
        ax.scatter(*xy(infeasible), s=22, c="0.6", marker="x", label="over --max-params",
                   zorder=2)
    data: dict[str, Any] = {"front": []}
    if front:
        ordered = sorted(front, key=lambda t: t.user_attrs["params"])
        xs, ys = xy(ordered)
        ax.step(xs, ys, where="post", c="tab:red", lw=1, zorder=3)
        ax.scatter(xs, ys, s=30, c="tab:red", edgecolors="k", linewidths=0.5,
                   label=f"Pareto front ({len(front)})", zorder=4)
        right = min(xs) + 0.8 * (max(xs) - min(xs))
        for t, x, y in zip(ordered, xs, ys, strict=True):
            d = delta_label(t.user_attrs.get("grow_sequence"))
            text = f"#{t.number}" + (f" δ={d}" if d else "")
            flip = len(xs) > 1 and x > right  # labels near the right edge read leftwards
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(-4 if flip else 4, 4),
                        ha="right" if flip else "left", fontsize=6, color="tab:red")
            data["front"].append({"number": t.number, "params": x, "value": y, "label": text})
    marks = {"independent": ("D", "tab:blue"), "shared": ("s", "tab:green")}
    for name, (marker, color) in marks.items():
        b = baselines.get(name)
        if b and b.get("params") is not None and b.get(ykey) is not None:
            ax.scatter([b["params"]], [scale * b[ykey]], marker=marker, s=150,
                       facecolors="none", edgecolors=color, linewidths=2.0,
                       label=f"{name} baseline", zorder=6)
    if summary.get("max_params"):
        ax.axvline(summary["max_params"], ls="--", c="0.4", lw=0.8, label="--max-params")
    _params_axis(ax)
    ax.set_ylabel("average validation accuracy (%)" if acc else "gain Δ (%)")
    ax.set_title(f"{summary.get('study')}: hypervolume {summary.get('hypervolume', 0):.2f}",
                 fontsize=8)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    ax.margins(x=0.08, y=0.08)
    fig.tight_layout()
    _save(fig, path)
    return data


def plot_hypervolume(path: Path, hist: Sequence[Mapping[str, Any]],
                     summary: Mapping[str, Any]) -> None:
    fig = _figure(5.6, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    if hist:
        ax.step([h["trials"] for h in hist], [h["hypervolume"] for h in hist], where="post",
                c="tab:red")
    ax.set_xlabel("completed trials")
    ax.set_ylabel("hypervolume")
    point = (summary.get("hypervolume_reference") or {}).get("point")
    ax.set_title(f"hypervolume of {REFERENCE}, reference {tuple(point or ())}", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
