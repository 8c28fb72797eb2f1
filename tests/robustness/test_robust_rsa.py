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
from l2bg.base.errors import L2BGError
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


# ------------------------------------------------------------------ issue 22, items 16 and 17
# On-disk (streamed) RSA at the edge of the float range: the stream divides every row by a
# power of two (RowScale, shared with the in-memory path's pow2 scaling and its Gram-diagonal
# normalisation), so a layer against itself rescaled is 1.0 on disk as in memory.

_EXTREMES = [(np.float32, 1e20), (np.float32, 1e-30), (np.float64, 1e200),
             (np.float64, 1e-200)]


@pytest.mark.parametrize("dtype, scale", _EXTREMES)
def test_on_disk_rsa_of_a_layer_against_itself_rescaled_is_one(tmp_path, dtype, scale):
    from l2bg.rsa import methods
    from l2bg.rsa.layers import layer_similarity

    x = np.random.default_rng(0).standard_normal((16, 40)).astype(dtype)
    big = (x.astype(np.float64) * scale).astype(dtype)
    assert np.isfinite(big).all() and (big != 0).all()
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", big)
    for method in methods.names():
        disk = layer_similarity([tmp_path], method=method, slice_width=7).values
        memory = layer_similarity([{"a": torch.from_numpy(x), "b": torch.from_numpy(big)}],
                                  method=method).values
        assert np.isfinite(disk).all(), method
        assert abs(disk[0, 1] - 1.0) < 1e-6, (method, disk)
        np.testing.assert_allclose(disk, memory, rtol=0, atol=1e-6, err_msg=method)


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 9), st.lists(st.integers(-1000, 1000), min_size=1, max_size=5),
       st.integers(0, 2**31 - 1), st.booleans())
def test_stream_with_slices_of_any_magnitude_matches_the_in_memory_rdm(n, ks, seed, const):
    """Every slice of features at its own power-of-two magnitude (each row's scale grows
    mid-stream): the streamed RDM is the in-memory one of the concatenated features."""
    from l2bg.rsa.stream import TorchRDMStream

    g = torch.Generator().manual_seed(seed)
    slices = [torch.randn(n, 3, generator=g, dtype=torch.float64) * 2.0**(k // 2)
              * 2.0**(k - k // 2) for k in ks]
    if const:  # a constant sample stays constant at every scale
        for s in slices:
            s[0] = s[0, 0] if s is slices[0] else slices[0][0, 0]
    stream = TorchRDMStream(n, dtype=torch.float64)
    for s in slices:
        stream.update(s)
    want = rdm_triu_torch(torch.cat(slices, dim=1).unsqueeze(0))[0]
    got = stream.result(triu=True)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, want, rtol=0, atol=1e-9), (ks, (got - want).abs().max())


@pytest.mark.parametrize("scale", [1e20, 1e-30, 2.0**120, 2.0**-100])
def test_float32_stream_at_extreme_scale_equals_the_unscaled_stream(scale):
    from l2bg.rsa.stream import TorchRDMStream

    x = torch.randn(12, 30, generator=torch.Generator().manual_seed(3))
    x[4] = 2.5  # constant sample: distance 1 to every other
    runs = []
    for s in (1.0, scale):
        stream = TorchRDMStream(12)
        for lo in range(0, 30, 8):
            stream.update((x[:, lo:lo + 8].double() * s).float())
        runs.append(stream.result())
    assert torch.allclose(runs[1], runs[0], rtol=0, atol=1e-5)
    assert torch.equal(runs[1][4, [0, 1, 2, 3, 5]], torch.ones(5))


def test_triton_stream_at_extreme_scale_matches_the_reference():
    if "triton" not in rsa.available_backends():
        pytest.skip("no Triton backend (no CUDA and no interpreter)")
    from l2bg.kernels.rdm_stream import RDMStream

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(6, 20, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    want = rdm_triu_torch(x.unsqueeze(0))[0]
    for scale in (1e20, 1e-30):
        stream = RDMStream(6, device=dev, block=8, block_k=8)
        for lo in range(0, 20, 8):
            stream.update((x[:, lo:lo + 8] * scale).float().to(dev))
        got = stream.result(triu=True).double().cpu()
        assert torch.allclose(got, want, rtol=0, atol=1e-5), scale


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_stream_refuses_non_finite_activations_in_one_line(bad):
    from l2bg.rsa.stream import TorchRDMStream

    x = torch.randn(5, 4)
    x[2, 1] = bad
    with pytest.raises(L2BGError, match="NaN/inf"):
        TorchRDMStream(5).update(x)


def test_write_json_refuses_nan_in_one_line(tmp_path):
    """Item 17's second half: l2bg writes strict JSON; NaN is one L2BGError naming the file,
    and no file (nor temporary) is left."""
    from l2bg.base.fileio import write_json

    with pytest.raises(L2BGError, match=r"similarity\.json.*NaN"):
        write_json(tmp_path / "similarity.json", {"values": [[1.0, float("nan")]]})
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text("ab", min_size=1, max_size=3), min_size=1, max_size=4, unique=True),
       st.data())
def test_the_rsa_table_never_glues_numbers(names, data):
    """Item 27: short layer names made ``1.0000-0.1553``; every cell is now its own token."""
    from l2bg.cli.rsa import table

    k = len(names)
    values = data.draw(hnp.arrays(np.float64, (k, k), elements=st.floats(-1, 1)))
    lines = table(names, names, values).splitlines()
    assert lines[0].split() == names
    for name, line, row in zip(names, lines[1:], values, strict=True):
        tokens = line.split()
        assert tokens[0] == name and len(tokens) == k + 1
        assert [float(t) for t in tokens[1:]] == [float(f"{v:.4f}") for v in row]


def test_cli_rsa_table_of_short_layer_names(tmp_path, capsys):
    from l2bg.cli import main

    x = np.random.default_rng(5).standard_normal((10, 6)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", -x[::-1].copy())
    assert main(["rsa", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["a", "b"])
    rows = lines[header + 1:header + 3]
    assert [r.split()[0] for r in rows] == ["a", "b"]
    assert [len(r.split()) for r in rows] == [3, 3]


@pytest.mark.parametrize("method", ["pearson", "cosine", "spearman"])
def test_cli_rsa_at_extreme_scale_writes_finite_json(tmp_path, capsys, method):
    """Item 17: NaN reached write_json (a traceback) with --method pearson or cosine."""
    import json

    from l2bg.cli import main

    x = np.random.default_rng(6).standard_normal((10, 12)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", x * np.float32(1e20))
    out = tmp_path / "out"
    assert main(["rsa", str(tmp_path), "--method", method, "--slice-width", "5", "--out",
                 str(out), "--quiet"]) == 0
    values = np.array(json.loads((out / "similarity.json").read_text())["values"])
    assert np.isfinite(values).all() and abs(values[0, 1] - 1) < 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_stream_of_16_bit_slices_at_extreme_scale(dtype):
    """bfloat16 reaches 1e30 (rescaled in its own dtype, exactly); float16 never leaves the
    safe range. Both give the reference RDM of the same values."""
    if "triton" not in rsa.available_backends():
        pytest.skip("no Triton backend (no CUDA and no interpreter)")
    from l2bg.kernels.rdm_stream import RDMStream

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    scale = 1e30 if dtype == torch.bfloat16 else 100.0
    x = (torch.randn(6, 16, generator=torch.Generator().manual_seed(7)) * scale).to(dtype)
    want = rdm_triu_torch(x.double().unsqueeze(0))[0]
    stream = RDMStream(6, device=dev, block=8, block_k=8)
    for lo in range(0, 16, 8):
        stream.update(x[:, lo:lo + 8].to(dev))
    got = stream.result(triu=True).double().cpu()
    assert torch.allclose(got, want, rtol=0, atol=1e-4)


def test_triton_stream_refuses_a_non_finite_slice_and_keeps_its_state():
    """The refusal comes from the stream's one host read, before any state changes: the
    slices accepted before and after it give the RDM of the accepted slices alone."""
    if "triton" not in rsa.available_backends():
        pytest.skip("no Triton backend (no CUDA and no interpreter)")
    from l2bg.kernels.rdm_stream import RDMStream

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(8)) * 1e20
    bad = x[:, :8].clone() * 1e15  # would raise every row's k, and one NaN
    bad[3, 2] = float("nan")
    stream = RDMStream(6, device=dev, block=8, block_k=8)
    stream.update(x[:, :8].to(dev))
    with pytest.raises(L2BGError, match="NaN/inf"):
        stream.update(bad.to(dev))
    stream.update(x[:, 8:].to(dev))
    want = rdm_triu_torch(x.double().unsqueeze(0))[0]
    got = stream.result(triu=True).double().cpu()
    assert torch.allclose(got, want, rtol=0, atol=1e-5)
