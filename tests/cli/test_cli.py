"""End-to-end runs of the ``l2bg`` command line, in-process and as a subprocess."""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from l2bg.cli import main
from l2bg.net.jointnet import JointNet


def run(argv, capsys=None):
    code = main(argv)
    err = capsys.readouterr().err if capsys else ""
    return code, err


def write_cifar100(root, per_class_train=4, per_class_test=2, seed=0):
    rng = np.random.default_rng(seed)
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    for split, k in (("train", per_class_train), ("test", per_class_test)):
        labels = np.repeat(np.arange(100), k)
        data = rng.integers(0, 256, size=(labels.size, 3072), dtype=np.uint8)
        data[:, :1024] //= (1 + labels[:, None] % 3).astype(np.uint8)
        obj = {b"data": data, b"fine_labels": labels.tolist(),
               b"coarse_labels": (labels // 5).tolist(), b"filenames": [b"x.png"] * labels.size}
        with open(d / split, "wb") as f:
            pickle.dump(obj, f)
    return root


@pytest.mark.slow
def test_run_mlp_end_to_end_on_embedded_digits(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run(["run", "--benchmark", "pmnist", "--tasks", "3", "--strategy", "full",
                     "--epochs", "1", "--out", str(out), "--cache-dir", str(tmp_path / "c"),
                     "--quiet"], capsys)
    assert code == 0, err
    r = json.loads((out / "results.json").read_text())
    for key in ("benchmark", "strategy", "seed", "config", "tasks", "acc_matrix", "avg_val_acc",
                "avg_test_acc", "bwt", "fwt", "gain", "gain_raw", "params", "wall_time_s"):
        assert key in r
    assert [t["bind_to"] for t in r["tasks"]] == [None, "pmnist-0", "pmnist-1"]
    assert r["tasks"][1]["grown_slots"] == ["fc1", "fc2", "fc3", "head"]
    assert r["acc_matrix"][0][1] is None and 0 <= r["acc_matrix"][2][0] <= 1
    assert r["config"]["train"]["epochs"] == 1 and r["config"]["data"]
    net = JointNet.load(out)
    assert net.num_parameters() == r["params"]
    assert r["avg_test_acc"] > 0.5
    # the independent baselines were cached: a second run reuses them
    code, err = run(["run", "--benchmark", "pmnist", "--tasks", "3", "--strategy", "independent",
                     "--epochs", "1", "--out", str(tmp_path / "o2"), "--cache-dir",
                     str(tmp_path / "c"), "--quiet"], capsys)
    r2 = json.loads((tmp_path / "o2" / "results.json").read_text())
    assert r2["cache"] == {"hits": 3, "misses": 0}
    assert r2["gain"] == 0.0 and r2["params"] == r2["params_independent"]


@pytest.mark.slow
def test_run_convnet_end_to_end_on_cifar_pickles(tmp_path, capsys):
    root = write_cifar100(tmp_path / "data")
    out = tmp_path / "out"
    code, err = run(["run", "--benchmark", "split-cifar100", "--data-root", str(root),
                     "--tasks", "4", "--strategy", "shared", "--epochs", "1", "--out", str(out),
                     "--no-cache", "--quiet"], capsys)
    assert code == 0, err
    r = json.loads((out / "results.json").read_text())
    assert len(r["tasks"]) == 4 and r["config"]["template"]["name"] == "convnet"
    net = JointNet.load(out)
    assert len(net.heads) == 4
    assert len(net.nodes) == 5  # shared: one node per slot
    x = torch.randn(2, 3, 32, 32)
    assert net(x, "split-cifar100-3").shape == (2, 25)


@pytest.mark.parametrize("argv, message", [
    (["--benchmark", "split-mnist", "--tasks", "6", "--strategy", "shared"], "tasks"),
    (["--benchmark", "pmnist", "--tasks", "2", "--strategy", "l2bg"], "--delta"),
    (["--benchmark", "pmnist", "--tasks", "2", "--strategy", "shared", "--delta", "0.5"],
     "--strategy l2bg"),
    (["--benchmark", "split-cifar100", "--strategy", "shared"], "cifar"),
    (["--benchmark", "pmnist", "--strategy", "random", "--grow-rule", "released"],
     "--grow-rule applies to strategies that use the conflict model"),
    (["--benchmark", "pmnist", "--strategy", "l2bg", "--delta", "0.5", "--bind-rule", "most"],
     "unknown bind rule 'most'"),
    (["--benchmark", "pmnist", "--strategy", "l2bg", "--delta", "0.5", "--similarity", "cos"],
     "unknown similarity measure"),
    (["--benchmark", "rotated-mnist", "--tasks", "3", "--angles", "0,90", "--strategy",
      "shared"], "2 values for 3 tasks"),
])
def test_bad_input_gives_one_line_and_no_results(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    code, err = run(["run", *argv, "--out", str(out), "--no-cache", "--quiet"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("l2bg: error:")
    assert message.lower() in lines[0].lower()
    assert not (out / "results.json").exists()


def test_data_root_without_files_names_them(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = run(["run", "--benchmark", "pmnist", "--data-root", str(tmp_path / "empty"),
                     "--strategy", "shared", "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert code == 2 and "t10k-images-idx3-ubyte" in err and str(tmp_path / "empty") in err
    assert not (tmp_path / "o").exists()


def test_unknown_strategy_is_rejected_by_the_parser():
    proc = subprocess.run([sys.executable, "-m", "l2bg", "run", "--benchmark", "pmnist",
                           "--strategy", "bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice: 'bogus'" in proc.stderr


def test_help_documents_every_option():
    proc = subprocess.run([sys.executable, "-m", "l2bg", "run", "--help"], capture_output=True,
                          text=True)
    assert proc.returncode == 0
    for opt in ("--benchmark", "--data-root", "--tasks", "--strategy", "--epochs", "--seed",
                "--device", "--out", "--quiet", "--delta", "--deltas", "--rsa-samples",
                "--shared-lr-scale", "--grow-rule", "--bind-rule", "--similarity", "--angles",
                "similar-first", "linear-cka", "rotated-mnist"):
        assert opt in proc.stdout


@pytest.mark.slow
def test_explain_has_a_legend_and_names_slots(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run(["run", "--benchmark", "pmnist", "--tasks", "3", "--strategy", "l2bg",
                     "--delta", "0.5", "--epochs", "1", "--rsa-samples", "60", "--out", str(out),
                     "--cache-dir", str(tmp_path / "c"), "--quiet"], capsys)
    assert code == 0, err
    r = json.loads((out / "results.json").read_text())
    slots = r["slots"]
    grown = r["tasks"][1]["grown_slots"]
    assert grown and set(grown) <= set(slots) and r["grow_sequence"][1]["grown_slots"] == grown
    assert main(["explain", str(out)]) == 0
    text = capsys.readouterr().out
    legend = text[text.index("\nLegend\n"):]
    for term in ("C ", "‖C‖₂", "ρ ", "w ", "share", "cum", "grown", "δ"):
        assert term in legend.split("\n\n")[0], term
    for name in slots:
        assert f"\n  {name} " in text  # every slot appears by name in the tables
    assert f"grew {', '.join(grown)}" in text
    # --json gives the same names; an older results.json with slot indices still reads by name
    assert main(["explain", str(out), "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["tasks"][1]["grown_slots"] == grown
    for t in r["tasks"]:
        t["grown_slots"] = [slots.index(s) for s in t["grown_slots"]]
    del r["expandable_slots"]
    (out / "results.json").write_text(json.dumps(r))
    assert main(["explain", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"][1]["grown_slots"] == grown


@pytest.mark.parametrize("command", [[], ["run"], ["explain"], ["search"], ["rsa"]])
def test_help_lists_every_option_with_its_default(command, capsys):
    import argparse
    import re

    from l2bg.cli import build_parser

    parser = build_parser()
    for sub in command:
        parser = next(a for a in parser._actions
                      if isinstance(a, argparse._SubParsersAction)).choices[sub]
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text  # no raw reST markup
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0:
            continue  # positionals and on/off flags
        assert action.help, action.option_strings
        option = action.option_strings[-1]
        assert option in text
        shown = parser.formatter_class(prog="l2bg")._get_help_string(action) % {
            "default": action.default}
        assert re.search(r"\b(default|required)\b", shown), f"{option}: {shown}"


@pytest.mark.slow
def test_without_a_terminal_each_task_logs_one_line(tmp_path):
    """A batch job sees progress: one line per finished task, with the elapsed time."""
    proc = subprocess.run(
        [sys.executable, "-m", "l2bg", "run", "--benchmark", "pmnist", "--tasks", "3",
         "--strategy", "shared", "--epochs", "1", "--out", str(tmp_path / "o"),
         "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if "] task " in ln]
    assert len(lines) == 3
    for i, ln in enumerate(lines, start=1):
        assert ln.startswith("[") and "s] task " in ln and f"task {i} pmnist-{i - 1}" in ln
    assert "bound to pmnist-0" in lines[1] and "own independent net" in lines[0]


@pytest.mark.slow
def test_rules_measure_and_rotated_mnist_through_run_and_explain(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run(["run", "--benchmark", "rotated-mnist", "--angles", "0,60,120", "--strategy",
                     "l2bg", "--delta", "0.5", "--grow-rule", "released", "--bind-rule",
                     "released", "--similarity", "rsa-pearson", "--epochs", "1", "--out",
                     str(out), "--no-cache", "--quiet"], capsys)
    assert code == 0, err
    r = json.loads((out / "results.json").read_text())
    opts = {"grow_rule": "released", "bind_rule": "released", "similarity": "rsa-pearson"}
    assert r["strategy_options"] == opts and r["config"]["strategy_options"] == opts
    assert all(r["config"][k] == v for k, v in opts.items())
    assert r["config"]["data"]["angles"] == [0.0, 60.0, 120.0]
    assert r["tasks"][2]["rules"] == {"bind": "released", "grow": "released",
                                      "similarity": "rsa-pearson"}
    capsys.readouterr()
    assert main(["explain", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bind rule released; grow rule released, δ = 0.5; similarity rsa-pearson" in text
    assert "‖ρ‖₂" in text and "in the order of grow rule released (w = ρ)" in text
    assert main(["explain", str(out), "--json"]) == 0
    e = json.loads(capsys.readouterr().out)
    rows = e["tasks"][1]["candidates"][0]["slots"]
    assert [row["weight"] for row in rows] == sorted((row["weight"] for row in rows),
                                                     reverse=True)
    assert rows[-1]["cumulative"] == pytest.approx(1.0)
