"""Euclidean RDMs from disk: the streamed accumulator's euclidean RDM (rsatoolbox's convention,
squared distance over the number of features) against the in-memory path
(``l2bg.rsa.distances.euclidean``) and rsatoolbox's own ``calc_rdm``; rows rescaled by the
stream keep their units; ``layer_similarity`` and ``l2bg rsa --rdm euclidean`` from disk equal
the in-memory computation; the one-line errors."""

import json

import numpy as np
import pytest
import torch
from activations import activation_batches
from hypothesis import given, settings
from hypothesis import strategies as st

from l2bg.base.errors import L2BGError
from l2bg.cli import main
from l2bg.rsa.distances import euclidean
from l2bg.rsa.layers import layer_similarity
from l2bg.rsa.stream import TorchRDMStream, stream_rdm

FEW = settings(max_examples=25, deadline=None)


def reference(x: torch.Tensor) -> torch.Tensor:
    """The in-memory euclidean RDMs (B, m) of x (B, n, d), in float64."""
    return euclidean(x.double())


def streamed_rdm(x: torch.Tensor, width: int, dtype: torch.dtype, triu: bool = True):
    stream = TorchRDMStream(x.shape[1], batch=x.shape[0], dtype=dtype)
    for start in range(0, x.shape[2], width):
        stream.update(x[:, :, start:start + width].to(dtype))
    return stream.result(triu=triu, rdm="euclidean")


@FEW
@given(activation_batches(min_d=1, twin_rows=True), st.sampled_from([torch.float32, torch.float64]))
def test_streamed_euclidean_equals_in_memory(case, dtype):
    """Packed and full, in any slicing: the in-memory euclidean RDM, within the dtype's rounding
    of the squared norms; the full matrix is symmetric with a zero diagonal, never negative."""
    x, width = case
    want = reference(x)
    got = streamed_rdm(x, width, dtype)
    scale = float(x.square().mean(dim=-1).max()) + 1.0
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=0, atol=tol * scale)
    full = streamed_rdm(x, width, dtype, triu=False)
    assert torch.equal(full, full.mT) and torch.all(full.diagonal(dim1=-2, dim2=-1) == 0)
    assert bool((full >= 0).all())
    iu = torch.triu_indices(x.shape[1], x.shape[1], 1)
    assert torch.equal(full[:, iu[0], iu[1]], got)


@pytest.mark.parametrize("seed", [0, 1])
def test_streamed_euclidean_equals_rsatoolbox(seed):
    """rsatoolbox's calc_rdm(method='euclidean') on the same patterns gives the same numbers."""
    rsatoolbox = pytest.importorskip("rsatoolbox")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((9, 37)) * 3 + 10
    want = rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(x),
                                   method="euclidean").dissimilarities[0]
    got = streamed_rdm(torch.from_numpy(x)[None], 5, torch.float64)[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scales", [(1e12, 1.0), (1e-12, 1.0), (1e15, 1e-15)])
def test_rows_rescaled_by_the_stream_keep_their_units(scales):
    """Rows whose magnitude makes the stream rescale them by powers of two (exponent beyond
    ±32) give the distances of the unscaled rows: the scale is undone before rows of different
    scales are subtracted."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 6, 50, generator=gen, dtype=torch.float64)
    x[:, :3] *= scales[0]
    x[:, 3:] *= scales[1]
    got = streamed_rdm(x, 7, torch.float64)
    torch.testing.assert_close(got, reference(x), rtol=1e-10, atol=0)


def test_euclidean_overflow_and_bad_names_are_one_line_errors():
    x = torch.full((1, 3, 4), 1e30)
    x[0, 0] = -1e30
    with pytest.raises(L2BGError, match="overflow") as info:
        streamed_rdm(x, 2, torch.float32)
    assert "\n" not in str(info.value)
    with pytest.raises(L2BGError, match="unknown RDM 'cosine'"):
        TorchRDMStream(3).update(torch.randn(3, 2)).result(rdm="cosine")
    with pytest.raises(L2BGError, match="at least one feature"):
        stream_rdm(lambda a, b: torch.zeros(3, 0), 3, 0, rdm="euclidean", progress=False)
    with pytest.raises(L2BGError, match="correlation RDMs only"):
        stream_rdm(lambda a, b: torch.randn(3, b - a), 3, 4, backend="triton",
                   rdm="euclidean", progress=False)


@pytest.fixture
def net_dirs(tmp_path):
    """Two networks' activations on disk (a directory of .npy layers each) and in memory."""
    gen = torch.Generator().manual_seed(11)
    nets = []
    for k in range(2):
        acts = {"conv": torch.randn(10, 2, 3, 3, generator=gen) + k,
                "fc": torch.randn(10, 17, generator=gen) * 4}
        d = tmp_path / f"net{k}"
        d.mkdir()
        for name, t in acts.items():
            np.save(d / f"{name}.npy", t.numpy())
        nets.append((d, acts))
    return nets


@pytest.mark.parametrize("method", ["spearman", "pearson"])
def test_layer_similarity_euclidean_from_disk_equals_in_memory(net_dirs, method):
    """The same matrix from disk (streamed in slices) and from tensors in memory; it differs
    from the correlation RDMs' matrix (the option reaches the RDMs)."""
    disk = layer_similarity([d for d, _ in net_dirs], method=method, slice_width=4,
                            rdm="euclidean", progress=False)
    memory = layer_similarity([a for _, a in net_dirs], method=method, rdm="euclidean")
    np.testing.assert_allclose(disk.values, memory.values, rtol=0, atol=1e-5)
    assert disk.info["rdm"] == "euclidean distance"
    corr = layer_similarity([d for d, _ in net_dirs], method=method, progress=False)
    assert not np.allclose(corr.values, disk.values, atol=1e-3)


def test_cli_rsa_rdm_euclidean(net_dirs, tmp_path, capsys):
    """`l2bg rsa --rdm euclidean` records its RDM and gives the API's matrix."""
    out = tmp_path / "out"
    srcs = [str(d) for d, _ in net_dirs]
    assert main(["rsa", *srcs, "--rdm", "euclidean", "--out", str(out), "--quiet"]) == 0
    saved = json.loads((out / "similarity.json").read_text())
    assert saved["config"]["rdm"] == "euclidean"
    want = layer_similarity([d for d, _ in net_dirs], rdm="euclidean", progress=False)
    np.testing.assert_allclose(saved["values"], want.values, rtol=0, atol=1e-12)


@pytest.mark.parametrize("extra, message", [
    (["--measure", "linear-cka", "--rdm", "euclidean"], "--rdm chooses the RDMs of --measure "
                                                        "rsa only"),
    (["--backend", "triton", "--rdm", "euclidean"], "correlation RDMs only"),
])
def test_cli_rsa_rdm_one_line_errors(net_dirs, tmp_path, capsys, extra, message):
    code = main(["rsa", str(net_dirs[0][0]), *extra, "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "o" / "similarity.json").exists()
