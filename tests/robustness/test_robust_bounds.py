"""Sizes read from the command line and from files are bounded before anything is allocated
(issue 22, items 12-14, 18, 19, 23, 24 and the manifest rule): every case ends in one
L2BGError naming the parameter and the limit, and the bombs are built small on disk here."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
import tracemalloc

import numpy as np
import pytest
import torch
from conftest import one_line, write_tiny_mnist

from l2bg.base import bounds
from l2bg.base.errors import L2BGError
from l2bg.cli import main

# ------------------------------------------------------------------ item 12: --tasks






@pytest.mark.parametrize("value", ["1001", "100000", str(10**9), str(2**70)])
@pytest.mark.parametrize("command", ["run", "search"])
def test_tasks_above_the_limit_is_one_line_before_any_work(tmp_path, capsys, no_training,
                                                           command, value):
    root = write_tiny_mnist(tmp_path / "data")
    extra = ["--strategy", "shared"] if command == "run" else ["--trials", "1"]
    assert main([command, "--benchmark", "pmnist", "--data-root", str(root), "--tasks", value,
                 "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--quiet",
                 *extra]) == 2
    assert f"--tasks must be >= 1 and <= {bounds.MAX_TASKS}, got {value}" in one_line(capsys)
    assert not (tmp_path / "o").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("bench, limit", [("pmnist", bounds.MAX_TASKS),
                                          ("rotated-mnist", bounds.MAX_TASKS),
                                          ("split-cifar100", 100), ("split-mnist", 5)])
@pytest.mark.parametrize("excess", [1, 10**9, 2**70])
def test_build_benchmark_bounds_num_tasks(bench, limit, excess):
    from l2bg.data import build_benchmark

    with pytest.raises(L2BGError, match=f"allows at most {limit} tasks"):
        build_benchmark(bench, num_tasks=limit + excess)


@pytest.mark.parametrize("bench", ["pmnist", "rotated-mnist"])
def test_task_copies_beyond_memory_are_refused_before_they_are_made(tmp_path, monkeypatch,
                                                                    bench):
    """Every pmnist/rotated-mnist task holds its own copy of the inputs: the copies are
    counted against the machine's memory first (here a machine of 1 MB)."""
    from l2bg.data import benchmarks, build_benchmark

    root = write_tiny_mnist(tmp_path / "data", n=200, size=8)
    monkeypatch.setattr(benchmarks, "memory_bytes", lambda: 10**6)
    made = []
    monkeypatch.setattr(benchmarks, "Task", lambda *a, **k: made.append(a))
    with pytest.raises(L2BGError, match=r"num_tasks 100 of .*above the limit of 1,000,000 bytes.*"
                                        r"pass num_tasks <= 9\b"):
        build_benchmark(bench, num_tasks=100, data_root=root)
    assert made == []
    monkeypatch.undo()
    assert len(build_benchmark(bench, num_tasks=9, data_root=root).tasks) == 9


# ------------------------------------------------------------------ item 13: IDX bombs


def _idx_header(dims, code=0x08) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, len(dims)) + b"".join(struct.pack(">I", d)
                                                                   for d in dims)


def _gzip_bomb(header: bytes, inflated: int) -> bytes:
    """``header`` then ``inflated`` zero bytes, gzip-compressed: gzip members of 16 MiB of
    zeros concatenated (each ~16 KB), so a 3 GB bomb is 3 MB on disk and built in ~0.1 s."""
    block = 16 * 2**20
    member = gzip.compress(b"\0" * block, compresslevel=9, mtime=0)
    count, rest = divmod(inflated, block)
    return (gzip.compress(header, mtime=0) + member * count
            + gzip.compress(b"\0" * rest, mtime=0))


@pytest.fixture
def peak_memory():
    tracemalloc.start()
    yield lambda: tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()


def test_a_gzip_bomb_is_never_inflated_past_its_header(tmp_path, peak_memory):
    """The issue's repro: a few MB of .gz that inflates to 3 GB. The header declares 10 digits:
    inflation stops one byte past them."""
    from l2bg.data.sources import read_idx

    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(_gzip_bomb(_idx_header((10, 28, 28)), 3 * 10**9))
    assert path.stat().st_size < 5 * 2**20
    with pytest.raises(L2BGError, match=r"declares dims \(10, 28, 28\).*holds more"):
        read_idx(path)
    assert peak_memory() < 64 * 2**20


@pytest.mark.parametrize("dims", [(3_000_000, 28, 28), (2**32 - 1, 2**32 - 1),
                                  (2**31, 1, 1, 1)])
@pytest.mark.parametrize("gz", [False, True])
def test_an_absurd_idx_header_is_refused_before_reading_on(tmp_path, peak_memory, dims, gz):
    from l2bg.data.sources import read_idx

    raw = _idx_header(dims) + b"\0" * 4096
    path = tmp_path / "f-idx3-ubyte"
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    with pytest.raises(L2BGError, match=rf"above the limit of {bounds.MAX_DATA_FILE_BYTES:,} "
                                        r"bytes; not an MNIST file"):
        read_idx(path)
    assert peak_memory() < 16 * 2**20


def test_a_consistent_idx_file_above_the_limit_is_refused(tmp_path, monkeypatch):
    """A well-formed file whose header and data agree is still bounded (limit patched small)."""
    from l2bg.data import sources
    from l2bg.data.sources import read_idx

    arr = np.arange(64 * 64, dtype=np.uint8).reshape(64, 8, 8)
    for name, raw in (("a-idx3-ubyte", _idx_header(arr.shape) + arr.tobytes()),):
        (tmp_path / name).write_bytes(raw)
        (tmp_path / (name + ".gz")).write_bytes(gzip.compress(raw, mtime=0))
        for path in (tmp_path / name, tmp_path / (name + ".gz")):
            assert np.array_equal(read_idx(path), arr)
            monkeypatch.setattr(sources, "MAX_DATA_FILE_BYTES", 4000)
            with pytest.raises(L2BGError, match="above the limit of 4,000 bytes"):
                read_idx(path)
            monkeypatch.undo()


def test_a_data_file_larger_than_the_limit_is_not_read(tmp_path, monkeypatch):
    from l2bg.data import sources

    path = tmp_path / "train"
    path.write_bytes(b"\0" * 5000)
    monkeypatch.setattr(sources, "MAX_DATA_FILE_BYTES", 4096)
    with pytest.raises(L2BGError, match=r"the file is 5,000 bytes, above the limit of 4,096"):
        sources._load_cifar_pickle(path)


# ------------------------------------------------------------------ item 14: pickle bombs


def _nested_bomb(depth: int, width: int) -> list:
    """``width ** depth`` elements, each level one list shared ``width`` times: a few hundred
    bytes pickled (the memo stores each list once)."""
    level: list = [0] * width
    for _ in range(depth - 1):
        level = [level] * width
    return level


@pytest.mark.parametrize("key", [b"data", b"fine_labels"])
def test_a_pickle_bomb_of_shared_lists_is_refused_before_it_expands(tmp_path, peak_memory,
                                                                   key):
    """The issue's repro: 6 KB that np.asarray expanded to 7.45 GiB. Here 20^8 = 2.56e10
    elements (~200 GB as int64): refused from its type, never expanded."""
    from l2bg.data.sources import _load_cifar_pickle

    obj = {b"data": np.zeros((5, 3072), np.uint8), b"fine_labels": [0, 1, 2, 3, 4]}
    obj[key] = _nested_bomb(8, 20)
    raw = pickle.dumps(obj, protocol=2)
    assert len(pickle.dumps(obj[key], protocol=2)) < 2000
    (tmp_path / "train").write_bytes(raw)
    want = "a uint8 numpy array" if key == b"data" else "must be 5 integers"
    with pytest.raises(L2BGError, match=want):
        _load_cifar_pickle(tmp_path / "train")
    assert peak_memory() < 16 * 2**20


@pytest.mark.parametrize("labels, words", [
    ([0, 1, 2, 3, 2**70], "span 0..1180591620717411303424"),
    ([0, 1, 2, 3, -1], "span -1..3"),
    ([0, 1, 2, 3, True], "must be 5 integers"),
    ([0, 1, 2, 3, 4.0], "must be 5 integers"),
    ([0, 1, 2, 3], "must be 5 integers, got a list of 4"),
    ("01234", "must be 5 integers, got a str"),
    (np.zeros((5, 1), np.int64), "must be 5 integers, got int64 (5, 1)"),
])
def test_cifar_labels_of_the_wrong_type_or_range_are_one_line(tmp_path, labels, words):
    from l2bg.data.sources import _load_cifar_pickle

    obj = {b"data": np.zeros((5, 3072), np.uint8), b"fine_labels": labels}
    (tmp_path / "train").write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(L2BGError, match=words.replace("(", r"\(").replace(")", r"\)")):
        _load_cifar_pickle(tmp_path / "train")


def test_a_real_cifar_layout_is_still_read(tmp_path):
    from l2bg.data.sources import _load_cifar_pickle

    data = np.random.default_rng(0).integers(0, 256, (7, 3072), dtype=np.uint8)
    for labels in ([3, 1, 4, 1, 5, 9, 2], np.array([3, 1, 4, 1, 5, 9, 2], np.int32)):
        (tmp_path / "train").write_bytes(pickle.dumps({b"data": data, b"fine_labels": labels},
                                                      protocol=2))
        x, y, _ = _load_cifar_pickle(tmp_path / "train")
        assert np.array_equal(x, data) and y.tolist() == [3, 1, 4, 1, 5, 9, 2]
        assert y.dtype == np.int64


# ------------------------------------------------------------------ items 18, 19, manifest


def _acts(tmp_path):
    src = tmp_path / "acts"
    src.mkdir()
    np.save(src / "a.npy", np.random.default_rng(0).standard_normal((6, 4)))
    return src


def _manifest(src, layers):
    (src / "manifest.json").write_text(json.dumps({"layers": layers}))


def test_a_manifest_naming_an_h5_file_of_1d_data_is_one_line(tmp_path):
    h5py = pytest.importorskip("h5py")
    from l2bg.rsa.ondisk import open_source

    src = _acts(tmp_path)
    with h5py.File(src / "flat.h5", "w") as f:
        f["x"] = np.arange(6.0)
    _manifest(src, [{"name": "a", "file": "a.npy"}, {"name": "flat", "file": "flat.h5"}])
    with pytest.raises(L2BGError, match="flat.h5 for layer 'flat', but it holds no numeric "
                                        r"array of shape \(n, features"):
        open_source(src)


@pytest.mark.parametrize("depth", [10_000, 200_000])
def test_a_deeply_nested_manifest_is_one_line(tmp_path, capsys, depth):
    src = _acts(tmp_path)
    (src / "manifest.json").write_text("[" * depth + "]" * depth)
    assert main(["rsa", str(src), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "manifest.json is not valid JSON" in one_line(capsys)


@pytest.mark.parametrize("layers, words", [
    ({"a": 1}, "check or remove it"),
    ([["a", "a.npy"]], "check or remove it"),
    ([{"name": "a", "file": 5}], "must be strings"),
    ([{"name": 1, "file": "a.npy"}], "must be strings"),
])
def test_a_malformed_manifest_is_one_line(tmp_path, layers, words):
    from l2bg.rsa.ondisk import open_source

    src = _acts(tmp_path)
    _manifest(src, layers)
    with pytest.raises(L2BGError, match=words):
        open_source(src)


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink", "nested-parent"])
def test_a_manifest_never_reads_outside_its_directory(tmp_path, where):
    """The manifest rule (docs/design.md): a file a manifest names must resolve inside the
    manifest's directory; ``../``, absolute paths and links leading out are refused."""
    from l2bg.rsa.ondisk import open_source

    src = _acts(tmp_path)
    outside = tmp_path / "secret.npy"
    np.save(outside, np.zeros((6, 3)))
    name = {"parent": "../secret.npy", "absolute": str(outside), "symlink": "link.npy",
            "nested-parent": "sub/../../secret.npy"}[where]
    if where == "symlink":
        (src / "link.npy").symlink_to(outside)
    (src / "sub").mkdir()
    _manifest(src, [{"name": "a", "file": "a.npy"}, {"name": "s", "file": name}])
    with pytest.raises(L2BGError, match="lies outside .*only name files inside its own"):
        open_source(src)


def test_a_manifest_may_name_files_in_subdirectories(tmp_path):
    from l2bg.rsa.ondisk import open_source

    src = _acts(tmp_path)
    (src / "sub").mkdir()
    np.save(src / "sub" / "b.npy", np.ones((6, 2)))
    _manifest(src, [{"name": "a", "file": "a.npy"}, {"name": "b", "file": "sub/./b.npy"}])
    assert list(open_source(src).layers) == ["a", "b"]


# ------------------------------------------------------------------ item 23: topology


def _saved_mlp(tmp_path):
    from l2bg.net.jointnet import JointNet
    from l2bg.net.templates import mlp

    torch.manual_seed(0)
    net = JointNet(mlp(input_dim=6, hidden=(5,), num_classes=3))
    net.add_task("a")
    net.save(tmp_path)
    return json.loads((tmp_path / "jointnet.json").read_text())


@pytest.mark.parametrize("kwargs, words", [
    ({"num_classes": -1}, "mlp: num_classes must be an integer >= 1, got -1"),
    ({"num_classes": 0}, "mlp: num_classes must be an integer >= 1, got 0"),
    ({"hidden": [2**62]}, f"above the limit of {bounds.MAX_PARAMETERS:,}"),
    ({"hidden": [-5]}, r"mlp: hidden\[0\] must be an integer >= 1, got -5"),
    ({"hidden": 5}, "mlp: hidden must be a list of integers"),
    ({"input_dim": 2**40}, f"above the limit of {bounds.MAX_PARAMETERS:,}"),
    ({"input_dim": 1e400}, "input_dim must be an integer >= 1"),
])
def test_jointnet_load_with_bad_mlp_kwargs_is_one_line(tmp_path, kwargs, words):
    from l2bg.net.jointnet import JointNet

    topo = _saved_mlp(tmp_path)
    topo["template"]["kwargs"].update(kwargs)
    (tmp_path / "jointnet.json").write_text(json.dumps(topo))
    with pytest.raises(L2BGError, match=words) as info:
        JointNet.load(tmp_path)
    assert "\n" not in str(info.value) and "jointnet.json" in str(info.value)


@pytest.mark.parametrize("kwargs, words", [
    ({"dropout": 5}, r"convnet: dropout must be a probability in \[0, 1\), got 5"),
    ({"dropout": -0.1}, "convnet: dropout must be a probability"),
    ({"dropout": float("nan")}, "convnet: dropout must be a probability"),
    ({"kernels": [-1, 3, 2]}, r"convnet: kernels\[0\] must be an integer >= 1, got -1"),
    ({"channels": [64, 0, 256]}, r"convnet: channels\[1\] must be an integer >= 1"),
    ({"fc": [2**40, 8]}, f"above the limit of {bounds.MAX_PARAMETERS:,}"),
    ({"in_channels": -3}, "convnet: in_channels must be an integer >= 1"),
    ({"image_size": True}, "convnet: image_size must be an integer >= 1"),
])
def test_convnet_parameters_are_checked_where_the_template_is_built(kwargs, words):
    from l2bg.net.catalog import make_template

    with pytest.raises(L2BGError, match=words):
        make_template("convnet", **kwargs)


def test_a_per_task_head_is_bounded_where_it_is_built():
    from l2bg.net.templates import mlp

    tpl = mlp(input_dim=4, hidden=[3], shared_head=False)
    assert tpl.build_head(5).out_features == 5
    for bad, words in ((-1, "num_classes must be an integer >= 1"),
                       (2**62, "above the limit")):
        with pytest.raises(L2BGError, match=words):
            tpl.build_head(bad)


# ------------------------------------------------------------------ item 24: explain


@pytest.mark.parametrize("value", [1e308, 2.5, -0.5])
def test_explain_of_conflict_scores_outside_0_2_is_one_line(tmp_path, capsys, value):
    record = {"benchmark": "pmnist", "strategy": "l2bg", "slots": ["fc1", "fc2"],
              "expandable_slots": ["fc1", "fc2"],
              "tasks": [{"name": "t0", "bind_to": None, "delta": None, "grown_slots": []},
                        {"name": "t1", "bind_to": "t0", "delta": 0.5, "grown_slots": ["fc1"],
                         "conflict": {"t0": {"layers": [value, value], "score": 1.0}}}]}
    (tmp_path / "results.json").write_text(json.dumps(record))
    assert main(["explain", str(tmp_path)]) == 2
    assert "conflict scores in [0, 2]" in one_line(capsys)
    record["tasks"][1]["conflict"]["t0"]["layers"] = [0.25, 2.0]
    (tmp_path / "results.json").write_text(json.dumps(record))
    assert main(["explain", str(tmp_path)]) == 0



def test_an_rdm_accumulator_beyond_memory_is_one_line(tmp_path, capsys, monkeypatch):
    """n is read from the activation files: its n x n accumulator is bounded by the memory
    (here a machine of 1 MB) before it is allocated."""
    from l2bg.base.bounds import memory_bytes

    np.save(tmp_path / "a.npy", np.zeros((1000, 2), np.float32))
    monkeypatch.setattr("l2bg.base.bounds.memory_bytes", lambda: 10**6)
    assert main(["rsa", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = one_line(capsys)
    assert "accumulator of 1,000 samples" in err and "--samples" in err
    assert main(["rsa", str(tmp_path), "--samples", "400", "--out", str(tmp_path / "o"),
                 "--quiet"]) == 0
    monkeypatch.undo()
    assert memory_bytes() is None or memory_bytes() > 10**8


class _Shape:
    """Pickles as numpy's ``_reconstruct(ndarray, shape, 'B')`` without the bytes: an array of
    any size, uninitialised (never backed by the file)."""

    def __init__(self, shape):
        self.shape = shape

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return _reconstruct, (np.ndarray, self.shape, b"B")


@pytest.mark.parametrize("rows", [4, 2**20])
def test_a_cifar_array_the_file_does_not_hold_is_refused(tmp_path, rows):
    from l2bg.data.sources import _load_cifar_pickle

    raw = pickle.dumps({b"data": _Shape((rows, 3072)), b"fine_labels": [0] * rows}, protocol=2)
    (tmp_path / "train").write_bytes(raw)
    with pytest.raises(L2BGError, match=r"b'data' declares [\d,]+ bytes but the file holds"):
        _load_cifar_pickle(tmp_path / "train")
