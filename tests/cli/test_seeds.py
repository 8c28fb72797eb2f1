"""``l2bg run --seeds``: one complete run per seed into --out/seed-N/, a summary with mean ± sd
over the seeds (the quality table's aggregation), and every record with its environment."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from conftest import one_line

from l2bg.cli import main
from l2bg.learn.record import RunRecord


def _argv(tiny_mnist, out, *extra):
    return ["run", "--benchmark", "pmnist", "--data-root", str(tiny_mnist), "--tasks", "3",
            "--strategy", "l2bg", "--delta", "0.5", "--epochs", "1", "--batch-size", "32",
            "--rsa-samples", "10", "--no-cache", "--quiet", "--out", str(out), *extra]


def test_seeds_run_into_their_directories_and_summarise(tiny_mnist, tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "out"
    assert main(_argv(tiny_mnist, out, "--seeds", "3,1")) == 0
    records = [RunRecord.from_json(json.loads((out / f"seed-{s}" / "results.json").read_text()))
               for s in (3, 1)]
    assert [r.seed for r in records] == [3, 1]
    assert [r.config["seed"] for r in records] == [3, 1]
    assert all(r.environment.torch_threads == 1 for r in records)
    assert all((out / f"seed-{s}" / "jointnet.safetensors").is_file() for s in (3, 1))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [3, 1] and [r["seed"] for r in summary["runs"]] == [3, 1]
    test = [100 * r.avg_test_acc for r in records]
    gain = [r.gain for r in records]
    ms = summary["mean_sd"]
    assert ms["test_acc_mean"] == statistics.mean(test)
    assert ms["test_acc_sd"] == statistics.stdev(test)
    assert ms["gain_mean"] == statistics.mean(gain)
    assert ms["params_ratio_mean"] == statistics.mean(r.params_ratio for r in records)
    md = (out / "summary.md").read_text()
    assert "| mean ± sd |" in md and f"{statistics.mean(test):.2f} ± " in md
    # the same --out again: the summary is there, nothing is replaced
    before = (out / "summary.json").read_bytes()
    assert main(_argv(tiny_mnist, out, "--seeds", "3,1")) == 2
    assert "already holds" in one_line(capsys)
    assert (out / "summary.json").read_bytes() == before


@pytest.mark.parametrize("seeds, words", [("1,1", "repeats a seed"), (",", "--seeds is empty")])
def test_bad_seeds_are_one_line_before_any_work(tiny_mnist, tmp_path, capsys, no_training,
                                                seeds, words):
    out = tmp_path / "out"
    assert main(_argv(tiny_mnist, out, "--seeds", seeds)) == 2
    assert words in one_line(capsys) and not out.exists()


def test_seeds_that_are_not_integers_are_refused_by_the_parser(tiny_mnist, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(_argv(tiny_mnist, tmp_path / "out", "--seeds", "0,x"))
    assert exc.value.code == 2 and "comma-separated integers" in capsys.readouterr().err
