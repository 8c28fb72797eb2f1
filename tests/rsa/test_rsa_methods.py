"""The comparison registry beyond Spearman/Pearson (cosine, rho-a, tau-a, Kendall's tau-b):
torch math against scipy and brute-force definitions, the all-pairs form against the broadcast
form, the C++ discordant-pair count against its torch reference, and ranking each RDM once."""

import itertools
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import kendalltau, rankdata

from l2bg import rsa
from l2bg.rsa import comparisons, methods, reference

FAST = settings(max_examples=40, deadline=None)


@st.composite
def vector_pairs(draw, max_m=40):
    """Two triangles of m pairs: floats, small integers (ties), constants."""
    m = draw(st.integers(3, max_m))

    def one():
        kind = draw(st.sampled_from(["float", "int", "const", "zero"]))
        if kind == "const":
            return [draw(st.sampled_from([1.0, 2.5, -4.0]))] * m
        if kind == "zero":
            return [0.0] * m
        elem = st.integers(-3, 3).map(float) if kind == "int" else st.floats(
            -10, 10, allow_subnormal=False)
        return draw(st.lists(elem, min_size=m, max_size=m))

    return torch.tensor(one(), dtype=torch.float64), torch.tensor(one(), dtype=torch.float64)


def brute_tau(a: np.ndarray, b: np.ndarray, variant: str) -> float:
    """Kendall's tau from its definition over all pairs (l2bg convention: 0 when degenerate)."""
    s = sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
            for i, j in itertools.combinations(range(len(a)), 2))
    total = len(a) * (len(a) - 1) / 2
    if variant == "a":
        return s / total
    ta = sum(a[i] == a[j] for i, j in itertools.combinations(range(len(a)), 2))
    tb = sum(b[i] == b[j] for i, j in itertools.combinations(range(len(a)), 2))
    if ta == total or tb == total:
        return 0.0
    return s / np.sqrt((total - ta) * (total - tb))


def oracle(method: str, a: np.ndarray, b: np.ndarray) -> float:
    if method == "cosine":
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))
    if method == "rho-a":
        m = len(a)
        ra, rb = rankdata(a) - (m + 1) / 2, rankdata(b) - (m + 1) / 2
        return float(12 * ra @ rb / (m**3 - m))
    if method == "tau-a":
        return brute_tau(a, b, "a")
    want = kendalltau(a, b).statistic
    assert np.isnan(want) == (np.ptp(a) == 0 or np.ptp(b) == 0)
    return 0.0 if np.isnan(want) else float(want)


@FAST
@given(vector_pairs(), st.sampled_from(["cosine", "rho-a", "tau-a", "kendall", "tau-b"]))
def test_methods_match_their_definitions(pair, method):
    a, b = pair
    expected = oracle(method, a.numpy(), b.numpy())
    got = rsa.compare(a, b, method=method)
    assert got.dtype == torch.float64 and got.shape == ()
    assert abs(got.item() - expected) <= 1e-12
    if method in ("kendall", "tau-b"):
        assert abs(expected - brute_tau(a.numpy(), b.numpy(), "b")) <= 1e-12
    if method != "cosine":  # float32 triangles: same ties, same ranks
        assert abs(rsa.compare(a.float(), b.float(), method=method).item() - oracle(
            method, a.float().double().numpy(), b.float().double().numpy())) <= 1e-9


@FAST
@given(st.integers(1, 4), st.integers(1, 3), st.integers(5, 30), st.integers(0, 2**31 - 1),
       st.sampled_from(methods.names()))
def test_all_pairs_equals_broadcast_pairs(ka, kb, m, seed, method):
    gen = torch.Generator().manual_seed(seed)
    ta = torch.randint(-2, 3, (ka, m), generator=gen).double()
    tb = torch.randn(kb, m, generator=gen, dtype=torch.float64)
    tb[0] = tb[0].round()
    if ka > 1:
        ta[1] = 3.0  # a constant triangle
    spec = methods.get(method)
    grid = spec.all_pairs(ta, tb)
    assert grid.shape == (ka, kb) and grid.dtype == torch.float64
    torch.testing.assert_close(grid, rsa.compare(ta[:, None], tb[None], method=method),
                               rtol=0, atol=1e-12)
    for i in range(ka):
        for j in range(kb):
            one = rsa.compare(ta[i], tb[j], method=method)
            assert abs(grid[i, j].item() - one.item()) <= 1e-12


@st.composite
def sequences(draw):
    p = draw(st.integers(1, 4))
    m = draw(st.one_of(st.integers(0, 70), st.sampled_from([16, 17, 33, 100])))
    top = draw(st.sampled_from([1, 2, 5, 1000]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return torch.randint(0, top, (p, m), generator=gen)


def brute_discordant(rows: torch.Tensor) -> list[int]:
    return [sum(int(r[i] > r[j]) for i in range(len(r)) for j in range(i + 1, len(r)))
            for r in rows.tolist()]


@FAST
@given(sequences(), st.sampled_from([torch.int32, torch.int64]))
def test_discordant_count_native_equals_reference_and_definition(seq, dtype):
    want = brute_discordant(seq)
    assert comparisons.count_discordant_torch(seq).tolist() == want
    assert comparisons.count_discordant(seq.to(dtype)).tolist() == want
    if comparisons._native_discordant():
        span = int(seq.max()) + 1 if seq.numel() else 1
        assert torch.ops.l2bg.count_discordant(seq.to(dtype), span).tolist() == want


@pytest.mark.parametrize("threads", [1, 2])
def test_discordant_count_long_rows_split_over_threads(threads):
    """Rows over 2^15 elements are split in chunks per thread (the across-chunk histograms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(threads)
        for top in (3, 70_000):
            seq = torch.randint(0, top, (1, 70_000), generator=gen)
            ref = comparisons.count_discordant_torch(seq)
            assert torch.equal(comparisons.count_discordant(seq), ref)
            assert torch.equal(comparisons.count_discordant(seq.repeat(3, 1)), ref.repeat(3))
    finally:
        torch.set_num_threads(before)


def test_dense_ranks_and_ties():
    t = torch.tensor([[3.0, -0.0, 0.0, 3.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    for dtype in (torch.float64, torch.float32, torch.float16):
        ranks, order, ties = comparisons.dense_ranks(t.to(dtype))
        assert ranks.tolist() == [[2, 0, 0, 2, 1], [0, 0, 0, 0, 0]]
        assert ties.tolist() == [2, 10]
        assert torch.equal(t.to(dtype).gather(1, order), t.to(dtype).sort(dim=1).values)


@pytest.mark.parametrize("method", ["spearman", "rho-a", "kendall", "tau-a"])
def test_each_rdm_is_ranked_once(monkeypatch, method):
    """K1 x K2 comparisons sort K1 + K2 rows, not K1 * K2 pairs (no ties in either side)."""
    rows_sorted = []
    original = reference.sort_rows

    def counting(v):
        rows_sorted.append(v.shape[0])
        return original(v)

    monkeypatch.setattr(reference, "sort_rows", counting)
    monkeypatch.setattr(comparisons, "sort_rows", counting)
    gen = torch.Generator().manual_seed(0)
    ta, tb = torch.rand(5, 50, generator=gen), torch.rand(4, 50, generator=gen)
    out = methods.get(method).all_pairs(ta.double(), tb.double())
    assert out.shape == (5, 4)
    assert sum(rows_sorted) == 9


@pytest.mark.parametrize("shape", [(70, 9), (3, 40), (1, 5)])  # many short rows; few rows
def test_sort_rows_orders_values_and_ties(shape):
    gen = torch.Generator().manual_seed(3)
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        v = torch.randint(-3, 4, shape, generator=gen).to(dtype) / 2
        v[0, :2] = torch.tensor([-0.0, 0.0], dtype=dtype)
        v[-1, -1] = torch.finfo(dtype).max if dtype != torch.float64 else 1e300
        s, order = reference.sort_rows(v)
        assert order.dtype == torch.int64
        assert torch.equal(v.gather(1, order), v.sort(dim=1).values)
        assert torch.equal(s[:, 1:] == s[:, :-1], v.sort(dim=1).values.diff(dim=1) == 0)


@pytest.mark.parametrize("scale", [1e-200, 1e200, 1e300])
def test_all_pairs_are_scale_free(scale):
    """Correlations and cosines of triangles of any float64 magnitude: nothing overflows."""
    gen = torch.Generator().manual_seed(4)
    ta, tb = torch.rand(3, 40, generator=gen).double(), torch.rand(2, 40, generator=gen).double()
    for method in ("pearson", "cosine", "spearman"):
        spec = methods.get(method)
        want = spec.all_pairs(ta, tb)
        got = spec.all_pairs(ta * scale, tb * scale)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_sides_prepared_side_by_side_equal_one_after_the_other(monkeypatch):
    """With one torch thread (the drop-in, layer x layer RSA), large sides are sorted in two
    Python threads; the result is exactly the sequential one, ties and batches included."""
    from l2bg.rsa.blas import one_torch_thread

    gen = torch.Generator().manual_seed(6)
    m = comparisons._SIDE_BY_SIDE_MIN + 17
    ta = torch.randint(0, 60, (1, m), generator=gen).double()  # ties
    tb = torch.rand(2, m, generator=gen, dtype=torch.float64)
    pools = []

    class CountingPool(comparisons.ThreadPoolExecutor):
        def __init__(self, *a, **k):
            pools.append(1)
            super().__init__(*a, **k)

    monkeypatch.setattr(comparisons, "ThreadPoolExecutor", CountingPool)
    before = torch.get_num_threads()
    for method in ("spearman", "kendall", "tau-a", "rho-a"):
        spec = methods.get(method)
        with monkeypatch.context() as mp:
            mp.setattr(comparisons, "_SIDE_BY_SIDE_MIN", 2**62)
            want = spec.all_pairs(ta, tb)
        n_pools = len(pools)
        with one_torch_thread("cpu"):
            assert torch.get_num_threads() == 1
            got = spec.all_pairs(ta, tb)
        assert torch.get_num_threads() == before
        assert torch.equal(got, want), method
        if (os.cpu_count() or 1) > 1:
            assert len(pools) == n_pools + 1, method  # the two sides ran side by side


def test_one_torch_thread_restores_the_count_on_error():
    from l2bg.rsa.blas import one_torch_thread

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"), one_torch_thread("cpu"):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with one_torch_thread("meta"):  # not the CPU: untouched
        assert torch.get_num_threads() == before
