"""Streaming CKA (l2bg.rsa.cka_stream) against the formulas written out plainly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from l2bg.base.errors import L2BGError
from l2bg.rsa.cka import linear_cka
from l2bg.rsa.cka_stream import (
    CKAAccumulator,
    debiased_cka,
    gram,
    minibatch_cka,
    sources_cka,
    unbiased_hsic,
)


def plain_hsic1(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Song et al. 2012, eq. (5), element by element."""
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    t1 = np.trace(kt @ lt)
    t2 = (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
    t3 = 2 / (n - 2) * (one @ kt @ lt @ one)
    return (t1 + t2 - t3) / (n * (n - 3))


def plain_rbf(x: np.ndarray, sigma: float) -> np.ndarray:
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    med = np.median(d[~np.eye(len(x), dtype=bool)])
    s = sigma * (med if med > 0 else 1.0)
    return np.exp(-(d**2) / (2 * s * s))


def plain_gram(x: np.ndarray, kernel: str, sigma: float = 1.0) -> np.ndarray:
    x = x.reshape(len(x), -1)
    return x @ x.T if kernel == "linear" else plain_rbf(x, sigma)


def plain_minibatch(xs, ys, batch, kernel="linear"):
    n = len(xs[0])
    xy = np.zeros((len(xs), len(ys)))
    xx, yy = np.zeros(len(xs)), np.zeros(len(ys))
    for s in range(0, n, batch):
        ks = [plain_gram(x[s:s + batch], kernel) for x in xs]
        ls = [plain_gram(y[s:s + batch], kernel) for y in ys]
        for i, k in enumerate(ks):
            xx[i] += plain_hsic1(k, k)
            for j, l in enumerate(ls):  # noqa: E741
                xy[i, j] += plain_hsic1(k, l)
        for j, l in enumerate(ls):  # noqa: E741
            yy[j] += plain_hsic1(l, l)
    return xy / np.sqrt(xx[:, None] * yy[None, :])


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("n", [4, 5, 17])
def test_unbiased_hsic_matches_formula(kernel, n):
    g = np.random.default_rng(n)
    x, y = g.normal(size=(n, 6)), g.normal(size=(n, 3))
    k, l = plain_gram(x, kernel), plain_gram(y, kernel)  # noqa: E741
    got = unbiased_hsic(torch.from_numpy(k), torch.from_numpy(l))
    assert math.isclose(float(got), plain_hsic1(k, l), rel_tol=1e-9, abs_tol=1e-12)
    assert np.allclose(gram(torch.from_numpy(x), kernel).numpy(), k)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(4, 12), d=st.integers(1, 5), e=st.integers(1, 5),
       seed=st.integers(0, 2**16), kernel=st.sampled_from(["linear", "rbf"]))
def test_debiased_cka_matches_formula(n, d, e, seed, kernel):
    g = np.random.default_rng(seed)
    x, y = g.normal(size=(n, d)), g.normal(size=(n, e))
    k, l = plain_gram(x, kernel), plain_gram(y, kernel)  # noqa: E741
    kk, ll = plain_hsic1(k, k), plain_hsic1(l, l)
    want = plain_hsic1(k, l) / math.sqrt(kk * ll) if kk > 0 and ll > 0 else 0.0
    got = float(debiased_cka(torch.from_numpy(x), torch.from_numpy(y), kernel=kernel))
    assert math.isclose(got, want, rel_tol=1e-7, abs_tol=1e-9)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("n,batch", [(40, 10), (45, 10), (26, 7)])
def test_minibatch_sum_and_uneven_last_batch(kernel, n, batch):
    g = np.random.default_rng(n + batch)
    xs = [g.normal(size=(n, 5)), g.normal(size=(n, 2, 3))]
    ys = [g.normal(size=(n, 4)), xs[0] @ g.normal(size=(5, 5)), g.normal(size=(n, 1))]
    acc = CKAAccumulator(kernel=kernel)
    for s in range(0, n, batch):
        acc.update([torch.from_numpy(x[s:s + batch]) for x in xs],
                   [torch.from_numpy(y[s:s + batch]) for y in ys])
    assert acc.n == n
    assert np.allclose(acc.cka().numpy(), plain_minibatch(xs, ys, batch, kernel), atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(4, 30), d=st.integers(1, 8), e=st.integers(1, 8),
       seed=st.integers(0, 2**16))
def test_biased_linear_cka_is_the_feature_space_formula(n, d, e, seed):
    g = np.random.default_rng(seed)
    x, y = g.normal(size=(n, d)), g.normal(size=(n, e))
    xc, yc = x - x.mean(0), y - y.mean(0)
    want = (np.linalg.norm(yc.T @ xc) ** 2
            / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))
    got = float(linear_cka(torch.from_numpy(x), [torch.from_numpy(y)])[0])
    assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_fewer_than_four_samples_is_one_line(n):
    x = torch.randn(n, 3)
    with pytest.raises(L2BGError, match="at least 4") as exc:
        CKAAccumulator().update([x], [x])
    assert "\n" not in str(exc.value)


class Net(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.act, self.fc2 = nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_hooks_see_the_plain_forward(kernel):
    a, b = Net(0).double(), Net(1).double()
    x = torch.randn(53, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    loader = [(x[s:s + 16], None) for s in range(0, 53, 16)]
    res = minibatch_cka(a, b, loader, ["fc1", "act", "fc2"], ["fc1", "fc2"], kernel=kernel)
    with torch.no_grad():
        xs = [a.fc1(x), a.act(a.fc1(x)), a(x)]
        ys = [b.fc1(x), b(x)]
    want = plain_minibatch([t.numpy() for t in xs], [t.numpy() for t in ys], 16, kernel)
    assert res.rows == ["fc1", "act", "fc2"] and res.cols == ["fc1", "fc2"] and res.n == 53
    assert np.allclose(res.values, want, atol=1e-10)
    assert not a._forward_hooks and not a.fc1._forward_hooks  # hooks removed


def test_a_layer_against_itself_is_one():
    a = Net(3)
    loader = [torch.randn(20, 6) for _ in range(3)]
    res = minibatch_cka(a, a, loader, ["fc1", "fc2"], ["fc1", "fc2"])
    assert np.allclose(np.diag(res.values), 1.0, atol=1e-12)
    assert abs(res.values[0, 1]) < 1.0


def test_unknown_layer_and_kernel():
    with pytest.raises(L2BGError, match="not a module"):
        minibatch_cka(Net(0), Net(1), [torch.randn(8, 6)], ["nope"], ["fc1"])
    with pytest.raises(L2BGError, match="kernel"):
        CKAAccumulator(kernel="poly")


@pytest.mark.parametrize("measure", ["linear-cka", "cka-minibatch"])
def test_sources_cka_on_npy(tmp_path, measure):
    g = np.random.default_rng(0)
    x = g.normal(size=(30, 4)).astype(np.float32)
    for name, arr in {"l1": x, "l2": g.normal(size=(30, 2, 3)).astype(np.float32)}.items():
        (tmp_path / "a").mkdir(exist_ok=True)
        np.save(tmp_path / "a" / f"{name}.npy", arr)
    res = sources_cka([tmp_path / "a"], [None], measure=measure, batch_size=8)
    flat = [np.load(tmp_path / "a" / f"{k}.npy").reshape(30, -1).astype(np.float64)
            for k in res.rows]
    if measure == "cka-minibatch":
        want = plain_minibatch(flat[:], flat[:], 8)[:, :]  # 30 = 8+8+8+6
    else:
        want = np.array([[float(linear_cka(torch.from_numpy(p), [torch.from_numpy(q)])[0])
                          for q in flat] for p in flat])
    assert np.allclose(res.values, want, atol=1e-6)
    assert np.allclose(np.diag(res.values), 1.0, atol=1e-6)


@pytest.mark.parametrize("measure", ["rsa", "linear-cka", "cka-minibatch"])
def test_cli_measure(tmp_path, measure, capsys):
    from l2bg.cli import main

    g = np.random.default_rng(1)
    for src in ("a", "b"):
        (tmp_path / src).mkdir()
        np.save(tmp_path / src / "l1.npy", g.normal(size=(21, 5)).astype(np.float32))
        np.save(tmp_path / src / "l2.npy", g.normal(size=(21, 3, 2)).astype(np.float32))
    out = tmp_path / "out"
    argv = ["rsa", str(tmp_path / "a"), str(tmp_path / "b"), "--layers-b", "l2", "--measure",
            measure, "--device", "cpu", "--out", str(out), "--quiet"]
    code = main(argv + (["--batch-size", "8"] if measure == "cka-minibatch" else []))
    assert code == 0, capsys.readouterr().err
    got = json.loads((out / "similarity.json").read_text())
    assert got["rows"] == ["l1", "l2"] and got["cols"] == ["l2"] and got["n"] == 21
    assert (out / "similarity.png").exists() and (out / "similarity.csv").exists()
    a = [np.load(tmp_path / "a" / f"{k}.npy").reshape(21, -1).astype(np.float64)
         for k in ("l1", "l2")]
    b = [np.load(tmp_path / "b" / "l2.npy").reshape(21, -1).astype(np.float64)]
    if measure == "cka-minibatch":
        want = plain_minibatch(a, b, 8)  # batches 8, 8, 5
    elif measure == "linear-cka":
        want = np.array([[float(linear_cka(torch.from_numpy(x), [torch.from_numpy(b[0])])[0])]
                         for x in a])
    else:
        assert got["method"] == "spearman"
        return
    assert got["method"] == measure
    assert np.allclose(np.array(got["values"]), want, atol=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--measure", "linear-cka", "--method", "pearson"], "--method compares RDMs"),
    (["--measure", "rsa", "--kernel", "rbf"], "--kernel and --sigma apply"),
    (["--measure", "cka-minibatch", "--batch-size", "3"], "at least 4"),
])
def test_cli_measure_one_line_errors(tmp_path, extra, message, capsys):
    from l2bg.cli import main

    (tmp_path / "a").mkdir()
    np.save(tmp_path / "a" / "l1.npy", np.random.default_rng(0).normal(size=(9, 4)))
    code = main(["rsa", str(tmp_path / "a"), "--out", str(tmp_path / "out"), "--quiet", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_short_tail_is_left_out_and_recorded(tmp_path):
    g = np.random.default_rng(4)
    (tmp_path / "a").mkdir()
    xs = [g.normal(size=(30, 4)), g.normal(size=(30, 3))]
    for k, x in enumerate(xs):
        np.save(tmp_path / "a" / f"l{k}.npy", x)
    res = sources_cka([tmp_path / "a"], [None], batch_size=9)  # 9 + 9 + 9 + a tail of 3
    assert res.n == 27 and res.info["dropped_tail"] == 3
    assert np.allclose(res.values, plain_minibatch([x[:27] for x in xs], [x[:27] for x in xs], 9),
                       atol=1e-10)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("value", [1.0, 0.1, 1e3, 7.3])
def test_constant_layer_is_zero(kernel, value):
    x = torch.randn(12, 3, dtype=torch.float64)
    c = torch.full((12, 4), value, dtype=torch.float64)
    assert float(debiased_cka(x, c, kernel=kernel)) == 0.0
    assert float(debiased_cka(c, c, kernel=kernel)) == 0.0
