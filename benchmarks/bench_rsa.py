"""RSA benchmarks: ``python -m pytest benchmarks/bench_rsa.py --benchmark-only``.

CPU: the torch reference on one layer pair at n=1000, d=16384, fp32, 2 threads (RDMs of both
nets + Spearman compare; goal <= 0.45 s) against the scipy formulation of the paper's code
(``pdist(..., 'correlation')`` twice + ``spearmanr``) on the same data, next to a plain GEMM of
the same shape that shows what BLAS delivers on the machine at that moment (shared machines).
CUDA (skipped without a GPU): the Triton backend over a grid up to n=2000, d=524288 in fp32
(IEEE and TF32) and bf16, as % of the device's dense peak and as speedup over the torch
reference on the same GPU and over the CPU scipy time.

A table of rows (op, backend, n, d, dtype, median_s, throughput, peak extra memory) is printed at
the end of the module. Throughput counts the full Gram, 2 n^2 d FLOP per RDM (the kernels and
the reference compute only about half of it by symmetry, so this is the effective rate).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from l2bg import rsa
from l2bg.rsa import reference

GOAL_S = 0.45
N_CPU, D_CPU = 1000, 16384
ROWS: list[dict] = []
SCIPY_MEDIAN: dict[tuple[int, int], float] = {}

# Dense peaks in TFLOP/s by device name: (fp32 non-tensor, tf32 tensor, bf16 tensor).
PEAKS = {
    "H100 PCIe": (51.0, 378.0, 756.0),
    "H100": (66.9, 494.0, 989.0),
    "H200": (66.9, 494.0, 989.0),
    "A100": (19.5, 156.0, 312.0),
}


def _peak(kind: str) -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, peaks in PEAKS.items():
        if all(part in name for part in key.split()):
            return peaks[("fp32", "tf32", "bf16").index(kind)]
    return None


def _flops(n: int, d: int, nets: int) -> float:
    return 2.0 * n * n * d * nets


def _rate(flops: float, seconds: float) -> str:
    rate = flops / seconds
    return f"{rate / 1e12:.2f} TFLOP/s" if rate >= 1e12 else f"{rate / 1e9:.1f} GFLOP/s"


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_peak_extra(fn) -> int | None:
    """Peak resident memory above the starting RSS while fn runs (Linux; None elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    before = _rss_bytes("VmRSS")
    fn()
    return max(0, _rss_bytes("VmHWM") - before)


def _cuda_peak_extra(fn) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _row(op, backend, n, d, dtype, median, flops, mem, **extra) -> dict:
    row = dict(
        op=op,
        backend=backend,
        n=n,
        d=d,
        dtype=dtype,
        median_s=median,
        throughput=_rate(flops, median),
        peak_extra_MiB=None if mem is None else mem / 2**20,
        **extra,
    )
    ROWS.append(row)
    return row


@pytest.fixture(scope="module", autouse=True)
def _print_table(request):
    yield
    if not ROWS:
        return
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print("\n\nRSA benchmark (throughput counts the full Gram, 2 n^2 d FLOP per RDM)")
        head = f"{'op':<15}{'backend':<9}{'n':>6}{'d':>8}  {'dtype':<10}{'median_s':>10}"
        print(f"{head}  {'throughput':>16}{'peak MiB':>10}  notes")
        for r in ROWS:
            mem = "-" if r["peak_extra_MiB"] is None else f"{r['peak_extra_MiB']:.0f}"
            notes = "; ".join(f"{k}={v}" for k, v in r.items() if k not in _COLS)
            print(
                f"{r['op']:<15}{r['backend']:<9}{r['n']:>6}{r['d']:>8}  {r['dtype']:<10}"
                f"{r['median_s']:>10.4f}  {r['throughput']:>16}{mem:>10}  {notes}"
            )


_COLS = {"op", "backend", "n", "d", "dtype", "median_s", "throughput", "peak_extra_MiB"}


# ----------------------------------------------------------------------------------------- CPU


@pytest.fixture(scope="module")
def cpu_pair():
    gen = torch.Generator().manual_seed(0)
    return (
        torch.randn(N_CPU, D_CPU, generator=gen),
        torch.randn(N_CPU, D_CPU, generator=gen),
    )


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield torch.get_num_threads()
    torch.set_num_threads(before)


def test_cpu_gemm_calibration(benchmark, cpu_pair, two_threads):
    """Plain full ``x @ x.T`` at the same shape: what BLAS delivers on this machine right now
    (the RDM rows compute about 5/8 of it by symmetry, plus centring and the epilogue)."""
    xa, _ = cpu_pair
    benchmark.pedantic(lambda: torch.mm(xa, xa.T), rounds=7, warmup_rounds=1)
    median = benchmark.stats.stats.median
    _row("gemm x@x.T", "torch", N_CPU, D_CPU, "fp32", median, _flops(N_CPU, D_CPU, 1), None,
         threads=two_threads)  # fmt: skip


def test_cpu_torch_rdm(benchmark, cpu_pair, two_threads):
    xa, _ = cpu_pair
    fn = lambda: rsa.rdm_triu(xa, backend="torch")
    mem = _cpu_peak_extra(fn)
    benchmark.pedantic(fn, rounds=7, warmup_rounds=1)
    median = benchmark.stats.stats.median
    _row("rdm_triu", "torch", N_CPU, D_CPU, "fp32", median, _flops(N_CPU, D_CPU, 1), mem,
         threads=two_threads)  # fmt: skip


def test_cpu_torch_dissimilarity(benchmark, cpu_pair, two_threads):
    xa, xb = cpu_pair
    fn = lambda: rsa.dissimilarity([xa], [xb], backend="torch")
    mem = _cpu_peak_extra(fn)
    benchmark.pedantic(fn, rounds=7, warmup_rounds=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(goal_s=GOAL_S, ratio_to_goal=median / GOAL_S)
    _row("rdm2+spearman", "torch", N_CPU, D_CPU, "fp32", median, _flops(N_CPU, D_CPU, 2), mem,
         threads=two_threads, ratio_to_goal=f"{median / GOAL_S:.2f}")  # fmt: skip


def test_cpu_scipy_paper(benchmark, cpu_pair, two_threads):
    """The paper's formulation: scipy pdist 'correlation' per net, then spearmanr."""
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    a, b = (t.numpy() for t in cpu_pair)
    fn = lambda: 1.0 - spearmanr(pdist(a, "correlation"), pdist(b, "correlation")).statistic
    benchmark.pedantic(fn, rounds=1, warmup_rounds=0)
    median = benchmark.stats.stats.median
    SCIPY_MEDIAN[(N_CPU, D_CPU)] = median
    torch_rows = [r for r in ROWS if r["op"] == "rdm2+spearman" and r["backend"] == "torch"]
    extra = {}
    if torch_rows:
        extra["torch_speedup"] = f"{median / torch_rows[-1]['median_s']:.1f}x"
    _row("rdm2+spearman", "scipy", N_CPU, D_CPU, "fp32->64", median, _flops(N_CPU, D_CPU, 2),
         None, **extra)  # fmt: skip


# ---------------------------------------------------------------------------------------- CUDA

CUDA_GRID = [(n, d) for n in (500, 1000, 2000) for d in (16384, 131072, 524288)]
CUDA_MODES = ["fp32-ieee", "fp32-tf32", "bf16"]


def _cuda_time(benchmark, fn, rounds: int = 10) -> float:
    def run():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=rounds, warmup_rounds=2)
    return benchmark.stats.stats.median


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", CUDA_MODES)
@pytest.mark.parametrize("n,d", CUDA_GRID)
def test_cuda_triton_rdm(benchmark, n, d, mode):
    from l2bg.kernels.rdm import rdm as rdm_triton

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, d, device="cuda", generator=gen)
    precision = "tf32" if mode == "fp32-tf32" else "ieee"
    if mode == "bf16":
        x = x.bfloat16()
    fn = lambda: rdm_triton(x, triu=True, precision=precision)
    mem = _cuda_peak_extra(fn)
    median = _cuda_time(benchmark, fn)
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = mode == "fp32-tf32"
    try:
        ref = lambda: reference.rdm_triu_torch(x[None])
        ref_median = _median_cuda(ref)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32_before
    flops = _flops(n, d, 1)
    peak = _peak({"fp32-ieee": "fp32", "fp32-tf32": "tf32", "bf16": "bf16"}[mode])
    extra = dict(torch_ref_s=f"{ref_median:.4f}", speedup_vs_torch=f"{ref_median / median:.2f}x")
    if peak:
        extra["pct_peak"] = f"{100 * flops / median / 1e12 / peak:.1f}%"
    _row("rdm_triu", "triton", n, d, mode, median, flops, mem, **extra)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["fp32-ieee", "fp32-tf32"])
def test_cuda_triton_dissimilarity(benchmark, mode):
    n, d = N_CPU, D_CPU
    gen = torch.Generator(device="cuda").manual_seed(0)
    xa = torch.randn(n, d, device="cuda", generator=gen)
    xb = torch.randn(n, d, device="cuda", generator=gen)
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = mode == "fp32-tf32"
    try:
        fn = lambda: rsa.dissimilarity([xa], [xb], backend="triton")
        mem = _cuda_peak_extra(fn)
        median = _cuda_time(benchmark, fn)
        ref_median = _median_cuda(lambda: rsa.dissimilarity([xa], [xb], backend="torch"))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32_before
    extra = dict(torch_ref_s=f"{ref_median:.4f}", speedup_vs_torch=f"{ref_median / median:.2f}x")
    if (n, d) in SCIPY_MEDIAN:
        extra["speedup_vs_scipy"] = f"{SCIPY_MEDIAN[(n, d)] / median:.0f}x"
    _row("rdm2+spearman", "triton", n, d, mode, median, _flops(n, d, 2), mem, **extra)


def _median_cuda(fn, rounds: int = 5) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]
