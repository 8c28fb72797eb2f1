"""What every l2bg figure shares: an Agg figure that never touches the global backend, an atomic
PNG write, labels placed so that none overlaps another or a marker or leaves the axes, an
annotated heatmap (diverging colour map centred at 0 when a value is negative), the parameter
axis (parameters / independent below, the absolute count above) and integer ticks.

matplotlib is imported when a figure is drawn, never by ``import l2bg``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from l2bg.base.errors import L2BGError
from l2bg.base.fileio import atomic_write

__all__ = ["annotated_heatmap", "count_label", "figure", "have_matplotlib", "integer_ticks",
           "param_axes", "place_labels", "save"]

#: Largest matrix (rows or columns) whose cells carry their values.
CELL_VALUES_MAX = 12
#: Offsets tried around an anchor (points from the marker's edge), nearest first, each in 16
#: directions; labels placed beyond the first ring get a thin leader line to their point.
_RINGS = (3.0, 9.0, 16.0, 24.0, 34.0, 46.0, 60.0, 76.0, 94.0)
_DIRECTIONS = tuple((math.cos(a), math.sin(a)) for a in
                    (k * math.pi / 8 for k in (0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13,
                                               15)))


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def figure(width: float, height: float, *, dpi: int = 110, constrained: bool = False) -> Any:
    """A matplotlib Figure on its own Agg canvas (pyplot and the global backend untouched)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise L2BGError("drawing a figure needs matplotlib; pip install matplotlib") from None
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (at the figure's own dpi, so the positions
    measured while placing labels are the ones written)."""
    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=fig.dpi))


def count_label(n: float) -> str:
    """A parameter count as people say it: 950, 420k, 1.26M."""
    n = float(n)
    if abs(n) >= 1e6:
        return f"{n / 1e6:.3g}M"
    if abs(n) >= 1e3:
        return f"{n / 1e3:.3g}k"
    return f"{n:.0f}"


def integer_ticks(axis: Any) -> None:
    """Only whole numbers as ticks on ``axis`` (``ax.xaxis``): counts of trials, tasks."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def param_axes(ax: Any, independent: float | None,
               label: str = "parameters / independent nets") -> Any:
    """The one parameter-axis convention of l2bg's plots: x is parameters relative to the
    independent nets; when their count is known, the absolute count is a secondary axis on top
    (returned)."""
    ax.set_xlabel(label)
    if not independent:
        return None
    from matplotlib.ticker import FuncFormatter

    scale = float(independent)
    top = ax.secondary_xaxis("top", functions=(lambda r: r * scale, lambda p: p / scale))
    top.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: count_label(v)))
    top.set_xlabel(f"parameters (independent nets: {count_label(scale)})", fontsize=8)
    top.tick_params(labelsize=7)
    return top


def _boxes_overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _overlap_area(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def place_labels(ax: Any, anchors: Sequence[tuple[float, float]], texts: Sequence[str], *,
                 colors: Sequence[Any] | None = None, obstacles: Sequence[tuple[float, float]] = (),
                 lines: Sequence[Sequence[tuple[float, float]]] = (), marker_pt: float = 5.0,
                 fontsize: float = 6.5) -> list[Any]:
    """Annotate each anchor (data coordinates) with its text where the text overlaps no label
    placed before it, no marker (``anchors`` and ``obstacles``, discs of radius ``marker_pt``
    points), no drawn line (``lines``: polylines in data coordinates) and stays inside the
    axes. Positions are tried ring by ring around the anchor, nearest first; a label that had
    to move away from its point gets a leader line. When no position is free, the one inside
    the axes with the least overlap is taken.

    Call it after the axes' limits and the figure's layout are final (it measures in pixels);
    the annotations are kept out of the layout. Returns the annotations, in ``texts`` order."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72.0
    frame = ax.get_window_extent(renderer)
    inner = (frame.x0 + 1, frame.y0 + 1, frame.x1 - 1, frame.y1 - 1)
    r = marker_pt * px
    to_px = ax.transData.transform
    discs = [tuple(to_px(p)) for p in [*anchors, *obstacles]]
    blocked = [(x - r, y - r, x + r, y + r) for x, y in dict.fromkeys(discs)
               if math.isfinite(x) and math.isfinite(y)]
    for line in lines:  # a line is blocked as small squares every 3 pixels along it
        pts = [tuple(to_px(p)) for p in line]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
            steps = max(1, int(math.hypot(x1 - x0, y1 - y0) / 3))
            for i in range(steps + 1):
                x, y = x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps
                blocked.append((x - 1, y - 1, x + 1, y + 1))
    placed: list[tuple[float, float, float, float]] = []
    out = []
    for k, (anchor, text) in enumerate(zip(anchors, texts, strict=True)):
        color = colors[k] if colors is not None else "0.2"
        probe = ax.text(0, 0, text, fontsize=fontsize, transform=None)
        ext = probe.get_window_extent(renderer)
        probe.remove()
        w, h = ext.width + 2, ext.height + 1
        ax_, ay_ = to_px(anchor)
        best: tuple[float, int, float, float] | None = None
        for ring, gap in enumerate(_RINGS):
            for ux, uy in _DIRECTIONS:  # the box's near edge at the ring, centred on its ray
                cx = ax_ + ux * (r + gap * px) + math.copysign(min(1.0, 2 * abs(ux)), ux) * w / 2
                cy = ay_ + uy * (r + gap * px) + math.copysign(min(1.0, 2 * abs(uy)), uy) * h / 2
                box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                if not (box[0] >= inner[0] and box[1] >= inner[1] and box[2] <= inner[2]
                        and box[3] <= inner[3]):
                    continue
                cost = sum(_overlap_area(box, b) for b in placed) * 4 + sum(
                    _overlap_area(box, b) for b in blocked)
                if best is None or cost < best[0]:
                    best = (cost, ring, cx, cy)
                if cost == 0:
                    break
            if best is not None and best[0] == 0:
                break
        if best is None:  # larger than the axes allow: keep it inside, as near as possible
            cx = min(max(ax_, inner[0] + w / 2), inner[2] - w / 2)
            cy = min(max(ay_ + r + h / 2, inner[1] + h / 2), inner[3] - h / 2)
            best = (math.inf, len(_RINGS), cx, cy)
        _, ring, cx, cy = best
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        placed.append(box)
        arrow = ({"arrowstyle": "-", "lw": 0.5, "color": color, "shrinkA": 0, "shrinkB": r / px}
                 if ring > 0 else None)
        ann = ax.annotate(text, anchor, xytext=((cx - ax_) / px, (cy - ay_) / px),
                          textcoords="offset points", ha="center", va="center",
                          fontsize=fontsize, color=color, arrowprops=arrow, zorder=8,
                          annotation_clip=False)
        ann.set_in_layout(False)
        out.append(ann)
    return out


def annotated_heatmap(ax: Any, values: Any, rows: Sequence[str], cols: Sequence[str], *,
                      vmin: float | None = None, vmax: float | None = None,
                      fmt: Callable[[float], str] = lambda v: f"{v:.2f}",
                      sequential: str = "viridis", diverging: str = "RdBu_r",
                      max_cells: int = CELL_VALUES_MAX) -> Any:
    """``values`` (rows x cols, NaN: no value) as an image with labelled rows and columns.
    A negative value makes the colour map diverging with limits symmetric about 0 (so 0 is the
    neutral colour); otherwise it is sequential from ``vmin`` (default 0). Cells carry their
    values when neither side exceeds ``max_cells``. Returns the image (for a colour bar)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    finite = v[np.isfinite(v)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    if lo < 0:
        m = max(abs(lo), abs(hi), abs(vmin or 0.0), abs(vmax or 0.0))
        cmap, vmin, vmax = diverging, -m, m
    else:
        cmap = sequential
        vmin = 0.0 if vmin is None else min(vmin, lo)
        vmax = max(hi, vmin + 1e-12) if vmax is None else max(vmax, hi)
    im = ax.imshow(np.ma.masked_invalid(v), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                   interpolation="nearest")
    h, w = v.shape
    ax.set_xticks(range(w), list(cols), rotation=45 if w > 3 else 0,
                  ha="right" if w > 3 else "center", fontsize=8)
    ax.set_yticks(range(h), list(rows), fontsize=8)
    if h <= max_cells and w <= max_cells:
        for i in range(h):
            for j in range(w):
                if not np.isfinite(v[i, j]):
                    continue
                rgb = im.cmap(im.norm(v[i, j]))[:3]
                light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 0.55
                ax.text(j, i, fmt(float(v[i, j])), ha="center", va="center",
                        fontsize=7 if max(h, w) > 6 else 8, color="black" if light else "white")
    return im
