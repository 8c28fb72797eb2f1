"""The picture of one run: ``acc_matrix.png``, the test accuracy matrix R (docs/design.md §2.11)
as an annotated heatmap beside each task's forgetting (its accuracy just after it was learned,
at the end of the run, and its independent net's). ``l2bg run`` writes it into every --out."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from l2bg.base.figures import annotated_heatmap, figure, save

__all__ = ["ACC_MATRIX", "acc_matrix_figure", "plot_acc_matrix"]

ACC_MATRIX = "acc_matrix.png"


def acc_matrix_figure(record: Mapping[str, Any]) -> Any:
    """The figure of ``acc_matrix.png`` for a run record (``results.json``): left, R[i][j] in %
    (rows: after learning task i; columns: evaluated on task j; blank: not learned yet); right,
    per task, test accuracy just after learning it (R[j][j]) against at the end (R[T-1][j]):
    the gap is its forgetting, whose mean over all but the last task is -BWT."""
    import numpy as np

    R = record["acc_matrix"]
    names = [t["name"] for t in record["tasks"]]
    T = len(R)
    values = np.array([[np.nan if v is None else 100.0 * v for v in row] for row in R])
    fig = figure(4.2 + 0.55 * T + 3.2, 2.6 + 0.42 * T, constrained=True)
    left, right = fig.subplots(1, 2, width_ratios=[1.2 + 0.1 * T, 1])
    finite = values[np.isfinite(values)]
    floor = float(np.floor((finite.min() - 5.0) / 10.0) * 10.0) if finite.size else 0.0
    im = annotated_heatmap(left, values, [f"after {n}" for n in names], names,
                           vmin=max(0.0, floor), vmax=100.0, fmt=lambda v: f"{v:.1f}")
    fig.colorbar(im, ax=left, shrink=0.85)
    left.set_xlabel("evaluated on task")
    left.set_ylabel("after learning task")
    left.set_title("accuracy matrix R (test, %)", fontsize=9)

    just = [values[j, j] for j in range(T)]
    end = [values[T - 1, j] for j in range(T)]
    indep = [100.0 * t["independent_test_acc"] if t.get("independent_test_acc") is not None
             else np.nan for t in record["tasks"]]
    x = np.arange(T)
    right.bar(x - 0.2, just, 0.4, color="tab:blue", label="just after learning it")
    right.bar(x + 0.2, end, 0.4, color="tab:orange", label="at the end of the run")
    right.plot(x, indep, ls="", marker="_", ms=14, mew=2, c="k", label="its independent net")
    finite = [v for v in [*just, *end, *indep] if np.isfinite(v)]
    low = min(finite, default=0.0)
    right.set_ylim(max(0.0, low - 0.15 * (100 - low) - 2), 100.0)
    right.set_xticks(x, names, rotation=45 if T > 3 else 0, ha="right" if T > 3 else "center",
                     fontsize=8)
    right.set_ylabel("test accuracy (%)")
    bwt = record.get("bwt")
    right.set_title("forgetting per task" + ("" if bwt is None else
                                             f" (BWT {100 * bwt:+.2f} points)"), fontsize=9)
    right.grid(axis="y", alpha=0.3)
    right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2 - 0.04 * (T > 3)),
                 ncols=1, frameon=False)  # below the bars, never over them
    opts = record.get("strategy_options") or {}
    detail = ", ".join(f"{k} {v}" for k, v in opts.items() if v is not None)
    fig.suptitle(f"{record.get('benchmark')} · {record.get('strategy')}"
                 + (f" ({detail})" if detail else "") + f" · seed {record.get('seed')}",
                 fontsize=9)
    return fig


def plot_acc_matrix(record: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``acc_matrix.png`` (:func:`acc_matrix_figure`) at ``path``."""
    return save(acc_matrix_figure(record), path)
