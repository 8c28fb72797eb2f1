"""l2bg.rsa reference backend against scipy (pdist 'correlation', spearmanr, pearsonr)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import pdist, squareform
from scipy.stats import pearsonr, rankdata, spearmanr

from l2bg import rsa
from l2bg.base.errors import L2BGError

FAST = settings(max_examples=40, deadline=None)


def scipy_rdm(x: np.ndarray) -> np.ndarray:
    """pdist 'correlation' in float64 with the documented constant-sample convention."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] < 2:
        return np.zeros((x.shape[0], x.shape[0]))
    with np.errstate(invalid="ignore", divide="ignore"):
        d = squareform(pdist(x, "correlation"), checks=False)
    xc = x - x.mean(axis=1, keepdims=True)
    const = np.linalg.norm(xc, axis=1) <= 1e-6 * np.linalg.norm(x, axis=1)
    d[const, :] = 1.0
    d[:, const] = 1.0
    np.fill_diagonal(d, 0.0)
    return np.clip(d, 0.0, 2.0)


@st.composite
def activations(draw, max_n=12, max_d=24, batch=False):
    """Random activations with offsets, scales, integer values (ties), constant samples."""
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, max_d))
    b = draw(st.integers(1, 3)) if batch else None
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    shape = (b, n, d) if batch else (n, d)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if draw(st.booleans()):
        x = x.round()
    x = x * draw(st.sampled_from([1e-3, 1.0, 1e3])) + draw(st.sampled_from([0.0, -5.0, 100.0]))
    for row in draw(st.lists(st.integers(0, n - 1), max_size=2)):
        x[..., row, :] = draw(st.sampled_from([0.0, 2.5, -7.0]))
    return x


# --------------------------------------------------------------------------------------- rdm


@FAST
@given(activations())
def test_rdm_float64_matches_scipy(x):
    d = rsa.rdm(x, backend="torch")
    assert d.dtype == torch.float64
    np.testing.assert_allclose(d.numpy(), scipy_rdm(x.numpy()), rtol=0, atol=1e-9)


@FAST
@given(activations())
def test_rdm_float32_matches_scipy(x):
    """Stated float32 tolerance: 2e-5 absolute (fp32 Gram over d <= 24 normalised features);
    the reference is scipy on the same float32 values in float64."""
    x32 = x.float()
    xc = x32.double() - x32.double().mean(1, keepdim=True)
    rel = xc.norm(dim=1) / x32.double().norm(dim=1).clamp_min(1e-300)
    ok = (rel > 1e-3) | (rel <= 1e-7)
    x32 = x32[ok]
    d = rsa.rdm(x32, backend="torch")
    assert d.dtype == torch.float32
    np.testing.assert_allclose(d.numpy(), scipy_rdm(x32.double().numpy()), rtol=0, atol=2e-5)


@FAST
@given(activations(batch=True), st.sampled_from([torch.float32, torch.float64]))
def test_rdm_invariants_and_batching(x, dtype):
    x = x.to(dtype)
    d = rsa.rdm(x)
    assert d.shape == (x.shape[0], x.shape[1], x.shape[1])
    assert torch.equal(d, d.mT)
    assert torch.all(d.diagonal(dim1=-2, dim2=-1) == 0)
    assert torch.isfinite(d).all() and d.min() >= 0 and d.max() <= 2
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for i in range(x.shape[0]):
        torch.testing.assert_close(d[i], rsa.rdm(x[i]), rtol=0, atol=tol)
    tri = rsa.rdm_triu(x)
    iu = torch.triu_indices(x.shape[1], x.shape[1], 1)
    torch.testing.assert_close(tri, d[:, iu[0], iu[1]], rtol=0, atol=tol)


def test_rdm_triu_order_matches_pdist():
    x = torch.randn(9, 6, dtype=torch.float64)
    np.testing.assert_allclose(rsa.rdm_triu(x).numpy(), pdist(x.numpy(), "correlation"), atol=1e-12)


def test_constant_samples_are_at_distance_one():
    x = torch.randn(6, 10)
    x[1] = 0.0
    x[4] = 3.25
    d = rsa.rdm(x)
    others = torch.tensor([0, 2, 3, 5])
    for row in (1, 4):
        assert torch.all(d[row, others] == 1) and torch.all(d[others, row] == 1)
        assert d[row, row] == 0
    assert d[1, 4] == 1 and d[4, 1] == 1


def test_large_common_offset_is_accurate():
    gen = torch.Generator().manual_seed(0)
    x = (100.0 + torch.randn(40, 500, generator=gen, dtype=torch.float64)).float()
    ref = scipy_rdm(x.double().numpy())
    np.testing.assert_allclose(rsa.rdm(x).numpy(), ref, atol=2e-5)
    np.testing.assert_allclose(rsa.rdm(x.double()).numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-25, 1e25, 1e37])
def test_extreme_magnitudes_fall_back_exactly(scale):
    """fp32 squares that underflow or overflow are rescaled, not reported as constant or NaN."""
    x = torch.randn(7, 33, dtype=torch.float64)
    expected = scipy_rdm(x.numpy())
    np.testing.assert_allclose(rsa.rdm((x * scale).float()).numpy(), expected, atol=2e-5)


def test_low_precision_and_integer_inputs_upcast():
    x = torch.randn(8, 12)
    for t in (x.half(), x.bfloat16(), (x * 10).round().int()):
        d = rsa.rdm(t)
        assert d.dtype == torch.float32
        np.testing.assert_allclose(d.numpy(), scipy_rdm(t.double().numpy()), atol=2e-5)


def test_rdm_small_and_empty_shapes():
    assert torch.equal(rsa.rdm(torch.randn(1, 4)), torch.zeros(1, 1))
    assert rsa.rdm_triu(torch.randn(1, 4)).shape == (0,)
    assert torch.equal(rsa.rdm(torch.randn(3, 0)), 1 - torch.eye(3))
    assert rsa.rdm(torch.randn(2, 0, 5)).shape == (2, 0, 0)


def test_rdm_bad_input():
    with pytest.raises(L2BGError, match="shape"):
        rsa.rdm(torch.randn(5))
    with pytest.raises(L2BGError, match=r"x\[1\] contains NaN"):
        rsa.rdm(torch.stack([torch.randn(4, 3), torch.full((4, 3), float("nan"))]))
    with pytest.raises(L2BGError, match="contains NaN or inf"):
        rsa.rdm_triu(torch.tensor([[1.0, float("inf")], [1.0, 2.0]]))
    with pytest.raises(L2BGError, match="unknown backend"):
        rsa.rdm(torch.randn(4, 3), backend="cuda")


# --------------------------------------------------------------------------------------- compare


@st.composite
def vector_pairs(draw):
    m = draw(st.integers(3, 60))
    ints = draw(st.booleans())
    elem = st.integers(-3, 3).map(float) if ints else st.floats(-10, 10, allow_subnormal=False)
    a = draw(st.lists(elem, min_size=m, max_size=m))
    b = draw(st.lists(elem, min_size=m, max_size=m))
    return torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)


def scipy_or_zero(fn, a, b) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(fn(a, b).statistic)


@FAST
@given(vector_pairs())
def test_spearman_matches_scipy_with_ties(pair):
    a, b = pair
    expected = scipy_or_zero(spearmanr, a.numpy(), b.numpy())
    got = rsa.compare(a, b, method="spearman", backend="torch")
    assert got.dtype == torch.float64 and got.shape == ()
    assert abs(got.item() - expected) <= 1e-9


@FAST
@given(vector_pairs())
def test_pearson_matches_scipy(pair):
    a, b = pair
    expected = scipy_or_zero(pearsonr, a.numpy(), b.numpy())
    assert abs(rsa.compare(a, b, method="pearson").item() - expected) <= 1e-9


@FAST
@given(
    st.integers(1, 4),
    st.integers(1, 40),
    st.integers(0, 2**31 - 1),
    st.sampled_from([torch.float32, torch.float64, torch.float16]),
)
def test_average_ranks_match_rankdata(rows, m, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    v = torch.randint(-3, 4, (rows, m), generator=gen).to(dtype) / 2
    special = torch.tensor([-0.0, 0.0, float("inf"), -float("inf"), 1e-30], dtype=dtype)
    mask = torch.rand(rows, m, generator=gen) < 0.2
    v[mask] = special[torch.randint(0, 5, (int(mask.sum()),), generator=gen)]
    want = rankdata(v.double().numpy(), method="average", axis=-1)
    np.testing.assert_array_equal(rsa.average_ranks(v).numpy(), want)
    np.testing.assert_array_equal(rsa.average_ranks(v[0]).numpy(), want[0])


def test_compare_full_rdms_batches_and_broadcasts():
    gen = torch.Generator().manual_seed(1)
    a = rsa.rdm(torch.randn(3, 8, 5, generator=gen))
    b = rsa.rdm(torch.randn(8, 7, generator=gen))
    tri_a = torch.stack(
        [torch.from_numpy(squareform(a[i].numpy(), checks=False)) for i in range(3)]
    )
    tri_b = squareform(b.numpy(), checks=False)
    for method, fn in (("spearman", spearmanr), ("pearson", pearsonr)):
        got = rsa.compare(a, b, method=method)
        assert got.shape == (3,) and got.dtype == torch.float64
        for i in range(3):
            assert abs(got[i].item() - fn(tri_a[i].numpy(), tri_b).statistic) < 1e-6
        torch.testing.assert_close(rsa.compare(tri_a, b, method=method), got, rtol=0, atol=1e-12)
        torch.testing.assert_close(
            rsa.compare(a[:, None], tri_a[None], method=method).diagonal(),
            torch.ones(3, dtype=torch.float64),
        )


def test_constant_triangle_gives_zero():
    dead = rsa.rdm(torch.zeros(6, 4))  # every sample constant: all distances 1
    live = rsa.rdm(torch.randn(6, 4))
    assert torch.all(rsa.compare(dead, live) == 0)
    assert torch.all(rsa.compare(live, dead, method="pearson") == 0)
    torch.testing.assert_close(
        rsa.dissimilarity([torch.zeros(6, 4)], [torch.randn(6, 3)]),
        torch.ones(1, dtype=torch.float64),
    )


def test_compare_errors():
    with pytest.raises(L2BGError, match="n >= 3"):
        rsa.compare(torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(L2BGError, match="m >= 3"):
        rsa.compare(torch.zeros(2), torch.zeros(2))
    with pytest.raises(L2BGError, match="pairs"):
        rsa.compare(torch.zeros(4, 4), torch.zeros(5))
    with pytest.raises(L2BGError, match="NaN"):
        rsa.compare(torch.tensor([1.0, float("nan"), 2.0]), torch.ones(3))
    with pytest.raises(L2BGError, match="unknown comparison method"):
        rsa.compare(torch.zeros(3), torch.zeros(3), method="bures")
    with pytest.raises(L2BGError, match="broadcast"):
        rsa.compare(torch.rand(2, 5), torch.rand(3, 5))


# --------------------------------------------------------------------------------- dissimilarity


@settings(max_examples=15, deadline=None)
@given(st.integers(3, 20), st.integers(0, 2**31 - 1), st.sampled_from(["spearman", "pearson"]))
def test_dissimilarity_matches_scipy(n, seed, method):
    gen = torch.Generator().manual_seed(seed)
    acts_a = [torch.randn(n, 7, generator=gen), torch.randn(n, 2, 3, 3, generator=gen)]
    acts_b = [torch.randn(n, 5, generator=gen), torch.randn(n, 18, generator=gen)]
    acts_a.append(torch.randn(n, 7, generator=gen))
    acts_b.append(acts_a[-1] * 3 + 1)
    fn = spearmanr if method == "spearman" else pearsonr
    expected = [
        1 - fn(pdist(a.reshape(n, -1).double().numpy(), "correlation"),
               pdist(b.reshape(n, -1).double().numpy(), "correlation")).statistic
        for a, b in zip(acts_a, acts_b, strict=True)
    ]  # fmt: skip
    got = rsa.dissimilarity(acts_a, acts_b, method=method)
    assert got.dtype == torch.float64 and got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)
    assert abs(got[2].item()) < 1e-6


def test_dissimilarity_three_layers_of_three_samples():
    """(L, m) triangle stacks with L == m are not mistaken for full RDMs."""
    gen = torch.Generator().manual_seed(3)
    acts = [torch.randn(3, 4, generator=gen) for _ in range(3)]
    got = rsa.dissimilarity(acts, acts)
    torch.testing.assert_close(got, torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)


def test_dissimilarity_errors_name_the_problem():
    a = [torch.randn(5, 3), torch.randn(5, 4)]
    with pytest.raises(L2BGError, match="2 layers.*1"):
        rsa.dissimilarity(a, a[:1])
    with pytest.raises(L2BGError, match="layer 1 has n=5 .* n=6"):
        rsa.dissimilarity(a, [torch.randn(5, 3), torch.randn(6, 4)])
    bad = torch.randn(5, 4)
    bad[2, 1] = float("nan")
    with pytest.raises(L2BGError, match="layer 1 of net b has NaN"):
        rsa.dissimilarity(a, [torch.randn(5, 3), bad])
    with pytest.raises(L2BGError, match="layer 0 of net a has NaN"):
        rsa.dissimilarity([bad, a[1]], a)
    with pytest.raises(L2BGError, match="n >= 3"):
        rsa.dissimilarity([torch.randn(2, 3)], [torch.randn(2, 3)])
    assert rsa.dissimilarity([], []).shape == (0,)


# --------------------------------------------------------------------------------------- backends


def test_backend_reporting():
    x = torch.randn(4, 3)
    out, ran = rsa.rdm(x, backend="auto", return_backend=True)
    assert ran == "torch"
    torch.testing.assert_close(out, rsa.rdm(x))
    r, ran = rsa.compare(out, out.T.contiguous(), return_backend=True)
    assert ran == "torch" and float(r) == pytest.approx(1.0)
    acts = [torch.randn(6, 3), torch.randn(6, 4)]
    d, ran = rsa.dissimilarity(acts, acts, return_backend=True)
    assert ran == "torch" and d.shape == (2,)
    assert "torch" in rsa.available_backends()
    assert rsa.resolve_backend("auto", x) == "torch"


def test_layer_lists_are_not_tensors():
    x = torch.randn(10, 4)
    with pytest.raises(L2BGError, match="list of per-layer activation tensors"):
        rsa.dissimilarity(x, x)
    with pytest.raises(L2BGError, match="list of per-layer activation tensors"):
        rsa.dissimilarities([x], [x])


def test_import_is_light():
    code = "import sys, l2bg.rsa; assert not {'triton', 'scipy'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_dissimilarities_equal_one_pair_at_a_time():
    g = torch.Generator().manual_seed(11)
    ref = [torch.randn(9, 5, generator=g), torch.randn(9, 3, generator=g)]
    others = [[torch.randn(9, 5, generator=g), torch.randn(9, 3, generator=g)] for _ in range(3)]
    others[2][1] = torch.randn(9, 7, generator=g)  # candidates may differ in feature count
    batched = rsa.dissimilarities(ref, others)
    assert batched.shape == (3, 2)
    for k, o in enumerate(others):
        torch.testing.assert_close(batched[k], rsa.dissimilarity(ref, o), rtol=0, atol=1e-12)
    bad = [list(o) for o in others]
    bad[1][0] = bad[1][0].clone()
    bad[1][0][2, 1] = float("nan")
    with pytest.raises(L2BGError, match=r"layer 0 of net b\[1\] has NaN"):
        rsa.dissimilarities(ref, bad)
    assert rsa.dissimilarities(ref, []).shape == (0, 2)


def test_comparison_methods_registry():
    from l2bg.rsa import methods

    g = torch.Generator().manual_seed(3)
    a, b = rsa.rdm(torch.randn(8, 5, generator=g)), rsa.rdm(torch.randn(8, 5, generator=g))
    assert float(rsa.compare(a, b, method="corr")) == float(rsa.compare(a, b, method="pearson"))
    # a user's method is available to compare and dissimilarity at once
    methods.register(methods.CompareMethod("neg-pearson", lambda x, y: -methods.get(
        "pearson").torch(x, y)))
    try:
        assert float(rsa.compare(a, b, method="neg-pearson")) == pytest.approx(
            -float(rsa.compare(a, b, method="pearson")))
        acts = [torch.randn(8, 3, generator=g)]
        other = [torch.randn(8, 4, generator=g)]
        d = rsa.dissimilarity(acts, other, method="neg-pearson")
        assert float(d[0]) == pytest.approx(2 - float(rsa.dissimilarity(acts, other,
                                                                          method="pearson")[0]))
        with pytest.raises(L2BGError, match="already registered"):
            methods.register(methods.CompareMethod("corr", lambda x, y: x))
    finally:
        methods.unregister("neg-pearson")
    with pytest.raises(L2BGError, match="unknown comparison method 'nope'"):
        rsa.compare(a, b, method="nope")
    # an alias belongs to its method: unregistering the method frees it
    methods.register(methods.CompareMethod("anti", lambda x, y: -x.sum(-1), aliases=("anti2",)))
    assert methods.get("anti2") is methods.get("anti") and "anti2" not in methods.names()
    methods.unregister("anti")
    with pytest.raises(L2BGError, match="unknown comparison method 'anti2'"):
        methods.get("anti2")


def test_dissimilarity_reuses_one_workspace_without_mixing_layers_or_nets():
    """Layers of equal and of different shapes, one and several other nets: each value equals
    1 - compare(rdm(a_l), rdm(b_l)) computed call by call (the centred-rows workspace that
    dissimilarities passes from net a to the others must not leak between them)."""
    g = torch.Generator().manual_seed(11)
    acts_a = [torch.randn(9, 6, generator=g), torch.randn(9, 6, generator=g) * 3 + 1,
              torch.randn(9, 2, 5, generator=g)]
    others = [[torch.randn(9, 6, generator=g), torch.randn(9, 6, generator=g),
               torch.randn(9, 10, generator=g)] for _ in range(3)]
    for nets in (others[:1], others):
        got = rsa.dissimilarities(acts_a, nets, backend="torch")
        for k, net in enumerate(nets):
            for layer, (xa, xb) in enumerate(zip(acts_a, net, strict=True)):
                want = 1 - rsa.compare(rsa.rdm_triu(xa.reshape(9, -1), backend="torch"),
                                       rsa.rdm_triu(xb.reshape(9, -1), backend="torch"))
                assert float(got[k, layer]) == pytest.approx(float(want), abs=1e-12)
