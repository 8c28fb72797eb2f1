"""The figures a researcher reads without help: labels inside the axes and never over one
another, every run visible, the legend beside the data and saying what the front is, one
parameter axis (ratio below, absolute count on top) in plot.png and pareto.png, integer trial
ticks. Drawn from hand-made trials and tables, no training."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("matplotlib")

from l2bg.base.figures import figure, place_labels  # noqa: E402
from l2bg.search.plots import pareto_figure, plot_hypervolume, plot_pareto  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
INDEPENDENT = 2_095_550


def _quality_table():
    spec = importlib.util.spec_from_file_location("quality_table",
                                                  ROOT / "benchmarks" / "quality_table.py")
    qt = importlib.util.module_from_spec(spec)
    sys.modules["quality_table"] = qt
    spec.loader.exec_module(qt)
    return qt


def _boxes(fig, texts):
    """The text boxes (an annotation's own extent includes its leader line)."""
    from matplotlib.text import Text

    fig.canvas.draw()  # as saved
    r = fig.canvas.get_renderer()
    return [Text.get_window_extent(t, r) for t in texts]


def assert_readable(fig, ax, texts):
    """Every label inside its axes, no two labels overlapping."""
    boxes = _boxes(fig, texts)
    frame = ax.get_window_extent(fig.canvas.get_renderer())
    for t, b in zip(texts, boxes, strict=True):
        assert (b.x0 >= frame.x0 - 0.5 and b.x1 <= frame.x1 + 0.5 and b.y0 >= frame.y0 - 0.5
                and b.y1 <= frame.y1 + 0.5), (t.get_text(), b, frame)
    for i in range(len(boxes)):
        for j in range(i):
            assert not boxes[i].overlaps(boxes[j]), (texts[i].get_text(), texts[j].get_text())


def assert_legend_beside(fig):
    """The legend covers no axes (so no data)."""
    r = fig.canvas.get_renderer()
    leg = fig.legends[0].get_window_extent(r)
    for ax in fig.axes:
        assert not leg.overlaps(ax.get_window_extent(r))


# --------------------------------------------------------------------------- label placement


@settings(max_examples=12, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=10),
       st.sampled_from([0.0, 0.001, 0.02]))
def test_placed_labels_stay_inside_and_apart(points, spread):
    """Random points, some nearly on one spot (``spread``), labels near the edges: every label
    inside the axes and none over another."""
    points = [(x * (1 - spread) + spread * k, y) for k, (x, y) in enumerate(points)]
    fig = figure(5, 3.6)
    ax = fig.add_subplot()
    ax.scatter(*zip(*points, strict=True))
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    fig.canvas.draw()
    texts = place_labels(ax, points, [f"δ=0.{k}5" for k in range(len(points))])
    assert_readable(fig, ax, texts)


def test_a_label_avoids_markers_and_lines():
    """A free spot exists: the label takes it rather than covering the neighbour or the line."""
    fig = figure(4, 3)
    ax = fig.add_subplot()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    fig.canvas.draw()
    line = [(0.0, 0.5), (1.0, 0.5)]
    (t,) = place_labels(ax, [(0.5, 0.5)], ["δ=0.25"], obstacles=[(0.53, 0.5), (0.5, 0.53)],
                        lines=[line])
    (box,) = _boxes(fig, [t])
    to_px = ax.transData.transform
    for x, y in [(0.53, 0.5), (0.5, 0.53), *[(k / 20, 0.5) for k in range(21)]]:
        px, py = to_px((x, y))
        assert not (box.x0 < px < box.x1 and box.y0 < py < box.y1), (x, y)


# --------------------------------------------------------------------------- plot.png

def _row(run, strategy, ratio, test, val, delta=None, grow=None, front=False):
    return {"benchmark": "pmnist", "run": run, "strategy": strategy, "grow_rule": grow,
            "bind_rule": "least-conflict", "similarity": "rsa-spearman", "delta": delta,
            "test_acc_mean": test, "test_acc_sd": 0.0, "val_acc_mean": val,
            "params_ratio_mean": ratio, "params_ratio_sd": 0.0, "front": front,
            "params_independent": INDEPENDENT}


#: The main job's table: a crowd near (1.0, 92%) where full, independent and four l2bg runs meet.
CROWDED = [
    _row("independent", "independent", 1.0, 91.60, 91.36),
    _row("shared", "shared", 0.2, 75.6, 74.48, front=True),
    _row("full", "full", 1.0, 91.95, 91.49),
    _row("random", "random", 0.599, 90.0, 89.76, front=True),
    *[_row(f"l2bg-{g}-{d}", "l2bg", r, t, v, d, g, f) for g, d, r, t, v, f in [
        ("conflict", 0.25, 0.206, 78.85, 78.24, True), ("conflict", 0.5, 0.378, 81.76, 79.76, True),
        ("conflict", 0.75, 0.550, 87.95, 87.15, True),
        ("similar-first", 0.25, 0.822, 92.05, 91.17, True),
        ("similar-first", 0.5, 0.994, 92.05, 91.55, True),
        ("similar-first", 0.75, 1.0, 91.89, 91.41, False),
        ("released", 0.25, 0.650, 91.07, 89.79, True), ("released", 0.5, 0.822, 92.05, 91.17, True),
        ("released", 0.75, 0.994, 92.05, 91.55, True)]],
]


@pytest.fixture(scope="module")
def qt():
    return _quality_table()


def test_plot_png_labels_readable_every_run_visible(qt, tmp_path):
    fig = qt.plot_figure(CROWDED)
    ax = fig.axes[0]
    texts = [t for t in ax.texts if t.get_text().startswith("δ=")]
    assert sorted(t.get_text() for t in texts) == sorted(f"δ={r['delta']:g}" for r in CROWDED
                                                          if r["delta"] is not None)
    assert_readable(fig, ax, texts)
    assert_legend_beside(fig)
    # baselines (full among them) are hollow and drawn over the filled l2bg markers
    marks = [ln for ln in ax.lines if ln.get_marker() not in (None, "None", "")]
    hollow = [ln for ln in marks if ln.get_markerfacecolor() == "none"]
    filled = [ln for ln in marks if ln.get_markerfacecolor() != "none"]
    assert {ln.get_marker() for ln in hollow} >= {"D", "s", "^"}
    assert min(ln.get_zorder() for ln in hollow) > max(ln.get_zorder() for ln in filled)
    # runs on one spot are concentric: no two markers there share a size
    spot = [ln.get_markersize() for ln in marks
            if abs(ln.get_xdata()[0] - 0.994) < 0.01 and abs(ln.get_ydata()[0] - 92.0) < 0.2]
    assert len(spot) >= 3 and len(set(spot)) == len(spot)
    qt.save(fig, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_png_legend_and_axes_say_what_they_show(qt):
    fig = qt.plot_figure(CROWDED)
    ax = fig.axes[0]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    front = next(s for s in labels if "Pareto front" in s)
    assert "validation" in front and "test" in front  # chosen on val, drawn on test: said
    assert ax.get_xlabel() == "parameters / independent nets"
    (top,) = ax.child_axes  # the absolute count, on the same scale
    lo, hi = ax.get_xlim()
    assert top.get_xlim() == pytest.approx((lo * INDEPENDENT, hi * INDEPENDENT))
    for handle in fig.legends[0].legend_handles:  # legend markers at normal size
        assert handle.get_markersize() <= 8


# --------------------------------------------------------------------------- pareto.png


def _trial(number, ratio, gain, delta):
    attrs = {"params": int(ratio * INDEPENDENT), "params_ratio": ratio,
             "params_independent": INDEPENDENT, "gain": gain,
             "grow_sequence": [{"task": 0, "bind_to": None, "delta": None, "grown_slots": []},
                               {"task": 1, "bind_to": 0, "delta": delta,
                                "grown_slots": ["fc3"]}]}
    return SimpleNamespace(number=number, user_attrs=attrs)


def test_pareto_png_same_axis_as_plot_png_and_readable(tmp_path):
    """A front crowded in the top right (where the README's labels used to pile up and leave
    the axes), baselines and --max-params: labels readable, legend beside the axes, x as
    parameters / independent with the count on top."""
    front = [_trial(k, r, g, d) for k, (r, g, d) in enumerate(
        [(0.2, -150, 0.1), (0.4, -60, 0.3), (0.9, 1.0, 0.5), (0.92, 1.5, 0.6), (0.95, 1.8, 0.7),
         (0.97, 2.0, 0.8), (0.99, 2.1, 0.9)])]
    others = [_trial(10 + k, 0.3 + 0.1 * k, -100 + 15 * k, 0.2) for k in range(7)]
    others.append(_trial(20, 0.2, -150, 0.15))  # the network of trial 0, built again
    baselines = {"independent": {"gain": 0.0, "params": INDEPENDENT,
                                 "params_independent": INDEPENDENT},
                 "shared": {"gain": -190.0, "params": int(0.2 * INDEPENDENT)}}
    summary = {"objective": "gain", "study": "s", "hypervolume": 1.0,
               "max_params": int(1.05 * INDEPENDENT)}
    fig, data = pareto_figure(front + others, [], front, baselines, summary)
    ax = fig.axes[0]
    texts = [t for t in ax.texts if t.get_text().startswith("#")]
    assert len(texts) == len(front)
    assert texts[0].get_text() == "#0 δ=0.1 (2 trials)"  # the trials on one point, counted
    assert_readable(fig, ax, texts)
    assert_legend_beside(fig)
    assert [p["ratio"] for p in data["front"]] == [0.2, 0.4, 0.9, 0.92, 0.95, 0.97, 0.99]
    assert ax.get_xlabel() == "parameters / independent nets"
    (top,) = ax.child_axes
    assert top.get_xlim() == pytest.approx(tuple(x * INDEPENDENT for x in ax.get_xlim()))
    assert ax.get_xlim()[1] < 2  # the ratio, not the absolute count
    for handle in fig.legends[0].legend_handles:
        assert handle.get_markersize() <= 8
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("Pareto front" in s and "these axes" in s for s in labels)
    written = plot_pareto(tmp_path / "pareto.png", front + others, [], front, baselines, summary)
    assert written == data and (tmp_path / "pareto.png").stat().st_size > 0


@pytest.mark.parametrize("n", [1, 3, 7, 40])
def test_hypervolume_ticks_are_whole_trials(tmp_path, n):
    hist = [{"trials": k, "hypervolume": 0.1 * k} for k in range(1, n + 1)]
    fig = plot_hypervolume(tmp_path / "hv.png", hist, {"hypervolume_reference": {"point": [1]}})
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert (tmp_path / "hv.png").stat().st_size > 0
