"""The quality-table script behind the main job: its run specs, the aggregation and Pareto front,
and one tiny end-to-end table (outputs and an explainable run)."""

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from l2bg.cli import main as l2bg_main

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("quality_table",
                                              ROOT / "benchmarks" / "quality_table.py")
qt = importlib.util.module_from_spec(spec)
sys.modules["quality_table"] = qt  # dataclasses look their module up while it is executed
spec.loader.exec_module(qt)


def test_run_specs():
    s = qt.RunSpec.parse("l2bg:released:0.5:released")
    assert s.label == "l2bg-released-0.5-bind-released" and s.delta == 0.5
    assert s.options == {"grow_rule": "released", "bind_rule": "released",
                         "similarity": "rsa-spearman"}
    assert qt.RunSpec.parse("random") == qt.RunSpec("random", "random")
    with pytest.raises(SystemExit, match="l2bg:GROW_RULE:DELTA"):
        qt.RunSpec.parse("l2bg:conflict")


def test_run_specs_with_granularity_and_grow_mode():
    s = qt.RunSpec.parse("l2bg:conflict:0.5@group:4~adapt")
    assert s.label == "l2bg-conflict-0.5-group4-adapt" and s.mode == "adapt"
    assert s.options["granularity"] == "group:4" and s.delta == 0.5
    plain = qt.RunSpec.parse("l2bg:conflict:0.5@layer~copy")
    assert plain == qt.RunSpec.parse("l2bg:conflict:0.5") and "granularity" not in plain.options
    args = qt.parse_args(["--baselines", "--grow-rules", "conflict", "--deltas", "0.5",
                          "--granularities", "layer", "group:4", "--grow-modes", "copy", "adapt"])
    assert [r.label for r in qt.run_specs(args)] == [
        "l2bg-conflict-0.5", "l2bg-conflict-0.5-adapt", "l2bg-conflict-0.5-group4",
        "l2bg-conflict-0.5-group4-adapt"]


def test_aggregate_means_and_front_on_validation():
    def row(run, seed, val, test, ratio):
        return {"benchmark": "b", "run": run, "seed": seed, "strategy": run, "grow_rule": None,
                "bind_rule": None, "similarity": None, "delta": None, "test_acc": test,
                "val_acc": val, "params_ratio": ratio, "gain": 0.0, "bwt": None}

    rows = [row("independent", 0, 90, 91, 1.0), row("independent", 1, 92, 93, 1.0),
            row("a", 0, 91, 80, 0.5), row("a", 1, 93, 80, 0.5),   # dominates independent on val
            row("b", 0, 80, 99, 0.4), row("b", 1, 80, 99, 0.4),   # cheaper, worse on val
            row("c", 0, 70, 99, 0.6), row("c", 1, 70, 99, 0.6)]   # dominated by b
    table = {r["run"]: r for r in qt.aggregate(rows)}
    assert table["a"]["val_acc_mean"] == 92 and table["a"]["val_acc_sd"] == pytest.approx(1.414,
                                                                                           abs=1e-3)
    assert [r for r in table if table[r]["front"]] == ["a", "b"]
    assert table["a"]["val_gap_to_independent"] == 1.0
    assert table["b"]["test_gap_to_independent"] == 7.0


@pytest.mark.slow
def test_tiny_table_end_to_end(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "q"
    assert qt.main(["--tasks", "2", "--epochs", "1", "--rsa-samples", "60", "--baselines",
                    "independent", "--grow-rules", "conflict", "released", "--deltas", "0.5",
                    "--cache-dir", str(tmp_path / "c"), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["run"] for r in rows] == ["independent", "l2bg-conflict-0.5", "l2bg-released-0.5"]
    assert float(rows[0]["params_ratio_mean"]) == 1.0 and float(rows[0]["gain_mean"]) == 0.0
    assert (out / "plot.png").stat().st_size > 0 and "| l2bg-released-0.5 |" in (
        out / "table.md").read_text()
    run = out / "runs" / "pmnist" / "s0" / "l2bg-released-0.5"
    r = json.loads((run / "results.json").read_text())
    assert r["strategy_options"]["grow_rule"] == "released"
    assert l2bg_main(["explain", str(run)]) == 0
    assert "grow rule released" in capsys.readouterr().out
