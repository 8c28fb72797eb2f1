"""How the RSA kernels are launched (l2bg.kernels.launch and the launchers): strided inputs,
the shared-memory check, the device guard, the tiling choice and the host syncs per call.

Without CUDA the kernels run in the Triton interpreter (tests/conftest.py): tiny shapes, blocks
of 4/8. Device limits are passed explicitly (A100/H100), so the policies are tested here; the
CUDA tests at the end run where a GPU is present.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton")

from l2bg.kernels import compare as kcompare  # noqa: E402
from l2bg.kernels import (
    launch,  # noqa: E402
    rdm_stream,  # noqa: E402
)
from l2bg.kernels import rdm as krdm  # noqa: E402
from l2bg.kernels.rdm_stream import RDMStream  # noqa: E402

from l2bg import rsa  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # aot.py
from aot import RDM_BENCH_GRID, RDM_BENCH_MODES, mode_dtype  # noqa: E402

from l2bg.base.errors import L2BGError  # noqa: E402
from l2bg.rsa import reference as ref  # noqa: E402

CUDA = torch.cuda.is_available()
if not CUDA and not krdm.INTERPRETED:
    pytest.skip("no CUDA and l2bg.kernels is compiled, not interpreted", allow_module_level=True)
DEV = "cuda" if CUDA else "cpu"
SMALL = dict(block=4, block_k=8) if not CUDA else dict(block=16, block_k=16)
CMP = dict(block_r=2, block_c=4, block=8, chunk=16) if not CUDA else {}
LAUNCHER_MODULES = (krdm, kcompare, rdm_stream)
pytestmark = pytest.mark.filterwarnings(
    "ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning"
)


def _ref(x: torch.Tensor, triu: bool) -> torch.Tensor:
    return (ref.rdm_triu_torch if triu else ref.rdm_torch)(x.double().cpu())


# ----------------------------------------------------------------------------- strided inputs


@pytest.mark.parametrize("split_k", [1, 3])
@pytest.mark.parametrize("triu", [False, True])
def test_transposed_input_matches_reference(split_k, triu):
    """A transposed view (unit stride along samples, stride n along features) is read in place
    with 64-bit element offsets and gives the reference RDM."""
    gen = torch.Generator().manual_seed(3)
    base = (50.0 + torch.randn(2, 21, 9, generator=gen)).to(DEV)  # (B, d, n) contiguous
    x = base.mT  # (B, n, d), strides (d n, 1, n)
    assert not x.is_contiguous() and x.stride(-1) == 9
    got = krdm.rdm(x, triu=triu, split_k=split_k, **SMALL)
    torch.testing.assert_close(got.double().cpu(), _ref(x, triu), rtol=0, atol=2e-5)


def test_transposed_compare_and_stream_match_reference():
    gen = torch.Generator().manual_seed(4)
    a = rsa.rdm(torch.randn(2, 11, 5, generator=gen)).to(DEV)
    b = rsa.rdm(torch.randn(2, 11, 3, generator=gen)).to(DEV)
    at = a.clone().mT.contiguous().mT  # same values, column-major storage
    assert at.stride(-2) == 1
    for method in ("pearson", "spearman"):
        got = kcompare.compare(at, b, method=method, **CMP)
        want = ref.compare_torch(ref.triangle(a.cpu()), ref.triangle(b.cpu()), method)
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-10)
    x = torch.randn(12, 7, generator=gen)  # (d, n): slices of its transpose are strided
    stream = RDMStream(7, device=DEV, **SMALL)
    for lo, hi in ((0, 5), (5, 12)):
        stream.update(x.to(DEV).T[:, lo:hi])
    torch.testing.assert_close(stream.result().double().cpu(), _ref(x.T[None], False)[0],
                               rtol=0, atol=5e-5)  # fmt: skip


# ----------------------------------------------------------------------------- shared memory


def test_shared_memory_check_names_the_sizes_in_one_line():
    with pytest.raises(L2BGError, match=r"384 KiB .* allows 227 KiB") as info:
        launch.check_shared_memory(256, 64, torch.float32, 3, launch.H100.smem_per_block)
    assert "\n" not in str(info.value) and "block=256, block_k=64" in str(info.value)
    launch.check_shared_memory(256, 64, torch.float32, 3, None)  # interpreter: no limit
    launch.check_shared_memory(128, 32, torch.float32, 3, launch.A100.smem_per_block)


@pytest.mark.parametrize("limits", [launch.A100, launch.H100], ids=lambda lim: lim.name)
def test_default_configurations_fit_shared_memory(limits):
    for n, d in RDM_BENCH_GRID:
        for mode in RDM_BENCH_MODES:
            dtype = getattr(torch, mode_dtype(mode)[0])
            cfg = launch.gram_config(n, d, 1, dtype, limits)
            need = launch.gram_shared_bytes(cfg["block"], cfg["block_k"], dtype, cfg["num_stages"])
            assert need <= limits.smem_per_block


def test_launchers_refuse_blocks_that_cannot_fit_before_launching(monkeypatch):
    """With an H100's limits, rdm and RDMStream raise the one-line error; nothing launches."""
    monkeypatch.setattr(krdm, "_limits", lambda x: launch.H100)
    monkeypatch.setattr(rdm_stream, "_limits", lambda x: launch.H100)
    for module in LAUNCHER_MODULES:
        monkeypatch.setattr(module, "launch_guard", _no_launch, raising=False)
    x = torch.randn(40, 64).to(DEV)
    with pytest.raises(L2BGError, match="shared memory"):
        krdm.rdm(x, block=256, block_k=64)
    with pytest.raises(L2BGError, match="shared memory"):
        RDMStream(40, device=DEV, block=256, block_k=64).update(x)


def _no_launch(x):
    raise AssertionError("a kernel was launched")


def test_out_of_resources_becomes_one_line_error():
    from triton.runtime.errors import OutOfResources

    with pytest.raises(L2BGError, match="does not fit") as info:
        with launch.launch_guard(torch.zeros(1)):
            raise OutOfResources(300000, 232448, "shared memory")
    assert "\n" not in str(info.value) and "300000" in str(info.value)
    with pytest.raises(ValueError):  # anything else passes through untouched
        with launch.launch_guard(torch.zeros(1)):
            raise ValueError("other")


# ----------------------------------------------------------------------------- device guard


def test_device_guard_enters_the_tensors_device():
    fake = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 1))
    guard = launch.device_guard(fake)
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert not isinstance(launch.device_guard(torch.zeros(1)), torch.cuda.device)


class _GuardedKernel:
    """Stands in for a kernel: launching outside a device guard of the input fails."""

    def __init__(self, kernel, state):
        self.kernel, self.state = kernel, state

    def __getitem__(self, grid):
        assert self.state["depth"] > 0, "kernel launched outside launch_guard"
        self.state["launches"] += 1
        return self.kernel[grid]


def test_every_launch_runs_under_the_device_guard(monkeypatch):
    state = {"depth": 0, "launches": 0, "devices": set()}

    class Recorder:
        def __init__(self, x):
            self.device = x.device

        def __enter__(self):
            state["depth"] += 1
            state["devices"].add(self.device)

        def __exit__(self, *exc):
            state["depth"] -= 1

    monkeypatch.setattr(launch, "device_guard", Recorder)
    for module in LAUNCHER_MODULES:
        for name, value in list(vars(module).items()):
            if name.endswith("_kernel") and hasattr(value, "fn"):
                monkeypatch.setattr(module, name, _GuardedKernel(value, state))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 13, generator=gen).to(DEV)
    krdm.rdm(x, split_k=1, **SMALL)
    krdm.rdm(x, split_k=2, triu=True, **SMALL)
    r = rsa.rdm(x.cpu()).to(DEV)
    kcompare.pearson(r, r.flip(0), **CMP)
    kcompare.spearman(r, r.flip(0), **CMP)
    kcompare.pearson(ref.triangle(r), ref.triangle(r), triangles=True, **CMP)
    stream = RDMStream(9, batch=2, device=DEV, **SMALL).update(x)
    stream.result()
    # row stats x2, gram x2, dist x1, moments x3, stream: stats, gram, dist
    assert state["launches"] == 11 and state["depth"] == 0
    assert state["devices"] == {x.device}


# ----------------------------------------------------------------------------- tiling


def test_tiling_fills_the_h100_at_n2000():
    """The defect: at n = 2000, 136 tiles of 128 took two waves of 132 (4 programs in the
    second, half the device idle for half the time). The chosen split fills the waves."""
    fp32 = torch.float32
    old = dict(block=128, block_k=32, split_k=1, num_warps=8, num_stages=3)
    before = launch.gram_waves(2000, 524288, 1, old, fp32, launch.H100)
    assert (before.programs, before.waves) == (136, 2) and before.efficiency < 0.52
    cfg = launch.gram_config(2000, 524288, 1, fp32, launch.H100)
    after = launch.gram_waves(2000, 524288, 1, cfg, fp32, launch.H100)
    assert cfg["split_k"] > 1 and after.efficiency > 0.9
    assert after.cost < 0.6 * before.cost


@pytest.mark.parametrize("limits", [launch.A100, launch.H100], ids=lambda lim: lim.name)
def test_tiling_keeps_waves_full_over_the_benchmark_grid(limits):
    for n, d in RDM_BENCH_GRID:
        for batch in (1, 4):
            cfg = launch.gram_config(n, d, batch, torch.float32, limits)
            waves = launch.gram_waves(n, d, batch, cfg, torch.float32, limits)
            assert waves.efficiency >= 0.9, (n, d, batch, cfg, waves)
            steps = launch.cdiv(launch.cdiv(d, cfg["split_k"]), cfg["block_k"])
            assert cfg["split_k"] == 1 or steps >= launch.MIN_SPLIT_STEPS
            assert cfg["split_k"] == 1 or 4 * cfg["split_k"] * batch * n * n <= launch.MAX_WORKSPACE


def test_occupancy_counts_registers_shared_memory_and_threads():
    h = launch.H100
    assert launch.blocks_per_sm(8, 98304, h, registers=256) == 1  # registers bound
    assert launch.blocks_per_sm(4, 98304, h, registers=128) == 2  # shared memory bound
    assert launch.blocks_per_sm(4, 0, h, registers=32) == 16  # threads bound


# ----------------------------------------------------------------------------- host syncs


class _ScalarReads(TorchDispatchMode):
    """Counts tensor-to-Python scalar reads (bool(), .item()): host syncs on a GPU."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def host_reads(monkeypatch):
    """Counts calls of launch.host_flags from every launcher module."""
    calls = []

    def counted(*flags):
        calls.append(len(flags))
        return launch.host_flags(*flags)

    for module in LAUNCHER_MODULES:
        monkeypatch.setattr(module, "host_flags", counted)
    return calls


def test_one_host_read_per_call(host_reads):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 13, generator=gen).to(DEV)
    r = rsa.rdm(x.cpu()).to(DEV)
    cases = [
        (lambda: krdm.rdm(x, split_k=2, **SMALL), 0),
        (lambda: kcompare.pearson(r, r.flip(0), **CMP), 0),
        (lambda: kcompare.spearman(r, r.flip(0), **CMP), 1),  # + average_ranks' tie test
        (lambda: RDMStream(9, batch=2, device=DEV, **SMALL).update(x).result(), 0),
    ]
    for fn, other_reads in cases:
        host_reads.clear()
        with _ScalarReads() as reads:
            fn()
        assert len(host_reads) == 1, host_reads
        assert reads.count <= other_reads


# ----------------------------------------------------------------------------- CUDA only


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_64bit_offsets_on_a_huge_transposed_view_cuda():
    """n d >= 2^31 elements through a transposed view: 32-bit offsets would wrap."""
    n, d = 2048, 2**20
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs 24 GiB of GPU memory")
    gen = torch.Generator(device="cuda").manual_seed(0)
    base = torch.randn(d, n, device="cuda", generator=gen, dtype=torch.bfloat16)
    x = base.T  # stride n along features
    got = krdm.rdm(x, triu=True)
    want = krdm.rdm(x.contiguous(), triu=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_launches_go_to_the_inputs_device_cuda():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    x = torch.randn(300, 500, device="cuda:1")
    with torch.cuda.device(0):
        got = krdm.rdm(x, triu=True)
        r = kcompare.spearman(got, got)
    assert got.device == x.device
    torch.testing.assert_close(got.double().cpu(), _ref(x[None], True)[0], rtol=0, atol=2e-5)
    assert float(r) == pytest.approx(1.0)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_host_syncs_per_call_cuda():
    x = torch.randn(2, 300, 700, device="cuda")
    krdm.rdm(x)  # compile and cache the tile schedule first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with pytest.warns(UserWarning) as record:
            krdm.rdm(x)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in record if "synchroniz" in str(w.message)]
    assert len(syncs) <= 1, [str(w.message) for w in syncs]


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_blocks_too_large_for_the_device_cuda():
    with pytest.raises(L2BGError, match="shared memory"):
        krdm.rdm(torch.randn(300, 700, device="cuda"), block=256, block_k=64)
