"""What ``l2bg rsa`` shows a reader: a heatmap whose colour map is diverging and centred at 0
when a similarity is negative (sequential otherwise), values in the cells of a small matrix,
sources named by their directories, rows and columns named in the CSV and the printed table,
and an end-of-run message in words."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from l2bg.cli import main
from l2bg.rsa.layers import LayerMatrix, layer_similarity, source_names

pytest.importorskip("matplotlib")


def _matrix(values, sources=("runs/alpha", "runs/beta")):
    h, w = values.shape
    return LayerMatrix([f"r{i}" for i in range(h)], [f"c{j}" for j in range(w)], values,
                       "spearman", 10, {"sources": list(sources)})


@settings(max_examples=15, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 5)),
              elements=st.floats(-1, 1)))
def test_colour_map_is_centred_at_zero_when_a_value_is_negative(values):
    fig = _matrix(values).heatmap_figure()
    (im,) = fig.axes[0].images
    lo, hi = im.get_clim()
    if (values < 0).any():
        assert im.get_cmap().name == "RdBu_r"
        assert lo == -hi and hi >= np.abs(values).max() and im.norm(0.0) == pytest.approx(0.5)
    else:
        assert im.get_cmap().name == "viridis" and lo == 0 and hi >= values.max()


@pytest.mark.parametrize("size, shown", [(2, True), (12, True), (13, False)])
def test_small_matrices_carry_their_values(size, shown):
    values = np.linspace(-0.5, 1, size * size).reshape(size, size)
    ax = _matrix(values).heatmap_figure().axes[0]
    cells = [t.get_text() for t in ax.texts]
    if shown:
        assert sorted(cells) == sorted(f"{v:.2f}" for v in values.ravel())
    else:
        assert cells == []


def _acts(root, names, n=8):
    rng = np.random.default_rng(0)
    for name in names:
        d = root / name
        d.mkdir(parents=True)
        np.save(d / "conv.npy", rng.standard_normal((n, 6)).astype(np.float32))
        np.save(d / "fc.npy", rng.standard_normal((n, 4)).astype(np.float32))
    return [root / name for name in names]


def test_three_sources_are_named_by_their_directories(tmp_path):
    paths = _acts(tmp_path, ["mlp-seed0", "mlp-seed1", "convnet"])
    m = layer_similarity(paths)
    assert m.rows[:2] == ["mlp-seed0:conv", "mlp-seed0:fc"] and m.rows[-1] == "convnet:fc"
    ax = m.heatmap_figure().axes[0]
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks == m.rows and not any(t.startswith("net") for t in ticks)
    assert ax.get_ylabel() == "source:layer (rows)"


def test_same_directory_names_are_told_apart_by_their_parents(tmp_path):
    assert source_names(["a/acts", "b/acts", "c/other"]) == ["a/acts", "b/acts", "other"]
    assert source_names(["x/acts", "x/acts"]) == ["acts", "acts"]  # one source, twice
    assert source_names([None, "runs/a.npy"]) == ["net0", "a.npy"]
    paths = _acts(tmp_path, ["a/acts", "b/acts", "c/acts"])
    assert layer_similarity(paths).rows[0] == "a/acts:conv"


def test_csv_and_heatmap_say_which_source_is_rows(tmp_path):
    paths = _acts(tmp_path, ["net-a", "net-b"])
    m = layer_similarity(paths, layers=[["conv", "fc"], ["fc"]])
    rows = list(csv.reader(m.to_csv().splitlines()))
    assert rows[0] == ["rows: layers of net-a / columns: layers of net-b", "fc"]
    assert [r[0] for r in rows[1:]] == ["conv", "fc"]
    ax = m.heatmap_figure().axes[0]
    assert ax.get_ylabel() == "layers of net-a (rows)"
    assert ax.get_xlabel() == "layers of net-b (columns)"


@pytest.mark.parametrize("measure", ["rsa", "linear-cka"])
def test_cli_prints_rows_and_outputs_in_words(tmp_path, capsys, measure):
    paths = _acts(tmp_path, ["net-a", "net-b"])
    out = tmp_path / "out"
    assert main(["rsa", *map(str, paths), "--measure", measure, "--device", "cpu", "--out",
                 str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rows: layers of net-a; columns: layers of net-b" in printed
    assert f"written to {out}/:" in printed and "similarity.csv" in printed
    assert "{" not in printed  # no raw dict of paths
    lines = printed.splitlines()
    header = lines[lines.index("rows: layers of net-a; columns: layers of net-b") + 1]
    assert header.split() == ["conv", "fc"]  # the table's columns: the second source's layers
    first = (out / "similarity.csv").read_text().splitlines()[0]
    assert first.startswith("rows: layers of net-a / columns: layers of net-b")
