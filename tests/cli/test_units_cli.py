"""``l2bg run`` and ``l2bg explain`` with channel-group units, adapters and task batch norm, on
tiny data; their flags' errors."""

import json

import pytest

from l2bg.cli import main
from l2bg.net.jointnet import JointNet


def run(tmp_path, tiny_mnist, *extra, strategy=("--strategy", "l2bg", "--delta", "0.5"),
        quiet=True):
    out = tmp_path / "out"
    code = main(["run", "--benchmark", "pmnist", "--data-root", str(tiny_mnist), "--tasks", "3",
                 *strategy, "--epochs", "1", "--rsa-samples", "20", "--out", str(out),
                 "--cache-dir", str(tmp_path.parent / "units-cli-cache"),
                 *(["--quiet"] if quiet else []), *extra])
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


def test_run_and_explain_with_channel_groups(tmp_path, tiny_mnist, capsys):
    out, r = run(tmp_path, tiny_mnist, "--granularity", "group:4", quiet=False)
    assert r["config"]["granularity"] == "group:4" and r["config"]["grow_mode"] == "copy"
    assert r["strategy_options"]["granularity"] == "group:4"
    net = JointNet.load(out)
    assert net.num_parameters() == r["params"]
    # 3 hidden slots and the shared head, 4 groups each, slot then group
    assert r["tasks"][1]["conflict"]["pmnist-0"]["units"] == [[s, g] for s in range(4)
                                                               for g in range(4)]
    for t in r["tasks"][1:]:
        groups = t.get("grown_groups") or {}
        assert not t["grown_slots"] and groups and t["num_groups"] == 4
        want = sorted((r["slots"].index(s), g) for s, gs in groups.items() for g in gs)
        assert net.grown_units(t["name"]) == want
    t1 = r["tasks"][1]
    shown = ", ".join(f"{s}[{','.join(map(str, g))}]" for s, g in t1["grown_groups"].items())
    printed = capsys.readouterr().out  # a log line per task and the summary table
    assert f"bound to pmnist-0, grew {shown.replace(', ', ',')}" in printed
    assert main(["explain", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"grew {shown}" in text and "units of pmnist-0 in the order of grow rule" in text
    assert "fc1[0]" in text and "granularity group:4" in text
    assert main(["explain", str(out), "--json"]) == 0
    e = json.loads(capsys.readouterr().out)["tasks"][1]
    rows = e["candidates"][0]["slots"]
    assert len(rows) == 16 and rows[-1]["cumulative"] == pytest.approx(1.0)
    assert sorted(e["grown_units"]) == sorted(f"{s}[{g}]" for s, gs in
                                              t1["grown_groups"].items() for g in gs)


def test_run_with_adapters_costs_fewer_parameters_than_copies(tmp_path, tiny_mnist):
    _, copy = run(tmp_path / "c", tiny_mnist, strategy=("--strategy", "full"))
    out, adapt = run(tmp_path / "a", tiny_mnist, "--grow-mode", "adapt", "--adapter-rank", "2",
                     strategy=("--strategy", "full"))
    assert adapt["config"]["grow_mode"] == "adapt" and adapt["config"]["adapter_rank"] == 2
    assert all(t["grow_mode"] == "adapt" for t in adapt["tasks"][1:])
    assert "grow_mode" not in copy["tasks"][1]
    assert adapt["params"] < copy["params"]
    net = JointNet.load(out)
    assert net.num_parameters() == adapt["params"]
    assert net.grow_mode("pmnist-1", "fc1") == "adapt"


@pytest.mark.parametrize("slots, copied, says", [
    ((0, 1, 2), (2,), "grew conv1, conv2, pool (adapt: adapters on the shared nodes; pool grown "
                      "by copy: no adapter fits it)"),
    ((1, 2), (1, 2), "grew conv2, pool (adapt: conv2, pool grown by copy: no adapter fits them)"),
    ((0, 1), (), "grew conv1, conv2 (adapt: adapters on the shared nodes)\n"),
])
def test_explain_says_which_slots_grew_by_copy_under_adapt(tmp_path, capsys, slots, copied,
                                                           says):
    """Text and --json of explain name the grown slots that no adapter fits (grown by copy)."""
    from l2bg.learn.record import Decision, RunRecord, TaskRecord

    names = ["conv1", "conv2", "pool"]
    tasks = [TaskRecord(Decision("t0", None), [0.5, None], [0.5, None], 10, 0.5, 0.5, 5, 10,
                        False),
             TaskRecord(Decision("t1", "t0", slots, reason="full", mode="adapt", copied=copied),
                        [0.5, 0.5], [0.5, 0.5], 12, 0.5, 0.5, 5, 10, False)]
    record = RunRecord.build(tasks, benchmark="b", strategy="full", strategy_options={}, seed=0,
                             slots=names, expandable_slots=names, timings={}, wall_s=1.0,
                             executor_backend=None, cache={}, environment=None)
    (tmp_path / "results.json").write_text(json.dumps(record.to_json()))
    assert main(["explain", str(tmp_path)]) == 0
    assert says in capsys.readouterr().out
    assert main(["explain", str(tmp_path), "--json"]) == 0
    e = json.loads(capsys.readouterr().out)["tasks"][1]
    assert e["grown_by_copy"] == [names[s] for s in copied] and e["grow_mode"] == "adapt"


def test_run_records_task_batch_norm(tmp_path, tiny_mnist):
    out, r = run(tmp_path, tiny_mnist, "--task-bn")
    assert r["config"]["task_bn"] is True
    assert JointNet.load(out).topology()["task_bn"] is True


@pytest.mark.parametrize("argv, message", [
    (["--granularity", "group:0"], "--granularity 'group:0' is not 'layer' or 'group:G'"),
    (["--granularity", "group:11"], "--granularity group:11 cuts slot head of 10 channels"),
    (["--granularity", "group:2", "--strategy", "full"],
     "--granularity applies to strategies that use the conflict model"),
    (["--adapter-rank", "0"], "--adapter-rank must be an integer >= 1"),
])
def test_bad_unit_options_are_one_line_naming_the_flag(tmp_path, tiny_mnist, capsys, argv,
                                                       message, no_training):
    out = tmp_path / "out"
    strategy = [] if "--strategy" in argv else ["--strategy", "l2bg", "--delta", "0.5"]
    code = main(["run", "--benchmark", "pmnist", "--data-root", str(tiny_mnist), "--tasks", "3",
                 *strategy, *argv, "--out", str(out), "--no-cache", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("l2bg: error:") and message in err and "\n" not in err
    assert not (out / "results.json").exists()


def test_bad_grow_mode_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--benchmark", "pmnist", "--strategy", "full", "--grow-mode", "clone"])
    assert "--grow-mode" in capsys.readouterr().err
