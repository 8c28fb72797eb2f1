"""Hostile input ends in one line before any work (issue 14, items 7 and 9): numbers, data roots
with empty splits or classes, hand-edited results.json in ``explain``."""

import copy
import json
import pickle

import numpy as np
import pytest
import torch
from conftest import one_line, write_idx, write_tiny_mnist

from l2bg.cli import main


@pytest.mark.parametrize("option, value, words", [
    ("--shared-lr-scale", "nan", "--shared-lr-scale must be a finite number"),
    ("--shared-lr-scale", "-1", "--shared-lr-scale must be >= 0"),
    ("--lr", "nan", "--lr must be a finite number"),
    ("--lr", "inf", "--lr must be a finite number"),
    ("--lr", "0", "--lr must be > 0"),
    ("--seed", str(2**44), "--seed must be >= 0 and <= 4294967295"),
    ("--seed", "-1", "--seed must be >= 0"),
    ("--epochs", "0", "--epochs must be >= 1"),
    ("--batch-size", "0", "--batch-size must be >= 1"),
    ("--rsa-samples", "2", "--rsa-samples must be >= 3"),
    ("--tasks", "0", "--tasks must be >= 1"),
])
@pytest.mark.parametrize("command", ["run", "search"])
def test_numbers_are_checked_before_any_work(tmp_path, capsys, no_training, tiny_mnist,
                                             option, value, words, command):
    common = ["--benchmark", "pmnist", "--data-root", str(tiny_mnist), "--tasks", "2",
              "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--quiet"]
    extra = (["--strategy", "shared"] if command == "run" else ["--trials", "1"])
    assert main([command, *common, *extra, option, value]) == 2
    assert words in one_line(capsys)
    assert not (tmp_path / "o").exists() and not (tmp_path / "c").exists()


def _mnist_root(tmp_path, labels, size=4):
    root = tmp_path / "data"
    root.mkdir()
    rng = np.random.default_rng(0)
    write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 256, (len(labels), size, size)))
    write_idx(root / "t10k-labels-idx1-ubyte", np.asarray(labels))
    return root


@pytest.mark.parametrize("bench, labels, words", [
    ("pmnist", [], "holds 0 images"),
    ("pmnist", np.arange(90) % 9, "no training samples of class(es) [9]"),
    ("split-mnist", np.arange(90) % 9, "task split-mnist-4 has no training samples of class"),
    ("split-mnist", [c for c in range(10) for _ in range(1 if c in (4, 5) else 10)],
     "task split-mnist-2: its val split has no samples"),
])
def test_data_with_empty_splits_or_classes_is_one_line(tmp_path, capsys, no_training, bench,
                                                       labels, words):
    root = _mnist_root(tmp_path, labels)
    assert main(["run", "--benchmark", bench, "--data-root", str(root), "--strategy",
                 "shared", "--no-cache", "--quiet", "--out", str(tmp_path / "o")]) == 2
    assert words in one_line(capsys)


def test_cifar_pickle_without_samples_is_one_line(tmp_path, capsys, no_training):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for split in ("train", "test"):
        with open(d / split, "wb") as f:
            pickle.dump({b"data": np.zeros((0, 3072), np.uint8), b"fine_labels": []}, f)
    assert main(["run", "--benchmark", "split-cifar100", "--data-root", str(tmp_path),
                 "--strategy", "shared", "--no-cache", "--quiet", "--out",
                 str(tmp_path / "o")]) == 2
    assert "holds 0 samples" in one_line(capsys)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.set_num_threads(1)
    root = write_tiny_mnist(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("run") / "out"
    assert main(["run", "--benchmark", "pmnist", "--data-root", str(root), "--tasks", "3",
                 "--strategy", "l2bg", "--delta", "0.5", "--epochs", "1", "--rsa-samples",
                 "10", "--no-cache", "--quiet", "--out", str(out)]) == 0
    return out


def _edits():
    def set_(path, value):
        def edit(r):
            obj = r
            for k in path[:-1]:
                obj = obj[k]
            obj[path[-1]] = value
        return edit

    def drop(path):
        def edit(r):
            obj = r
            for k in path[:-1]:
                obj = obj[k]
            del obj[path[-1]]
        return edit

    def cand(r):
        return next(iter(r["tasks"][1]["conflict"]))

    return {
        "not an object": (lambda r: r.clear(), "benchmark"),
        "no tasks": (drop(["tasks"]), "tasks"),
        "tasks text": (set_(["tasks"], "abc"), "tasks"),
        "no slots": (drop(["slots"]), "slots"),
        "slots numbers": (set_(["slots"], [1, 2]), "slots"),
        "task not object": (set_(["tasks", 1], 3), "tasks[1]"),
        "no name": (drop(["tasks", 1, "name"]), "tasks[1].name"),
        "bind_to number": (set_(["tasks", 1, "bind_to"], 5), "tasks[1].bind_to"),
        "bind_to unscored": (set_(["tasks", 1, "bind_to"], "zz"), "tasks[1].bind_to"),
        "delta text": (set_(["tasks", 1, "delta"], "half"), "tasks[1].delta"),
        "grown out of range": (set_(["tasks", 1, "grown_slots"], [99]), "grown_slots"),
        "grown text": (set_(["tasks", 1, "grown_slots"], "0"), "grown_slots"),
        "grown bools": (set_(["tasks", 1, "grown_slots"], [True]), "grown_slots"),
        "conflict list": (set_(["tasks", 1, "conflict"], [1]), "conflict"),
        "score text": (lambda r: r["tasks"][1]["conflict"][cand(r)].update(score="x"),
                       "conflict"),
        "layers missing": (lambda r: r["tasks"][1]["conflict"][cand(r)].pop("layers"),
                           "layers"),
        "layers negative": (lambda r: r["tasks"][1]["conflict"][cand(r)].update(
            layers=[-1.0, 0.5, 0.5, 0.5]), "layers"),
        "layers empty": (lambda r: r["tasks"][1]["conflict"][cand(r)].update(layers=[]),
                         "layers"),
    }


@pytest.mark.parametrize("name", _edits())
@pytest.mark.parametrize("as_json", [False, True])
def test_explain_of_a_hand_edited_results_json_is_one_line(run_dir, tmp_path, capsys, name,
                                                          as_json):
    record = json.loads((run_dir / "results.json").read_text())
    assert main(["explain", str(run_dir)]) == 0  # the untouched record explains
    capsys.readouterr()
    edit, words = _edits()[name]
    edited = copy.deepcopy(record)
    edit(edited)
    (tmp_path / "results.json").write_text(json.dumps(edited))
    assert main(["explain", str(tmp_path), *(["--json"] if as_json else [])]) == 2
    assert words in one_line(capsys)


def test_explain_of_a_file_that_is_not_json(tmp_path, capsys):
    for raw in (b"\xff\xfe", b"[" * 100000, b'{"tasks": '):
        (tmp_path / "results.json").write_bytes(raw)
        assert main(["explain", str(tmp_path)]) == 2
        assert "results.json" in one_line(capsys)
