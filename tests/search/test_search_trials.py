"""A search keeps each completed trial's run record (OUT/trials/N/results.json) and ``l2bg explain
OUT --trial N`` explains it; a bad N, a search directory without --trial and --trial on a run
directory are one line each; the baselines are printed at the end of a search, and the help
says what --trials and the baselines mean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from l2bg.base.errors import L2BGError
from l2bg.cli import build_parser, main
from l2bg.cli.explain import explain, record_path
from l2bg.search.report import baseline_lines, trial_record_path

BASE = ["--benchmark", "pmnist", "--tasks", "3", "--epochs", "1", "--rsa-samples", "100",
        "--threads", "1"]


def fake_search(tmp_path: Path, trials: tuple[int, ...]) -> Path:
    out = tmp_path / "search"
    out.mkdir(parents=True)
    (out / "search.json").write_text("{}")
    for n in trials:
        trial_record_path(out, n).parent.mkdir(parents=True)
        trial_record_path(out, n).write_text("{}")
    return out


@pytest.mark.parametrize("trial, where, message", [
    (7, "search", "holds no record of trial 7 (recorded trials: 0-2, 5; failed and running"),
    (-1, "search", "holds no record of trial -1 (recorded trials: 0-2, 5"),
    (None, "search", "is the --out of `l2bg search`: add --trial N"),
    (0, "run", "is not the --out of `l2bg search` (no search.json); drop --trial"),
    (None, "run", "point explain at the --out directory of `l2bg run`"),
])
def test_explain_trial_errors_are_one_line(tmp_path, capsys, trial, where, message):
    directory = fake_search(tmp_path, (0, 1, 2, 5)) if where == "search" else tmp_path
    argv = ["explain", str(directory), *([] if trial is None else ["--trial", str(trial)])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_explain_trial_reads_the_trials_record(tmp_path):
    out = fake_search(tmp_path, (3,))
    assert record_path(out, 3) == out / "trials" / "3" / "results.json"
    with pytest.raises(L2BGError, match="no trial is recorded yet"):
        record_path(fake_search(tmp_path / "empty", ()), 0)


def test_baseline_lines_name_each_baseline():
    lines = baseline_lines({
        "shared": {"gain": -12.5, "params": 1000, "params_independent": 4000,
                   "avg_test_acc": 0.8125},
        "independent": {"gain": 0.0, "params": 4000, "params_independent": 4000}})
    assert lines[0].startswith("baselines")
    assert "independent" in lines[1] and "gain   +0.00%" in lines[1] and "(1.00x)" in lines[1]
    assert "shared" in lines[2] and "gain  -12.50%" in lines[2] and "(0.25x)" in lines[2]
    assert "avg test acc 81.25%" in lines[2] and "nothing grown" in lines[2]
    assert baseline_lines({}) == []


def test_search_help_says_what_trials_and_baselines_are():
    sub = next(a for a in build_parser("search")._actions if a.dest == "command")
    helps = {a.dest: a.help for a in sub.choices["search"]._actions}
    assert "one grow sequence" in helps["trials"] and "baselines are not counted" in helps[
        "trials"]
    assert "independent, one net per task" in helps["no_baselines"]
    assert "shared, every task bound to the previous one" in helps["no_baselines"]


@pytest.mark.slow
def test_search_records_trials_prints_baselines_and_explains_a_trial(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "out"
    assert main(["search", *BASE, "--trials", "2", "--sampler", "random", "--space",
                 "shared-delta", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    pareto = json.loads((out / "pareto.json").read_text())
    assert "baselines (not trials" in printed
    for name, b in pareto["baselines"].items():
        line = next(x for x in printed.splitlines() if x.strip().startswith(name))
        assert f"params {b['params']:>10,}" in line
    assert set(pareto["baselines"]) == {"independent", "shared"}
    for n in (0, 1):
        record = json.loads(trial_record_path(out, n).read_text())
        assert len(record["tasks"]) == 3 and record["grow_sequence"]
    front = pareto["pareto"][0]
    assert json.loads(trial_record_path(out, front["number"]).read_text())["params"] == \
        front["params"]
    assert main(["explain", str(out), "--trial", "1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["tasks"] == explain(json.loads(trial_record_path(out, 1).read_text()))
    assert main(["explain", str(out), "--trial", "1"]) == 0
    assert "bound to" in capsys.readouterr().out
