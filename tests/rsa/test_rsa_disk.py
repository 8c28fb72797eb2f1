"""Activations on disk: the torch streaming accumulator against the in-memory reference and the
Triton stream; .npy / safetensors / HDF5 / directory sources read in slices; capture by forward
hooks; layer x layer RSA; the ``l2bg rsa`` command end to end and its one-line errors."""

import json

import numpy as np
import pytest
import torch
from activations import activation_batches
from hypothesis import given, settings
from hypothesis import strategies as st

from l2bg import rsa
from l2bg.base.errors import L2BGError
from l2bg.cli import main
from l2bg.rsa import methods
from l2bg.rsa.capture import capture
from l2bg.rsa.layers import layer_similarity
from l2bg.rsa.ondisk import open_source
from l2bg.rsa.stream import TorchRDMStream, stream_rdm

FEW = settings(max_examples=25, deadline=None)


@FEW
@given(activation_batches(), st.sampled_from([torch.float32, torch.float64]))
def test_torch_stream_equals_in_memory_rdm(case, dtype):
    x, width = case
    x = x.to(dtype)
    stream = TorchRDMStream(x.shape[1], batch=x.shape[0], dtype=dtype)
    for start in range(0, x.shape[2], width):
        stream.update(x[:, :, start:start + width])
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    want = rsa.rdm(x, backend="torch")
    got = stream.result()
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    assert torch.equal(got, got.mT) and torch.all(got.diagonal(dim1=-2, dim2=-1) == 0)
    torch.testing.assert_close(stream.result(triu=True), rsa.rdm_triu(x, backend="torch"),
                               rtol=0, atol=tol)


@settings(max_examples=8, deadline=None)
@given(activation_batches())
def test_torch_stream_equals_triton_stream(case):
    pytest.importorskip("triton")
    from l2bg.kernels import rdm as krdm
    from l2bg.kernels.rdm_stream import RDMStream

    if not (torch.cuda.is_available() or krdm.INTERPRETED):
        pytest.skip("Triton needs CUDA or the interpreter")
    x, width = case
    x = x[:, :, :24].float()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ours = TorchRDMStream(x.shape[1], batch=x.shape[0])
    theirs = RDMStream(x.shape[1], batch=x.shape[0], device=dev, block=4, block_k=8)
    for start in range(0, x.shape[2], width):
        ours.update(x[:, :, start:start + width])
        theirs.update(x[:, :, start:start + width].to(dev))
    torch.testing.assert_close(ours.result(triu=True), theirs.result(triu=True).cpu(), rtol=0,
                               atol=2e-5)


def test_stream_rdm_on_the_triton_backend():
    """stream_rdm drives the Triton RDMStream when asked (the interpreter without CUDA)."""
    pytest.importorskip("triton")
    from l2bg.kernels import rdm as krdm

    if not (torch.cuda.is_available() or krdm.INTERPRETED):
        pytest.skip("Triton needs CUDA or the interpreter")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(6, 21, generator=torch.Generator().manual_seed(5)) + 3
    got, ran = stream_rdm(lambda a, b: x[:, a:b], 6, 21, slice_width=8, device=dev,
                          backend="triton", progress=False)
    assert ran == "triton"
    torch.testing.assert_close(got.cpu(), rsa.rdm_triu(x, backend="torch"), rtol=0, atol=2e-5)


def test_stream_errors():
    s = TorchRDMStream(4)
    with pytest.raises(L2BGError, match="expects"):
        s.update(torch.randn(3, 2))
    with pytest.raises(L2BGError, match="NaN"):
        s.update(torch.full((4, 2), float("nan")))
    with pytest.raises(L2BGError, match="float64"):
        s.update(torch.randn(4, 2, dtype=torch.float64))


# ----------------------------------------------------------------------------- on-disk sources


def write_sources(root, acts):
    """The same per-layer activations as a .npy directory (one layer Fortran-ordered), one
    safetensors file and, with h5py, one HDF5 file."""
    from safetensors.numpy import save_file

    (root / "npy").mkdir(parents=True)
    for k, (name, a) in enumerate(acts.items()):
        np.save(root / "npy" / f"{name}.npy", np.asfortranarray(a) if k == 1 else a)
    save_file({k: np.ascontiguousarray(v) for k, v in acts.items()}, root / "acts.safetensors")
    paths = [root / "npy", root / "acts.safetensors"]
    try:
        import h5py
    except ImportError:
        return paths
    with h5py.File(root / "acts.h5", "w") as f:
        for k, v in acts.items():
            f.create_dataset(k, data=v, chunks=True)
    return [*paths, root / "acts.h5"]


@pytest.fixture
def acts():
    rng = np.random.default_rng(0)
    a = {"conv": rng.standard_normal((9, 3, 4, 5)).astype(np.float32),
         "fc": (rng.standard_normal((9, 11)) + 20).astype(np.float32)}
    a["conv"][2] = 1.0  # a constant sample
    return a


@pytest.mark.parametrize("width", [1, 7, 16, 13, 60, 1000])
def test_sources_stream_the_in_memory_rdm(tmp_path, acts, width):
    paths = write_sources(tmp_path, acts)
    rows = np.array([0, 2, 3, 5, 8])
    for path in paths:
        source = open_source(path)
        assert list(source.layers) == sorted(acts) and source.n == 9
        for name, a in acts.items():
            layer = source.layers[name]
            assert layer.shape == a.shape[1:] and layer.d == a[0].size
            widths = []

            def read(lo, hi, layer=layer, widths=widths):
                block = layer.read(None, lo, hi)
                widths.append(block.shape[1])
                return block

            got, ran = stream_rdm(read, 9, layer.d, slice_width=width, backend="torch")
            want = rsa.rdm_triu(torch.from_numpy(a.reshape(9, -1)), backend="torch")
            torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
            assert ran == "torch" and max(widths) <= max(width, 20)  # one slice at a time
            sub, _ = stream_rdm(lambda lo, hi, layer=layer: layer.read(rows, lo, hi), 5,
                                layer.d, slice_width=width, backend="torch")
            want = rsa.rdm_triu(torch.from_numpy(a.reshape(9, -1)[rows]), backend="torch")
            torch.testing.assert_close(sub, want, rtol=0, atol=2e-5)


def test_unreadable_and_empty_sources(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    with pytest.raises(L2BGError, match="cannot read .*bad.npy"):
        open_source(tmp_path / "bad.npy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(L2BGError, match="no activation files"):
        open_source(tmp_path / "empty")
    with pytest.raises(L2BGError, match="does not exist"):
        open_source(tmp_path / "missing")
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(L2BGError, match="cannot read"):
        open_source(tmp_path / "x.safetensors")


# ----------------------------------------------------------------------------- capture


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU())
        self.pool = torch.nn.MaxPool2d(2)
        self.head = torch.nn.Linear(27, 4)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


def test_capture_writes_what_a_plain_forward_returns(tmp_path):
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(23, 1, 8, 8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(23)),
                                         batch_size=5)
    source = capture(net, loader, ["features.1", "pool", "head"], tmp_path / "acts",
                     progress=False)
    want = {"features.1": [], "pool": [], "head": []}
    with torch.no_grad():  # the same batches through the plain modules
        for xb, _ in loader:
            feats = net.features(xb)
            for name, t in (("features.1", feats), ("pool", net.pool(feats)), ("head", net(xb))):
                want[name].append(t)
    want = {k: torch.cat(v) for k, v in want.items()}
    assert list(source.layers) == ["features.1", "pool", "head"] and source.n == 23
    for name, t in want.items():
        assert np.array_equal(np.load(tmp_path / "acts" / f"{name}.npy"), t.numpy()), name
    manifest = json.loads((tmp_path / "acts" / "manifest.json").read_text())
    assert manifest["n"] == 23 and manifest["layers"][1]["shape"] == [3, 3, 3]
    with pytest.raises(L2BGError, match="already exists"):
        capture(net, loader, ["head"], tmp_path / "acts")
    assert np.load(tmp_path / "acts" / "head.npy").shape == (23, 4)  # untouched


def test_capture_errors_leave_nothing_behind(tmp_path):
    net = Net()
    with pytest.raises(L2BGError, match="'nope' is not in the model"):
        capture(net, [torch.randn(2, 1, 8, 8)], ["nope"], tmp_path / "a")

    def broken():
        yield torch.randn(2, 1, 8, 8)
        raise OSError("disk went away")

    with pytest.raises(OSError):
        capture(net, broken(), ["head"], tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


# ----------------------------------------------------------------------------- layer x layer


def test_layer_similarity_from_disk_equals_in_memory(tmp_path, acts, monkeypatch):
    write_sources(tmp_path, acts)
    other = {k: v * 2 + np.random.default_rng(1).standard_normal(v.shape).astype(np.float32)
             for k, v in acts.items()}
    (tmp_path / "b").mkdir()
    for k, v in other.items():
        np.save(tmp_path / "b" / f"{k}.npy", v)
    calls = []
    import l2bg.rsa.layers as layers_module

    real = layers_module.stream_rdm
    monkeypatch.setattr(layers_module, "stream_rdm", lambda *a, **k: calls.append(1) or real(*a,
                                                                                          **k))
    for method in ("spearman", "kendall"):
        calls.clear()
        got = layer_similarity([tmp_path / "npy", tmp_path / "b"], method=method,
                               slice_width=5, progress=False)
        assert len(calls) == 4  # each layer's RDM once
        tri = {f"{s}{k}": rsa.rdm_triu(torch.from_numpy(v.reshape(9, -1)), backend="torch")
               for s, src in (("a", acts), ("b", other)) for k, v in src.items()}
        want = methods.get(method).all_pairs(torch.stack([tri["aconv"], tri["afc"]]),
                                             torch.stack([tri["bconv"], tri["bfc"]]))
        np.testing.assert_allclose(got.values, want.numpy(), atol=1e-6)
        assert got.rows == ["conv", "fc"] and got.cols == ["conv", "fc"] and got.n == 9
    mem = layer_similarity([{k: torch.from_numpy(v) for k, v in acts.items()}],
                           samples=[0, 1, 3, 4, 8], method="pearson")
    disk = layer_similarity([tmp_path / "acts.safetensors"], samples=[0, 1, 3, 4, 8],
                            method="pearson", progress=False)
    np.testing.assert_allclose(mem.values, disk.values, atol=1e-6)
    assert mem.values.shape == (2, 2) and np.allclose(np.diag(mem.values), 1)
    three = layer_similarity([tmp_path / "npy", tmp_path / "b", tmp_path / "npy"],
                             layers=[["fc"], ["fc"], ["conv"]], progress=False)
    # labelled by directory; one directory given twice gets its position
    assert three.rows == ["npy#0:fc", "b:fc", "npy#2:conv"] and three.values.shape == (3, 3)


def test_layer_similarity_errors(tmp_path, acts):
    write_sources(tmp_path, acts)
    (tmp_path / "short").mkdir()
    np.save(tmp_path / "short" / "fc.npy", acts["fc"][:5])
    with pytest.raises(L2BGError, match="different numbers of samples"):
        layer_similarity([tmp_path / "npy", tmp_path / "short"])
    with pytest.raises(L2BGError, match="'x' is not in"):
        layer_similarity([tmp_path / "npy"], layers=[["fc", "x"]])
    with pytest.raises(L2BGError, match="samples must be between 3 and the 9"):
        layer_similarity([tmp_path / "npy"], samples=10)


# ----------------------------------------------------------------------------- CLI


def test_cli_rsa_end_to_end(tmp_path, acts, capsys):
    write_sources(tmp_path, acts)
    out = tmp_path / "out"
    code = main(["rsa", str(tmp_path / "npy"), str(tmp_path / "acts.safetensors"), "--layers",
                 "conv,fc", "--layers-b", "fc", "--method", "kendall", "--samples", "7",
                 "--device", "cpu", "--slice-width", "8", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads((out / "similarity.json").read_text())
    assert result["rows"] == ["conv", "fc"] and result["cols"] == ["fc"] and result["n"] == 7
    assert result["config"]["method"] == "kendall"
    assert abs(result["values"][1][0] - 1.0) < 1e-12  # the same layer, read from two formats
    csv_rows = (out / "similarity.csv").read_text().splitlines()
    assert csv_rows[0] == "rows: layers of npy / columns: layers of acts.safetensors,fc"
    assert csv_rows[2].startswith("fc,")
    assert (out / "similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "kendall" in captured.out
    again = main(["rsa", str(tmp_path / "npy"), "--out", str(out), "--quiet"])
    assert again == 2 and "already holds" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("mismatched", "different numbers of samples"),
    ("missing-layer", "'nope' is not in"),
    ("unreadable", "cannot read"),
])
def test_cli_rsa_one_line_errors(tmp_path, acts, capsys, case, message):
    write_sources(tmp_path, acts)
    argv = ["rsa", str(tmp_path / "npy"), "--out", str(tmp_path / "out"), "--quiet"]
    if case == "mismatched":
        (tmp_path / "short").mkdir()
        np.save(tmp_path / "short" / "fc.npy", acts["fc"][:4])
        argv.insert(2, str(tmp_path / "short"))
    elif case == "missing-layer":
        argv += ["--layers", "fc,nope"]
    else:
        (tmp_path / "npy" / "fc.npy").write_bytes(b"\x93NUMPY garbage")
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("l2bg: error:")
    assert message in err[0]
    assert not (tmp_path / "out").exists()
