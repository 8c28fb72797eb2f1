"""Similarity measures: the registry, RSA measures equal to l2bg.rsa bit for bit, and linear CKA
against the direct formula (centring matrix, traces of Gram matrices) with its invariances and
degenerate inputs."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l2bg import rsa
from l2bg.base.errors import L2BGError
from l2bg.conflict import scores as conflict
from l2bg.conflict.similarity import MEASURES, SimilarityMeasure, rsa_measure
from l2bg.rsa.cka import linear_cka

FAST = settings(max_examples=40, deadline=None)
dims = st.tuples(st.integers(3, 12), st.integers(1, 9), st.integers(1, 9), st.integers(0, 2 ** 31))


def cka_direct(x: np.ndarray, y: np.ndarray) -> float:
    """tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)) with K = X Xᵀ, L = Y Yᵀ, H = I − 11ᵀ/n."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float(np.trace(k @ l_) / np.sqrt(np.trace(k @ k) * np.trace(l_ @ l_)))


def data(n, d1, d2, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d1, generator=g, dtype=dtype)
    mix = torch.randn(d1, d2, generator=g, dtype=dtype)
    y = torch.tanh(x @ mix) + 0.5 * torch.randn(n, d2, generator=g, dtype=dtype)
    return x, y


def random_orthogonal(d, seed):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


@FAST
@given(dims)
def test_cka_matches_the_direct_formula(shape):
    n, d1, d2, seed = shape
    x, y = data(n, d1, d2, seed)
    got = linear_cka(x, [y, x, y.float()])
    want = cka_direct(x.numpy(), y.numpy())
    assert got.dtype == torch.float64
    assert got[0].item() == pytest.approx(want, abs=1e-10)
    assert got[1].item() == pytest.approx(1.0, abs=1e-12)
    assert got[2].item() == pytest.approx(want, abs=1e-5)
    assert 0.0 <= got.min() and got.max() <= 1.0


@FAST
@given(dims, st.floats(1e-30, 1e30))
def test_cka_is_invariant_to_orthogonal_maps_scaling_and_shifts(shape, scale):
    n, d1, d2, seed = shape
    x, y = data(n, d1, d2, seed)
    base = linear_cka(x, [y])
    q = random_orthogonal(d2, seed + 1)
    moved = linear_cka(x * scale + 3.0 * scale, [y @ q, y * scale, y - 7.0])
    torch.testing.assert_close(moved, base.expand(3), atol=1e-9, rtol=0)


def test_cka_batches_mixed_widths_and_stacks():
    x, y = data(20, 5, 4, 0)
    _, z = data(20, 5, 7, 1)
    assert torch.equal(linear_cka(x, [y, z, y]), torch.stack([linear_cka(x, [y])[0],
                                                              linear_cka(x, [z])[0],
                                                              linear_cka(x, [y])[0]]))
    assert torch.equal(linear_cka(x, torch.stack([y, y])), linear_cka(x, [y, y]))
    # the sample-space form (features wider than samples) gives the same value
    wide_x, wide_y = data(6, 40, 30, 2)
    assert linear_cka(wide_x, [wide_y]).item() == pytest.approx(
        cka_direct(wide_x.numpy(), wide_y.numpy()), abs=1e-10)


def test_cka_of_constant_features_is_zero_and_never_nan():
    x, y = data(10, 3, 3, 0)
    const = torch.full((10, 3), 0.1, dtype=torch.float64)
    per_feature = torch.tensor([[1.0, 2.0, 3.0]]).expand(10, 3)
    got = linear_cka(x, [const, per_feature, torch.zeros(10, 0), y])
    assert got[:3].tolist() == [0.0, 0.0, 0.0] and got[3] > 0
    assert linear_cka(const, [const, y]).tolist() == [0.0, 0.0]
    tiny, huge = x * 1e-300, x * 1e300  # scale-safe: no square under- or overflows
    assert linear_cka(tiny, [huge]).item() == pytest.approx(1.0, abs=1e-12)


def test_cka_rejects_bad_input_in_one_line():
    x, _ = data(10, 3, 3, 0)
    with pytest.raises(L2BGError, match="NaN or inf"):
        linear_cka(x, [x.clone().fill_(float("nan"))])
    with pytest.raises(L2BGError, match="n=10"):
        linear_cka(x, [x[:5]])


def test_rsa_measures_give_the_rsa_dissimilarity_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(40, 7, generator=g), torch.randn(40, 3, generator=g)]
    others = [[torch.randn(40, 7, generator=g), torch.randn(40, 3, generator=g)],
              [a[0] * 2 + 1, torch.randn(40, 3, generator=g)]]
    for method in ("spearman", "pearson"):
        layers, ran = conflict.layer_conflicts(a, {"x": others[0], "y": others[1]},
                                               similarity=f"rsa-{method}", backend="torch")
        want = rsa.dissimilarities(a, others, method=method, backend="torch")
        assert [layers["x"], layers["y"]] == want.tolist() and ran == "torch"


@settings(max_examples=300, deadline=None)
@given(st.floats(-1, 1))
def test_conflict_of_one_minus_similarity_round_trips_exactly(r):
    d = torch.tensor([1.0 - r], dtype=torch.float64)
    assert (1.0 - (1.0 - d)).item() == d.item()


def test_cka_conflict_range_and_registry():
    x, y = data(30, 4, 4, 0)
    layers, ran = conflict.layer_conflicts([x, x], {"b": [y, x]}, similarity="linear-cka")
    assert 0 <= layers["b"][0] <= 1 and layers["b"][1] == pytest.approx(0, abs=1e-12)
    assert ran == "torch"
    assert MEASURES.names()[:3] == ["rsa-spearman", "rsa-pearson", "linear-cka"]
    with pytest.raises(L2BGError, match="torch only"):
        MEASURES.get("linear-cka").similarities([x], [[y]], backend="triton")
    with pytest.raises(L2BGError, match="unknown similarity measure 'cosine'"):
        MEASURES.get("cosine")
    with pytest.raises(L2BGError, match="2 slots and net 0 has 1"):
        MEASURES.get("linear-cka").similarities([x, x], [[y]])
    assert rsa_measure("corr").name == "rsa-pearson"


def test_a_registered_measure_is_used_by_the_conflict_model():
    def first_feature(ref, others, backend):
        out = torch.tensor([[float(torch.corrcoef(torch.stack([r[:, 0], o[:, 0]]))[0, 1])
                             for r, o in zip(ref, other, strict=True)] for other in others])
        return out, "torch"

    MEASURES.register(SimilarityMeasure("test-first-feature", "corr of feature 0", first_feature))
    try:
        x, y = data(30, 4, 4, 0)
        layers, _ = conflict.layer_conflicts([x], {"b": [x], "c": [-x]},
                                             similarity="test-first-feature")
        assert layers["b"][0] == pytest.approx(0) and layers["c"][0] == pytest.approx(2)
    finally:
        MEASURES._items.pop("test-first-feature")


def test_rsa_conflicts_are_the_dissimilarities_exactly():
    """C = 1 − s computed as an RSA dissimilarity is that dissimilarity to the last bit (not
    1 − (1 − d), which differs in float64 for most d < 0.5); CKA still goes through 1 − s."""

    g = torch.Generator().manual_seed(0)
    a = [torch.randn(40, 8, generator=g) for _ in range(3)]
    b = [x + 0.3 * torch.randn(40, 8, generator=g) for x in a]
    got, _ = conflict.layer_conflicts(a, {"b": b})
    assert got["b"] == rsa.dissimilarity(a, b).tolist()
    cka, _ = conflict.layer_conflicts(a, {"b": b}, similarity="linear-cka")
    sim, _ = MEASURES.get("linear-cka").similarities(a, [b])
    assert cka["b"] == (1.0 - sim[0]).tolist()
