"""Scale-safe RSA in float64 (issue 14, item 8): activations and vectors of any magnitude give the
same RDMs, comparisons and dissimilarities as at magnitude 1; the Triton compare kernel, which
does not rescale, hands such inputs to the reference."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from l2bg import rsa
from l2bg.errors import L2BGError
from l2bg.rsa.reference import compare_torch, rdm_triu_torch

# magnitudes in [1e-3, 1e3] or 0: scaled by 2^k for |k| <= 1000 they stay normal floats, so the
# scaled input is exactly the input times 2^k
_elem = st.one_of(st.just(0.0), st.floats(1e-3, 1e3), st.floats(-1e3, -1e-3))


@st.composite
def activations(draw):
    n = draw(st.integers(3, 10))
    d = draw(st.integers(1, 8))
    x = draw(hnp.arrays(np.float64, (n, d), elements=_elem))
    if draw(st.booleans()):  # a constant row, and one that is constant up to 1e-9 of its norm
        x[0] = x[0, 0]
        x[-1] = 5.0 + 1e-9 * np.arange(d)
    return torch.from_numpy(x)


@settings(max_examples=60, deadline=None)
@given(activations(), st.integers(-1000, 1000))
def test_rdm_is_the_same_at_every_power_of_two_scale(x, k):
    want = rdm_triu_torch(x.unsqueeze(0))
    got = rdm_triu_torch((x * 2.0**k).unsqueeze(0) if abs(k) < 1000 else
                         (x * 2.0**(k // 2) * 2.0**(k - k // 2)).unsqueeze(0))
    assert torch.allclose(got, want, rtol=0, atol=1e-12), (k, (got - want).abs().max())


@pytest.mark.parametrize("scale", [1e154, 1e160, 1e200, 1e300, 1e307, 1e-155, 1e-200, 1e-300])
def test_a_net_against_itself_scaled_has_dissimilarity_zero(scale):
    """The issue's repro: at these scales every sample was treated as constant (1.0)."""
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(12, d, generator=g, dtype=torch.float64) for d in (3, 7, 20)]
    same = rsa.dissimilarity(layers, [x * scale for x in layers])
    assert torch.equal(same, torch.zeros(3, dtype=torch.float64)), same
    for x in layers:
        assert torch.allclose(rsa.rdm(x * scale), rsa.rdm(x), rtol=0, atol=1e-12)
    # a sample that is constant stays constant, whatever the scale: distance 1 to the others
    x = layers[0].clone()
    x[2] = 7.0
    r = rsa.rdm(x * scale)
    assert torch.equal(r[2, [0, 1, 3]], torch.ones(3, dtype=torch.float64))


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, st.integers(3, 40), elements=_elem),
       hnp.arrays(np.float64, st.integers(3, 40), elements=_elem),
       st.integers(-1000, 1000), st.integers(-1000, 1000))
def test_pearson_is_scale_free(a, b, ka, kb):
    m = min(len(a), len(b))
    a, b = torch.from_numpy(a[:m]), torch.from_numpy(b[:m])

    def scaled(v, k):
        return v * 2.0**(k // 2) * 2.0**(k - k // 2)
    want = compare_torch(a, b, "pearson")
    got = rsa.compare(scaled(a, ka), scaled(b, kb), method="pearson", backend="torch")
    assert torch.allclose(got, want, rtol=0, atol=1e-12), (ka, kb, got, want)


@pytest.mark.parametrize("sa, sb", [(1e200, 1.0), (1e-200, 1.0), (1e200, 1e-200),
                                    (1e300, 1e300), (1e-300, 1e-300), (1e154, 1e-155)])
def test_pearson_of_vectors_of_extreme_magnitude(sa, sb):
    """The issue's repro: magnitude 1e±200 returned 0."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(50, generator=g, dtype=torch.float64)
    b = a + 0.5 * torch.randn(50, generator=g, dtype=torch.float64)
    want = rsa.compare(a, b, method="pearson")
    assert 0.5 < want < 1
    got = rsa.compare(a * sa, b * sb, method="pearson")
    assert abs(got - want) < 1e-12
    # spearman sees only the order: unchanged too
    assert rsa.compare(a * sa, b * sb) == rsa.compare(a, b)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the interpreter's
@pytest.mark.parametrize("sa, sb", [(1e200, 1.0), (1e-200, 1e-200), (1e130, 1e-130)])
def test_the_triton_pearson_kernel_hands_extreme_magnitudes_to_the_reference(sa, sb):
    if "triton" not in rsa.available_backends():
        pytest.skip("no Triton backend (no CUDA and no interpreter)")
    g = torch.Generator().manual_seed(2)
    a = torch.randn(4, 40, generator=g, dtype=torch.float64)
    b = a + torch.randn(4, 40, generator=g, dtype=torch.float64)
    want = rsa.compare(a, b, method="pearson", backend="torch")
    got = rsa.compare(a * sa, b * sb, method="pearson", backend="triton")
    assert torch.allclose(got.cpu(), want, rtol=0, atol=1e-12)
    with pytest.raises(L2BGError, match="NaN or inf"):
        bad = a.clone()
        bad[1, 3] = float("inf")
        rsa.compare(bad * sa, b, method="pearson", backend="triton")


def test_bare_tensors_for_lists_of_layers_are_one_line():
    x = torch.randn(10, 4)
    with pytest.raises(L2BGError, match="list of per-layer activation tensors"):
        rsa.dissimilarity(x, x)
    with pytest.raises(L2BGError, match="list"):
        rsa.dissimilarities([x], x)
