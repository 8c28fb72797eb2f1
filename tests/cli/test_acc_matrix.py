"""acc_matrix.png: every ``l2bg run --out`` holds a picture of its accuracy matrix and
forgetting, for every strategy and also with --quiet; without matplotlib a run says so in one
line and publishes everything else."""

from __future__ import annotations

import json

import pytest
import torch

from l2bg.cli import main
from l2bg.cli.run import OUTPUTS

pytest.importorskip("matplotlib")


def _argv(data, out, strategy, *extra):
    argv = ["run", "--benchmark", "pmnist", "--data-root", str(data), "--tasks", "3",
            "--strategy", strategy, "--epochs", "1", "--batch-size", "32", "--rsa-samples", "10",
            "--no-cache", "--out", str(out), *extra]
    return argv + (["--delta", "0.5"] if strategy == "l2bg" else [])


@pytest.mark.parametrize("strategy, quiet", [("independent", True), ("shared", True),
                                             ("full", False), ("random", True), ("l2bg", True)])
def test_every_run_writes_its_accuracy_matrix(tmp_path, tiny_mnist, capsys, strategy, quiet):
    """The PNG is published with the run, and the figure shows the run's own R: one value per
    learned (after i, on j ≤ i) cell, blank above the diagonal."""
    from l2bg.learn.figures import acc_matrix_figure

    torch.set_num_threads(1)
    out = tmp_path / "out"
    assert main(_argv(tiny_mnist, out, strategy, *(["--quiet"] if quiet else []))) == 0
    printed = capsys.readouterr().out
    png = out / "acc_matrix.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    assert ("acc_matrix.png" in printed) == (not quiet)
    record = json.loads((out / "results.json").read_text())
    fig = acc_matrix_figure(record)
    heat = fig.axes[0]
    cells = sorted(t.get_text() for t in heat.texts)
    R = record["acc_matrix"]
    assert cells == sorted(f"{100 * v:.1f}" for row in R for v in row if v is not None)
    assert len(cells) == 6  # 3 tasks: 3 + 2 + 1 learned cells
    names = [t["name"] for t in record["tasks"]]
    assert [t.get_text() for t in heat.get_xticklabels()] == names


def test_without_matplotlib_one_line_and_no_picture(tmp_path, tiny_mnist, capsys, monkeypatch):
    monkeypatch.setattr("l2bg.base.figures.have_matplotlib", lambda: False)
    torch.set_num_threads(1)
    out = tmp_path / "out"
    assert main(_argv(tiny_mnist, out, "shared", "--quiet")) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "matplotlib" in err[0] and "acc_matrix.png" in err[0]
    assert sorted(p.name for p in out.iterdir()) == sorted(set(OUTPUTS) - {"acc_matrix.png"})
