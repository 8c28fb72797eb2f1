"""Triton RSA kernels (l2bg.kernels) == the pure-PyTorch reference (l2bg.rsa).

Without CUDA the kernels run in the Triton interpreter (conftest sets TRITON_INTERPRET=1): tiny
shapes, small blocks so that every shape spans several tiles, d-blocks, K splits and slices,
fp32 'ieee' only (the interpreter has no bf16 tl.dot nor TF32). With CUDA the same properties
run compiled on larger shapes and every dtype.
"""

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from l2bg.kernels import compare as kcompare  # noqa: E402
from l2bg.kernels import rdm as krdm  # noqa: E402
from l2bg.kernels.rdm_stream import RDMStream  # noqa: E402

from l2bg import rsa  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # aot.py
from aot import CUDA_TEST_BLOCKS, CUDA_TEST_BLOCKS_K  # noqa: E402

from l2bg.base.errors import L2BGError  # noqa: E402
from l2bg.rsa import reference as ref  # noqa: E402

CUDA = torch.cuda.is_available()
if not CUDA and not krdm.INTERPRETED:
    pytest.skip(
        "no CUDA and l2bg.kernels was imported without TRITON_INTERPRET=1", allow_module_level=True
    )

# The interpreter emulates overflow on NaN/huge rows with numpy, which warns; those rows are
# exactly what the error and fallback tests feed in.
pytestmark = pytest.mark.filterwarnings(
    "ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning"
)
DEV = "cuda" if CUDA else "cpu"
FEW = settings(max_examples=20 if not CUDA else 40, deadline=None)
# Interpreter: tiny shapes, blocks of 4/8 (tl.dot needs >= 16 per dim when compiled).
MAX_N, MAX_D = (13, 40) if not CUDA else (300, 700)
# CUDA: the blocks benchmarks/aot.py compiles ahead of time for sm_80/sm_90 (test_gpu_compile).
BLOCKS = [4, 8] if not CUDA else list(CUDA_TEST_BLOCKS)
BLOCKS_K = [4, 8, 16] if not CUDA else list(CUDA_TEST_BLOCKS_K)


@st.composite
def rdm_case(draw):
    """Batch of activations with offsets, ties, constant rows; plus launch parameters."""
    b = draw(st.integers(1, 3))
    n = draw(st.one_of(st.sampled_from([1, 2, 3, 5, 7]), st.integers(1, MAX_N)))
    d = draw(st.one_of(st.just(1), st.integers(1, MAX_D)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(b, n, d, generator=gen, dtype=torch.float64)
    if draw(st.booleans()):
        x = x.round()
    x = x + draw(st.sampled_from([0.0, 100.0, -3.0]))
    for row in draw(st.lists(st.integers(0, n - 1), max_size=2)):
        x[:, row] = draw(st.sampled_from([0.0, 4.5]))
    if draw(st.booleans()):
        x[draw(st.integers(0, b - 1))] = 1.0  # a dead layer: every sample constant
    launch = dict(
        block=draw(st.sampled_from(BLOCKS)),
        block_k=draw(st.sampled_from(BLOCKS_K)),
        split_k=draw(st.integers(1, 3)),
    )
    return x, launch


def reference(x: torch.Tensor, triu: bool) -> torch.Tensor:
    """The torch reference on the same (quantised) values, in float64."""
    return (ref.rdm_triu_torch if triu else ref.rdm_torch)(x.double())


@FEW
@given(rdm_case(), st.booleans())
def test_rdm_kernel_matches_reference_fp32(case, triu):
    x, launch = case
    x32 = x.float().to(DEV)
    got = krdm.rdm(x32, triu=triu, precision="ieee", **launch)
    want = reference(x32, triu)
    assert got.dtype == torch.float32 and got.shape == want.shape
    # fp32 Gram of centred rows: a few ulps times sqrt(d) of a correlation.
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5)
    if not triu:
        assert torch.equal(got, got.mT)
        assert torch.all(got.diagonal(dim1=-2, dim2=-1) == 0)
    assert torch.isfinite(got).all() and (got.numel() == 0 or (got.min() >= 0 and got.max() <= 2))


def test_rdm_kernel_unbatched_and_large_offset():
    gen = torch.Generator().manual_seed(0)
    x = (100.0 + torch.randn(11, 90, generator=gen, dtype=torch.float64)).float().to(DEV)
    got = krdm.rdm(x, block=BLOCKS[0], block_k=BLOCKS_K[-1], split_k=2)
    assert got.shape == (11, 11)
    torch.testing.assert_close(got.double(), reference(x[None], False)[0], rtol=0, atol=2e-5)
    tri = krdm.rdm(x, triu=True, block=BLOCKS[1], block_k=BLOCKS_K[0])
    torch.testing.assert_close(tri.double(), reference(x[None], True)[0], rtol=0, atol=2e-5)


def test_rdm_kernel_extreme_magnitudes_and_errors():
    x = torch.randn(1, 6, 9, dtype=torch.float64)
    for scale in (1e-25, 1e37):
        got = krdm.rdm((x * scale).float().to(DEV), block=BLOCKS[0], block_k=BLOCKS_K[0])
        torch.testing.assert_close(got.double().cpu(), ref.rdm_torch(x), rtol=0, atol=2e-5)
    bad = x.float().to(DEV)
    bad[0, 2, 3] = float("inf")
    with pytest.raises(L2BGError, match="NaN or inf"):
        krdm.rdm(bad, block=BLOCKS[0], block_k=BLOCKS_K[0])
    with pytest.raises(L2BGError, match="float64"):
        krdm.rdm(x.to(DEV))
    with pytest.raises(L2BGError, match="precision"):
        krdm.rdm(x.float().to(DEV), precision="tf64")


@st.composite
def stream_case(draw):
    b = draw(st.sampled_from([None, 2]))
    n = draw(st.integers(1, 9 if not CUDA else 200))
    d = draw(st.integers(1, 30 if not CUDA else 900))
    cuts = sorted(draw(st.lists(st.integers(1, max(1, d - 1)), max_size=3, unique=True)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(b or 1, n, d, generator=gen, dtype=torch.float64)
    x = x + draw(st.sampled_from([0.0, 1000.0])) + 0.3 * torch.arange(d)
    if draw(st.booleans()):
        x[:, 0] = 2.0
    return b, x.float(), [c for c in cuts if c < d], draw(st.sampled_from(BLOCKS))


@FEW
@given(stream_case())
def test_streaming_rdm_matches_reference(case):
    b, x, cuts, block = case
    stream = RDMStream(x.shape[1], batch=b, device=DEV, block=block, block_k=BLOCKS_K[0])
    for lo, hi in zip([0, *cuts], [*cuts, x.shape[-1]], strict=True):
        piece = x[..., lo:hi].to(DEV)
        stream.update(piece if b else piece[0])
    assert stream.gram.shape == (b or 1, x.shape[1], x.shape[1])
    for triu in (False, True):
        got = stream.result(triu=triu)
        want = reference(x, triu)
        want = want if b else want[0]
        # Single-pass merge of slice-centred Grams: fp32 error as the one-shot kernel, with a
        # 1000 offset and a feature trend between slices. Centring in fp32 costs about
        # eps32 · max|x| / σ of a row (σ its spread), so the bound scales with the offset:
        # 5e-5 flat failed at 5.04e-5 on an offset-1000 case (rows of σ ≈ 0.6).
        torch.testing.assert_close(got.double().cpu(), want, rtol=0, atol=_centring_atol(x))


def _centring_atol(x: torch.Tensor) -> float:
    """5e-5, or the fp32 centring error bound eps32 · max|x| / (smallest σ of a non-constant
    row) when that is larger (300 seeded offset-1000 cases reached 0.22 of it)."""
    xd = x.double()
    sd = xd.std(-1, unbiased=False)
    sd = sd[sd > 0]
    if sd.numel() == 0:
        return 5e-5
    return max(5e-5, torch.finfo(torch.float32).eps * float(xd.abs().max()) / float(sd.min()))


@st.composite
def compare_case(draw):
    n = draw(st.integers(3, 12 if not CUDA else 400))
    ba = draw(st.sampled_from([(), (1,), (2,)]))
    bb = draw(st.sampled_from([(), (2,)]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    a = rsa.rdm(torch.randn(*ba, n, 4, generator=gen))
    b = rsa.rdm(torch.randn(*bb, n, 3, generator=gen))
    if draw(st.booleans()):  # ties
        a, b = (a * 4).round() / 4, (b * 4).round() / 4
    if draw(st.booleans()):  # a dead layer
        a = torch.ones_like(a) - torch.eye(n)
    return a.to(DEV), b.to(DEV)


@FEW
@given(compare_case(), st.sampled_from(["pearson", "spearman"]), st.booleans())
def test_compare_kernels_match_reference(case, method, triangles):
    a, b = case
    blocks = dict(block_r=2, block_c=4, block=8, chunk=16) if not CUDA else {}
    if triangles:
        a, b = ref.triangle(a), ref.triangle(b)
    got = kcompare.compare(a, b, method=method, triangles=triangles, **blocks)
    ta, tb = (a, b) if triangles else (ref.triangle(a), ref.triangle(b))
    want = ref.compare_torch(ta.cpu(), tb.cpu(), method)
    assert got.dtype == torch.float64 and got.shape == want.shape
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-10)


def test_front_door_dispatch():
    gen = torch.Generator().manual_seed(5)
    acts_a = [torch.randn(9, 6, generator=gen).to(DEV), torch.randn(9, 2, 5, generator=gen).to(DEV)]
    acts_b = [torch.randn(9, 4, generator=gen).to(DEV), torch.randn(9, 7, generator=gen).to(DEV)]
    assert "triton" in rsa.available_backends()
    got, ran = rsa.dissimilarity(acts_a, acts_b, backend="triton", return_backend=True)
    assert ran == "triton"
    want = rsa.dissimilarity([a.cpu() for a in acts_a], [b.cpu() for b in acts_b], backend="torch")
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-5)
    x = acts_a[0]
    torch.testing.assert_close(
        rsa.rdm(x, backend="triton").cpu(), rsa.rdm(x.cpu()), atol=2e-5, rtol=0
    )
    assert rsa.rdm(x.cpu(), backend="auto", return_backend=True)[1] == "torch"
    with pytest.raises(L2BGError, match="float64"):
        rsa.rdm(x.double(), backend="triton")
    bad = acts_b[1].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(L2BGError, match="layer 1 of net b has NaN"):
        rsa.dissimilarity(acts_a, [acts_b[0], bad], backend="triton")


# ----------------------------------------------------------------------------- CUDA only

LOW_DTYPES = [torch.float16, torch.bfloat16]


def _round_tf32(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to TF32 (10 explicit mantissa bits), nearest-even is close enough here."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("mode", ["tf32", "float16", "bfloat16"])
@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_rdm_kernel_low_precision_cuda(mode, offset):
    """Tolerance: the kernel rounds *centred* values to the operand precision, the reference's
    own error comes from rounding the *inputs* to that precision; both are one rounding per
    element of relative size eps, so kernel error <= 4 x reference error (+ fp32 floor)."""
    gen = torch.Generator().manual_seed(0)
    x = (offset + torch.randn(3, 257, 1000, generator=gen)).cuda()
    truth = ref.rdm_torch(x.double())
    if mode == "tf32":
        ref_err = (ref.rdm_torch(_round_tf32(x).double()) - truth).abs().max()
        got = krdm.rdm(x, precision="tf32")
    else:
        dtype = getattr(torch, mode)
        ref_err = (ref.rdm_torch(x.to(dtype).double()) - truth).abs().max()
        got = krdm.rdm(x.to(dtype))
    err = (got.double() - truth).abs().max()
    assert err <= 4 * ref_err + 2e-5, (err, ref_err)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_auto_picks_triton_on_cuda():
    x = torch.randn(50, 80, device="cuda")
    assert rsa.rdm(x, return_backend=True)[1] == "triton"
    assert rsa.rdm(x.double(), return_backend=True)[1] == "torch"
