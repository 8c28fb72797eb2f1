"""RSA benchmarks (``pytest benchmarks/bench_rsa.py``).

CPU: the torch reference on one layer pair at n=1000, d=16384, fp32, 2 threads (RDMs of both
nets + Spearman compare; goal <= 0.45 s) against the scipy formulation of the paper's code
(``pdist(..., 'correlation')`` twice + ``spearmanr``, skipped without scipy), next to a plain
GEMM of the same shape (the calibration row: what BLAS delivers on the machine right now).

CUDA (skipped without a GPU): the Triton RDM kernel over the grid of ``benchmarks/aot.py``
(n up to 2000, d up to 524288) in fp32 (IEEE and TF32) and bf16, as % of the device's dense
peak of that mode (goal: >= 60 % at n >= 1000, d >= 65536 in tf32/bf16), with its tiling (K
split, waves) and the torch reference on the same GPU; a cuBLAS GEMM per mode and n as
calibration; two RDMs plus Spearman at n=1000, d=524288 (goal <= 5 ms).

Throughput counts the full Gram, 2 n^2 d FLOP per RDM (the kernels and the reference compute
about half of it by symmetry, so this is the effective rate).
"""

from __future__ import annotations

import os

import pytest
import torch
from aot import RDM_BENCH_GRID, RDM_BENCH_MODES, mode_dtype
from harness import (
    calibrate_gemm,
    measure,
    peak_extra_memory,
    peak_flops,
    precision_kind,
    record,
)

from l2bg import rsa
from l2bg.rsa import reference

SUITE = "rsa"
GOAL_CPU_S = 0.45
N_CPU, D_CPU = 1000, 16384
CUDA = torch.cuda.is_available()


def _flops(n: int, d: int, nets: int) -> float:
    return 2.0 * n * n * d * nets


# ----------------------------------------------------------------------------------------- CPU


@pytest.fixture(scope="module")
def cpu_pair():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(N_CPU, D_CPU, generator=gen), torch.randn(N_CPU, D_CPU, generator=gen)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield torch.get_num_threads()
    torch.set_num_threads(before)


SHAPE_CPU = f"n={N_CPU} d={D_CPU}"


def test_cpu_gemm_calibration(benchmark, two_threads):
    """Plain x @ x.T at the RDM's shape (the RDM rows compute about 5/8 of it by symmetry,
    plus centring and the epilogue)."""
    calibrate_gemm(SUITE, N_CPU, D_CPU, N_CPU, rounds=7, benchmark=benchmark, label=SHAPE_CPU)


def test_cpu_torch_rdm(benchmark, cpu_pair, two_threads):
    xa, _ = cpu_pair
    fn = lambda: rsa.rdm_triu(xa, backend="torch")
    mem = peak_extra_memory(fn)
    t = measure(fn, rounds=7, benchmark=benchmark)
    record(suite=SUITE, op="rdm_triu", backend="torch", shape=SHAPE_CPU, dtype="float32",
           timing=t, flops=_flops(N_CPU, D_CPU, 1), peak_extra_bytes=mem)  # fmt: skip


def test_cpu_torch_dissimilarity(benchmark, cpu_pair, two_threads):
    xa, xb = cpu_pair
    fn = lambda: rsa.dissimilarity([xa], [xb], backend="torch")
    mem = peak_extra_memory(fn)
    t = measure(fn, rounds=7, benchmark=benchmark)
    record(suite=SUITE, op="rdm2+spearman", backend="torch", shape=SHAPE_CPU, dtype="float32",
           timing=t, flops=_flops(N_CPU, D_CPU, 2), peak_extra_bytes=mem, goal_s=GOAL_CPU_S,
           ratio_to_goal=round(t.median / GOAL_CPU_S, 2))  # fmt: skip


def test_cpu_scipy_paper(benchmark, cpu_pair, two_threads):
    """The paper's formulation: scipy pdist 'correlation' per net, then spearmanr."""
    pytest.importorskip("scipy")
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    a, b = (t.numpy() for t in cpu_pair)
    fn = lambda: 1.0 - spearmanr(pdist(a, "correlation"), pdist(b, "correlation")).statistic
    t = measure(fn, rounds=1, warmup=0, benchmark=benchmark)
    record(suite=SUITE, op="rdm2+spearman", backend="scipy", shape=SHAPE_CPU, dtype="fp32->64",
           timing=t, flops=_flops(N_CPU, D_CPU, 2))  # fmt: skip


# ---------------------------------------------------------------------------------------- CUDA


def _input(n: int, d: int, mode: str, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(n, d, device="cuda", generator=gen)
    return x.to(getattr(torch, mode_dtype(mode)[0]))


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("mode", RDM_BENCH_MODES)
@pytest.mark.parametrize("n,d", RDM_BENCH_GRID, ids=[f"n{n}-d{d}" for n, d in RDM_BENCH_GRID])
def test_cuda_triton_rdm(benchmark, n, d, mode):
    from l2bg.kernels import launch
    from l2bg.kernels.rdm import rdm as rdm_triton

    _, precision = mode_dtype(mode)
    x = _input(n, d, mode)
    fn = lambda: rdm_triton(x, triu=True, precision=precision)
    mem = peak_extra_memory(fn, "cuda")
    t = measure(fn, rounds=10, warmup=2, device="cuda", benchmark=benchmark)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        ref = measure(lambda: reference.rdm_triu_torch(x[None]), rounds=3, device="cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    kind = precision_kind(x.dtype, precision == "tf32")
    limits = launch.device_limits(x.device)
    cfg = launch.gram_config(n, d, 1, x.dtype, limits)
    waves = launch.gram_waves(n, d, 1, cfg, x.dtype, limits)
    goal = {"goal_pct_peak": 60} if kind != "fp32" and n >= 1000 and d >= 65536 else {}
    record(suite=SUITE, op="rdm_triu", backend="triton", device="cuda", shape=f"n={n} d={d}",
           dtype=mode, timing=t, flops=_flops(n, d, 1), peak=peak_flops(kind, "cuda"),
           peak_extra_bytes=mem, torch_ref_s=round(ref.median, 5),
           speedup_vs_torch=round(ref.median / t.median, 2), split_k=cfg["split_k"],
           waves=waves.waves, wave_eff=round(waves.efficiency, 2), **goal)  # fmt: skip


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("mode", RDM_BENCH_MODES)
@pytest.mark.parametrize("n", sorted({n for n, _ in RDM_BENCH_GRID}))
def test_cuda_gemm_calibration(benchmark, n, mode):
    """cuBLAS at the RDM's shape (d=131072) in the same precision: the rate the library gets."""
    dtype_name, precision = mode_dtype(mode)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        calibrate_gemm(SUITE, n, 131072, n, dtype=getattr(torch, dtype_name), device="cuda",
                       rounds=10, benchmark=benchmark, label=mode)  # fmt: skip
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("mode", RDM_BENCH_MODES)
@pytest.mark.parametrize("d", [D_CPU, 524288])
def test_cuda_triton_dissimilarity(benchmark, d, mode):
    """Two RDMs plus Spearman, the conflict score of one layer pair (goal: <= 5 ms at
    n=1000, d=524288)."""
    n = N_CPU
    _, precision = mode_dtype(mode)
    xa, xb = _input(n, d, mode, 0), _input(n, d, mode, 1)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        fn = lambda: rsa.dissimilarity([xa], [xb], backend="triton")
        mem = peak_extra_memory(fn, "cuda")
        t = measure(fn, rounds=10, warmup=2, device="cuda", benchmark=benchmark)
        ref = measure(lambda: rsa.dissimilarity([xa], [xb], backend="torch"), rounds=3,
                      device="cuda")  # fmt: skip
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    goal = {"goal_ms": 5, "ratio_to_goal": round(t.median / 5e-3, 2)} if d == 524288 else {}
    kind = precision_kind(xa.dtype, precision == "tf32")
    record(suite=SUITE, op="rdm2+spearman", backend="triton", device="cuda",
           shape=f"n={n} d={d}", dtype=mode, timing=t, flops=_flops(n, d, 2),
           peak=peak_flops(kind, "cuda"), peak_extra_bytes=mem,
           torch_ref_s=round(ref.median, 5), speedup_vs_torch=round(ref.median / t.median, 2),
           **goal)  # fmt: skip
