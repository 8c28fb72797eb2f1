"""The CPU front door's fast paths (l2bg.rsa.cpu) against the reference beside them: the folded
RDM (one syrk, centring folded into the Gram) and the Spearman of long rows (one sort per row)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l2bg import rsa
from l2bg.rsa.cpu import folded_rdm_triu, spearman_rows
from l2bg.rsa.reference import compare_torch, rdm_triu_torch

DTYPES = [torch.float32, torch.float64]
FAST = settings(max_examples=40, deadline=None)


@FAST
@given(n=st.integers(3, 12), d=st.integers(1, 20), seed=st.integers(0, 2**31 - 1),
       exp=st.sampled_from([-110, -60, -20, 0, 20, 60, 110]), shift=st.floats(-3, 3),
       dtype=st.sampled_from(DTYPES))
def test_folded_matches_reference(n, d, seed, exp, shift, dtype):
    """Where the fold applies it gives the reference's RDM (fp32: 1e-5, fp64: 1e-12); at scales
    whose squares leave the dtype's range it declines."""
    g = torch.Generator().manual_seed(seed)
    x = ((torch.randn(n, d, generator=g, dtype=torch.float64) + shift) * 2.0**exp).to(dtype)
    got = folded_rdm_triu(x)
    want = rdm_triu_torch(x.unsqueeze(0))[0]
    if dtype == torch.float32 and abs(exp) > 60:
        assert got is None
    if got is not None:
        assert got.dtype == want.dtype
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(got, want, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_folded_declines_degenerate_rows(dtype):
    """Constant rows, mean-dominated rows, overflowing squares and non-BLAS inputs go to the
    reference; an ordinary matrix does not."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 8, generator=g, dtype=dtype)
    const = x.clone()
    const[2] = 3.0
    assert folded_rdm_triu(const) is None
    shifted = x.clone()
    shifted[1] += 10.0  # its mean dominates its spread
    assert folded_rdm_triu(shifted) is None
    assert folded_rdm_triu(torch.full((3, 4), 1e30, dtype=torch.float32)) is None
    assert folded_rdm_triu(x.half()) is None
    assert folded_rdm_triu(x.requires_grad_()) is None
    assert folded_rdm_triu(torch.randn(3, 64, generator=g, dtype=dtype)) is not None


@FAST
@given(n=st.integers(1, 10), d=st.integers(0, 16), seed=st.integers(0, 2**31 - 1),
       const=st.booleans(), shift=st.sampled_from([0.0, 0.5, 100.0]),
       dtype=st.sampled_from(DTYPES))
def test_front_door_rdm_triu_matches_reference(n, d, seed, const, shift, dtype):
    """rsa.rdm_triu on CPU tensors (the folded path, the reference where it declines) equals the
    reference for every input, constant and mean-dominated rows, d = 0 and n < 3 included."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) + shift).to(dtype)
    if const and n:
        x[0] = 1.5
    got = rsa.rdm_triu(x)
    want = rdm_triu_torch((x if d else x.new_zeros(n, 1)).unsqueeze(0))[0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-5)


def test_front_door_rdm_triu_rejects_nonfinite():
    """NaN activations still raise the front door's one-line error (the fold declines)."""
    x = torch.randn(4, 6)
    x[2, 3] = float("nan")
    with pytest.raises(rsa.NonFiniteError, match="NaN or inf"):
        rsa.rdm_triu(x)


@st.composite
def triangles(draw):
    """Rows (Ka, m), (Kb, m) broadcasting as 1 vs K: continuous, heavily tied (few distinct
    values), constant, or at huge/tiny scales."""
    m = draw(st.integers(3, 60))
    k = draw(st.integers(1, 4))
    ka, kb = draw(st.sampled_from([(1, k), (k, 1), (k, k)]))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["continuous", "ties", "constant"]))
    scale = draw(st.sampled_from([1.0, 1e-300, 1e-30, 1e30, 1e300]))
    dtype = draw(st.sampled_from(DTYPES))
    if dtype == torch.float32:
        scale = min(max(scale, 1e-30), 1e30)
    gen = np.random.default_rng(seed)

    def rows(count):
        if kind == "continuous":
            v = gen.standard_normal((count, m))
        else:
            v = gen.integers(0, 3, (count, m)).astype(np.float64)
            if kind == "constant":
                v[0] = 2.0
        return torch.from_numpy(v * scale).to(dtype)

    return rows(ka), rows(kb)


@FAST
@given(pair=triangles())
def test_spearman_rows_matches_reference(pair):
    """spearman_rows equals the reference Spearman (average ranks, r = 0 for a constant row)
    for continuous, tied and constant rows at any scale, either side broadcast."""
    ta, tb = pair
    got = spearman_rows(ta, tb)
    want = compare_torch(ta, tb, "spearman")
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want.reshape(-1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_spearman_rows_matches_scipy(dtype):
    """Against scipy.stats.spearmanr on tied data, and a constant row gives 0."""
    stats = pytest.importorskip("scipy.stats")
    gen = np.random.default_rng(1)
    a = gen.integers(0, 20, 500).astype(np.float64)
    b = a + gen.integers(0, 10, 500)
    got = spearman_rows(torch.tensor(a[None], dtype=dtype), torch.tensor(b[None], dtype=dtype))
    assert float(got[0]) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    flat = torch.full((1, 500), 0.25, dtype=dtype)
    assert float(spearman_rows(flat, torch.tensor(b[None], dtype=dtype))[0]) == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_compare_front_door_uses_rows_path(dtype):
    """rsa.compare and rsa.dissimilarity on CPU (the rows path) equal the reference Spearman of
    the reference RDMs, one net against one and against three."""
    g = torch.Generator().manual_seed(3)
    xa = torch.randn(40, 30, generator=g, dtype=dtype)
    xs = [xa + torch.randn(40, 30, generator=g, dtype=dtype) * s for s in (0.1, 1.0, 3.0)]
    ref_a = rdm_triu_torch(xa.unsqueeze(0))
    ref = torch.stack([compare_torch(ref_a[0], rdm_triu_torch(x.unsqueeze(0))[0], "spearman")
                       for x in xs])
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    one = rsa.dissimilarity([xa], [xs[0]])
    torch.testing.assert_close(one, 1.0 - ref[:1], rtol=0, atol=tol)
    many = rsa.dissimilarities([xa], [[x] for x in xs])
    torch.testing.assert_close(many[:, 0], 1.0 - ref, rtol=0, atol=tol)
    ta = rsa.rdm_triu(xa)
    tb = torch.stack([rsa.rdm_triu(x) for x in xs])
    torch.testing.assert_close(rsa.compare(ta, tb), compare_torch(ta, tb, "spearman"),
                               rtol=0, atol=1e-12)
