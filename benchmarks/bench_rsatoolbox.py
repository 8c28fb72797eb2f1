"""rsatoolbox 0.3.2 against l2bg on the same data, side by side
(``pytest benchmarks/bench_rsatoolbox.py``; heavy rows with ``L2BG_BENCH_FULL=1``).

Rows (CPU; every l2bg row has the rsatoolbox row of the same call beside it, and its notes carry
``speedup`` over it and the issue's goal):

* two correlation RDMs + Spearman at n=500, d=4096 and n=1000, d=16384: rsatoolbox's own calls,
  the drop-in (rsatoolbox objects in and out; float64, and float32 opted in), and l2bg's front
  door (``rsa.dissimilarity``, float32; goals 25 ms and 0.30 s);
* the front door at the floor: ``rsa.dissimilarity`` (fp32 and fp64) against two numpy Gram
  products of the same activations, alternated, best of 12, two torch threads (goal <= 1.15x);
* every other covered method at both sizes: ``calc_rdm`` euclidean and mahalanobis, ``compare``
  cosine, corr, spearman, rho-a, tau-a, kendall (one RDM against one);
* rsatoolbox's own searchlight (1,000 spheres), unpatched and patched;
* CUDA (``-m cuda``, where present): the patched rsatoolbox calls on the GPU (float64, and float32
  through Triton) and the rank comparisons, against rsatoolbox on the CPU (goal >= 50x);
* heavy (``L2BG_BENCH_FULL=1``): crossnobis with its noise precision at 1,800 measurements
  (600 conditions x 3 runs) x 7,000 channels (``prec_from_measurements`` shrinkage_diag, about
  5 minutes in rsatoolbox, and ``calc_rdm('crossnobis')`` with and without the precision); l2bg
  alone from disk: two networks of n=10,000, d=16,384 (float32 .npy files), their RDMs streamed
  and compared (``layer_similarity``), with the peak resident memory of the child process that
  runs it.

A GEMM of each size is the calibration row (``calibrate_gemm``): what BLAS delivers on this
machine at that moment. rsatoolbox rows that take seconds run once. Needs rsatoolbox (``pip
install rsatoolbox``); skipped without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from harness import FULL, Timing, calibrate_gemm, device_name, measure, record

import l2bg.rsa.rsatoolbox as fast
from l2bg import rsa
from l2bg.rsa.rsatoolbox.options import original

SUITE = "rsatoolbox"
SIZES = [(500, 4096), (1000, 16384)]
GOALS_S = {(500, 4096): 0.025, (1000, 16384): 0.30}
CUDA = torch.cuda.is_available()
_OWN: dict[tuple[str, str], float] = {}  # (op, shape) -> rsatoolbox's median


def _pair(op: str, shape: str, dtype: str, own, ours, *, own_rounds: int, rounds: int,
          benchmark=None, backend: str = "l2bg drop-in", **notes) -> Timing:
    """rsatoolbox's call and l2bg's on the same data: two rows, l2bg's with the speedup."""
    if (op, shape) not in _OWN:
        t_own = measure(own, rounds=own_rounds, warmup=0 if own_rounds == 1 else 1)
        record(suite=SUITE, op=op, backend="rsatoolbox", shape=shape, dtype="float64",
               timing=t_own)
        _OWN[(op, shape)] = t_own.median
    t = measure(ours, rounds=rounds, benchmark=benchmark)
    record(suite=SUITE, op=op, backend=backend, shape=shape, dtype=dtype, timing=t,
           speedup=f"{_OWN[(op, shape)] / t.median:.1f}x", **notes)
    return t


def _dataset(x: np.ndarray, obs: dict):
    """An rsatoolbox Dataset (the rows that need rsatoolbox skip without it)."""
    return pytest.importorskip("rsatoolbox").data.Dataset(x, obs_descriptors=obs)


def _data(n: int, d: int, seed: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=torch.float64).numpy()


@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"n{s[0]}-d{s[1]}")
def pair(request):
    n, d = request.param
    xa, xb = _data(n, d, 0), _data(n, d, 1) * 0.5 + _data(n, d, 0) * 0.5
    obs = {"stimulus": np.arange(n)}
    return n, d, _dataset(xa, obs), _dataset(xb, obs)


def _shape(n: int, d: int) -> str:
    return f"n={n} d={d}"


# ----------------------------------------------------------------------------- calibration


def test_gemm_calibration(benchmark, pair):
    n, d, _, _ = pair
    calibrate_gemm(SUITE, n, d, n, dtype=torch.float64, rounds=5, label="x @ x.T")
    calibrate_gemm(SUITE, n, d, n, dtype=torch.float32, rounds=5, benchmark=benchmark,
                   label="x @ x.T")


# ----------------------------------------------------------------------------- correlation+rho


def test_two_correlation_rdms_and_spearman(benchmark, pair):
    n, d, a, b = pair
    shape = _shape(n, d)
    op = "2 corr RDMs + spearman"
    calc, comp = original("calc_rdm"), original("compare")
    own = lambda: comp(calc(a, method="correlation"), calc(b, method="correlation"),
                       method="spearman")
    for dtype, goal in (("float64", ">=10x"), ("float32", ">=20x")):
        drop = lambda dtype=dtype: fast.compare(
            fast.calc_rdm(a, method="correlation", dtype=dtype),
            fast.calc_rdm(b, method="correlation", dtype=dtype), method="spearman", dtype=dtype)
        _pair(op, shape, dtype, own, drop, own_rounds=1 if n > 500 else 3, rounds=5, goal=goal)
    xa = torch.from_numpy(a.measurements).float()
    xb = torch.from_numpy(b.measurements).float()
    goal = GOALS_S[(n, d)]
    _pair(op, shape, "float32", own, lambda: rsa.dissimilarity([xa], [xb], backend="torch"),
          own_rounds=1, rounds=7, benchmark=benchmark, backend="l2bg rsa.dissimilarity",
          goal_s=goal)


def _alternated(fns: dict, rounds: int) -> dict[str, Timing]:
    """Each call of ``fns`` once per round, in turn (after one warm-up each): the rounds of
    every call share the machine's moments, so their best times compare."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: Timing(t) for name, t in times.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"n{s[0]}-d{s[1]}")
def test_front_door_at_the_floor(size, dtype):
    """``rsa.dissimilarity`` of two CPU layers (two correlation RDMs + Spearman) against two
    numpy Gram products ``x @ x.T`` (numpy's BLAS: a syrk) of the same activations, alternated
    in one run, best of 12, torch.set_num_threads(2); goal ratio <= 1.15 (issue 21)."""
    n, d = size
    gen = torch.Generator().manual_seed(7)
    xa = torch.randn(n, d, generator=gen, dtype=dtype)
    xb = (xa + torch.randn(n, d, generator=gen, dtype=dtype)) * 0.5
    na, nb = xa.numpy(), xb.numpy()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        t = _alternated({"grams": lambda: (na @ na.T, nb @ nb.T),
                         "ours": lambda: rsa.dissimilarity([xa], [xb])}, rounds=12)
    finally:
        torch.set_num_threads(before)
    best_g, best_o = min(t["grams"].times), min(t["ours"].times)
    ratio = best_o / best_g
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    kind = str(dtype).removeprefix("torch.")
    record(suite=SUITE, op="2 numpy Grams x @ x.T (floor)", backend="numpy", shape=_shape(n, d),
           dtype=kind, timing=t["grams"], threads=2, best_s=f"{best_g:.4f}", load=load)
    record(suite=SUITE, op="rsa.dissimilarity vs floor", backend="l2bg rsa.dissimilarity",
           shape=_shape(n, d), dtype=kind, timing=t["ours"], threads=2,
           best_s=f"{best_o:.4f}", ratio=f"{ratio:.2f}x", goal="<=1.15x", load=load)
    print(f"\nfloor {kind} n={n} d={d}: dissimilarity {best_o * 1e3:.1f} ms, two Grams "
          f"{best_g * 1e3:.1f} ms, ratio {ratio:.2f}x (goal <= 1.15x); load {load}; "
          f"{device_name('cpu')}")


# ----------------------------------------------------------------------------- other methods


@pytest.mark.parametrize("method", ["euclidean", "mahalanobis"])
def test_calc_rdm_methods(benchmark, pair, method):
    n, d, a, _ = pair
    noise = None
    if method == "mahalanobis":
        q = np.random.default_rng(0).standard_normal((d, 64))
        noise = np.eye(d) + q @ q.T / 64  # a dense symmetric precision
    heavy = method == "mahalanobis" and d > 4096
    _pair(f"calc_rdm {method}", _shape(n, d), "float64",
          lambda: original("calc_rdm")(a, method=method, noise=noise),
          lambda: fast.calc_rdm(a, method=method, noise=noise),
          own_rounds=1 if heavy else 3, rounds=2 if heavy else 5, benchmark=benchmark,
          goal=">=1x")


@pytest.mark.parametrize("method", ["cosine", "corr", "spearman", "rho-a", "tau-a", "kendall"])
def test_compare_methods(benchmark, pair, method):
    n, d, a, b = pair
    ra = original("calc_rdm")(a, method="euclidean")
    rb = original("calc_rdm")(b, method="euclidean")
    goal = ">=5x" if method in ("spearman", "tau-a", "kendall") else ">=1x"
    _pair(f"compare {method}", _shape(n, d), "float64",
          lambda: original("compare")(ra, rb, method=method),
          lambda: fast.compare(ra, rb, method=method), own_rounds=5, rounds=7,
          benchmark=benchmark, goal=goal)


def test_searchlight_patched(benchmark):
    """rsatoolbox's own searchlight (1,000 spheres of up to 33 voxels, 40 events, correlation
    RDMs of 20 conditions): its many small datasets go through the drop-in's batched list
    path when patched."""
    pytest.importorskip("rsatoolbox")
    from rsatoolbox.util.searchlight import get_searchlight_RDMs, get_volume_searchlight

    rng = np.random.default_rng(4)
    mask = np.ones((10, 10, 10), dtype=bool)
    centers, neighbors = get_volume_searchlight(mask, radius=2, threshold=0.5)
    events = np.repeat(np.arange(20), 2)
    data = rng.standard_normal((40, mask.size))
    own = lambda: get_searchlight_RDMs(data, centers, neighbors, events, method="correlation")

    def patched():
        with fast.patch():
            return own()

    _pair("searchlight RDMs", f"{len(centers)} spheres", "float64", own, patched, own_rounds=3,
          rounds=3, benchmark=benchmark, backend="l2bg patched")


# ----------------------------------------------------------------------------- inference

INFERENCE = [  # (function, method, conditions, data RDMs, models, N light, N full, goal)
    ("eval_bootstrap_pattern", "spearman", 60, 20, 5, 10, 100, 20.0),
    ("eval_bootstrap_rdm", "corr", 200, 20, 5, 5, 50, 20.0),
    ("bootstrap_crossval", "cosine", 200, 20, 5, 3, 20, 20.0),
]


def _inference_data(n_cond: int, n_rdm: int, n_models: int):
    import rsatoolbox

    rng = np.random.default_rng(5)
    m = n_cond * (n_cond - 1) // 2
    data = rsatoolbox.rdm.RDMs(rng.random((n_rdm, m)))
    models = [rsatoolbox.model.ModelFixed(f"m{i}", rng.random(m)) for i in range(n_models)]
    return data, models


@pytest.mark.parametrize("row", INFERENCE, ids=[f"{r[0]}-{r[1]}" for r in INFERENCE])
def test_inference_bootstraps(benchmark, row):
    """rsatoolbox's bootstrap evaluation of fixed models against the drop-in, same seed: the
    results are checked identical (1e-10) before timing; N is the issue's with
    ``L2BG_BENCH_FULL=1``, fewer by default (the ratio is per sample either way)."""
    pytest.importorskip("rsatoolbox")
    name, method, n_cond, n_rdm, n_models, n_light, n_full, goal = row
    n = n_full if FULL else n_light
    data, models = _inference_data(n_cond, n_rdm, n_models)

    def run(fn):
        np.random.seed(0)
        return fn(models, data, method=method, N=n)

    want, got = run(original(name)), run(getattr(fast, name))
    for field in ("evaluations", "noise_ceiling", "variances"):
        np.testing.assert_allclose(getattr(got, field), getattr(want, field), rtol=0,
                                   atol=1e-10, equal_nan=True)
    _pair(name, f"{n_cond} cond x {n_rdm} RDMs x {n_models} models, N={n}, {method}",
          "float64", lambda: run(original(name)), lambda: run(getattr(fast, name)),
          own_rounds=1, rounds=3, benchmark=benchmark, goal=f">= {goal:g}x")


def test_inference_searchlight(benchmark):
    """rsatoolbox's evaluate_models_searchlight with eval_fixed (one call per centre) against
    the drop-in's batched one: 2,000 centres of 16 conditions with ``L2BG_BENCH_FULL=1``
    (400 by default), 3 fixed models, corr; the results are checked identical (1e-10)."""
    pytest.importorskip("rsatoolbox")
    import rsatoolbox

    n = 2000 if FULL else 400
    sl, models = _inference_data(16, n, 3)
    fixed = original("eval_fixed")

    def run(fn):
        return fn(sl, models, fixed, method="corr")

    want, got = run(original("evaluate_models_searchlight")), run(fast.evaluate_models_searchlight)
    for a, b in zip(got, want, strict=True):
        assert isinstance(a, rsatoolbox.inference.Result)
        np.testing.assert_allclose(a.evaluations, b.evaluations, rtol=0, atol=1e-10)
        np.testing.assert_allclose(a.noise_ceiling, b.noise_ceiling, rtol=0, atol=1e-10)
    _pair("evaluate_models_searchlight", f"{n} centres x 16 cond x 3 models, corr", "float64",
          lambda: run(original("evaluate_models_searchlight")),
          lambda: run(fast.evaluate_models_searchlight), own_rounds=1, rounds=3,
          benchmark=benchmark, goal=">= 10x")


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cuda_patched_correlation_and_spearman(benchmark, pair, dtype):
    """The drop-in on CUDA (Triton for float32 correlation RDMs), rsatoolbox's objects in and
    out, against rsatoolbox's own call on the CPU (goal: >= 50x)."""
    n, d, a, b = pair
    calc, comp = original("calc_rdm"), original("compare")
    own = lambda: comp(calc(a, method="correlation"), calc(b, method="correlation"),
                       method="spearman")

    def patched():
        with fast.patch(dtype=dtype, device="cuda"):
            import rsatoolbox

            ra = rsatoolbox.rdm.calc_rdm(a, method="correlation")
            return rsatoolbox.rdm.compare(ra, rsatoolbox.rdm.calc_rdm(b, method="correlation"),
                                          method="spearman")

    _pair("2 corr RDMs + spearman", _shape(n, d), dtype, own, patched,
          own_rounds=1 if n > 500 else 3, rounds=7, benchmark=benchmark,
          backend="l2bg patched (cuda)", goal=">=50x")


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("method", ["spearman", "tau-a", "kendall"])
def test_cuda_compare_methods(benchmark, pair, method):
    n, d, a, b = pair
    ra = original("calc_rdm")(a, method="euclidean")
    rb = original("calc_rdm")(b, method="euclidean")
    _pair(f"compare {method}", _shape(n, d), "float64",
          lambda: original("compare")(ra, rb, method=method),
          lambda: fast.compare(ra, rb, method=method, device="cuda"), own_rounds=5, rounds=7,
          benchmark=benchmark, backend="l2bg drop-in (cuda)", goal=">=50x")


# ----------------------------------------------------------------------------- heavy rows


@pytest.fixture(scope="module")
def runs_dataset():
    n_cond, runs, p = 600, 3, 7000
    gen = torch.Generator().manual_seed(2)
    signal = torch.randn(n_cond, p, generator=gen, dtype=torch.float64)
    noise = torch.randn(n_cond * runs, p, generator=gen, dtype=torch.float64)
    x = (signal.repeat(runs, 1) + noise).numpy()
    obs = {"cond": np.tile(np.arange(n_cond), runs), "run": np.repeat(np.arange(runs), n_cond)}
    return _dataset(x, obs)


@pytest.mark.skipif(not FULL, reason="heavy: L2BG_BENCH_FULL=1")
def test_crossnobis_and_noise_precision(benchmark, runs_dataset):
    ds = runs_dataset
    shape = "1800x7000 (600 conds x 3 runs)"
    _pair("prec_from_measurements", shape, "float64",
          lambda: original("prec_from_measurements")(ds, "cond"),
          lambda: fast.prec_from_measurements(ds, "cond"), own_rounds=1, rounds=2, goal=">=5x")
    prec = fast.prec_from_measurements(ds, "cond")
    kw = dict(method="crossnobis", descriptor="cond", cv_descriptor="run", noise=prec)
    _pair("calc_rdm crossnobis", shape, "float64", lambda: original("calc_rdm")(ds, **kw),
          lambda: fast.calc_rdm(ds, **kw), own_rounds=1, rounds=2, benchmark=benchmark,
          goal=">=5x")
    plain = dict(kw, noise=None)
    _pair("calc_rdm crossnobis, no noise", shape, "float64",
          lambda: original("calc_rdm")(ds, **plain), lambda: fast.calc_rdm(ds, **plain),
          own_rounds=1, rounds=2, goal=">=5x")


_DISK_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from l2bg.rsa.layers import layer_similarity
    t = time.perf_counter()
    m = layer_similarity([sys.argv[1], sys.argv[2]], method="spearman", slice_width=2048,
                         progress=False)
    took = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": took, "peak_bytes": peak, "value": float(m.values[0, 0])}))
""")


@pytest.mark.skipif(not FULL, reason="heavy: L2BG_BENCH_FULL=1")
def test_two_networks_from_disk(tmp_path_factory):
    n, d = 10_000, 16_384
    root = tmp_path_factory.mktemp("disk")
    gen = torch.Generator().manual_seed(3)
    for name in ("a", "b"):
        (root / name).mkdir()
        out = np.lib.format.open_memmap(root / name / "layer.npy", mode="w+", dtype=np.float32,
                                        shape=(n, d))
        for lo in range(0, n, 1000):
            out[lo:lo + 1000] = torch.randn(1000, d, generator=gen).numpy()
        out.flush()
        del out
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", _DISK_CHILD, str(root / "a"), str(root / "b")],
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for name in ("a", "b"):
        (root / name / "layer.npy").unlink()
    peak = max(r["peak_bytes"] for r in runs) / 2**30
    best = min(r["seconds"] for r in runs)
    record(suite=SUITE, op="2 nets from disk + spearman", backend="l2bg layer_similarity",
           shape=f"n={n} d={d}", dtype="float32", timing=Timing([r["seconds"] for r in runs]),
           goal="<=40s, <=8GiB", best_s=f"{best:.1f}", peak_rss=f"{peak:.2f}GiB")


CUDA_INFERENCE = [  # (function, method, conditions, data RDMs, models, N)
    ("eval_bootstrap_pattern", "spearman", 60, 20, 5, 20),
    ("eval_bootstrap_rdm", "corr", 200, 20, 5, 10),
    ("bootstrap_crossval", "cosine", 200, 20, 5, 5),
]


def _inference_on(device: str, row: tuple):
    """(rsatoolbox's own call, the patched call with the drop-in on ``device``), same seed."""
    import rsatoolbox

    name, method, n_cond, n_rdm, n_models, n = row
    data, models = _inference_data(n_cond, n_rdm, n_models)

    def own():
        np.random.seed(0)
        return original(name)(models, data, method=method, N=n)

    def patched():
        with fast.patch(device=device):
            np.random.seed(0)
            return getattr(rsatoolbox.inference, name)(models, data, method=method, N=n)

    return own, patched


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("row", CUDA_INFERENCE, ids=[r[0] for r in CUDA_INFERENCE])
def test_cuda_inference_bootstraps(benchmark, row):
    """The batched bootstraps with CUDA tensors (patched, float64), against rsatoolbox's own call
    on the CPU: the results are checked identical (1e-10) before timing."""
    pytest.importorskip("rsatoolbox")
    own, patched = _inference_on("cuda", row)
    want, got = own(), patched()
    for field in ("evaluations", "noise_ceiling", "variances"):
        np.testing.assert_allclose(getattr(got, field), getattr(want, field), rtol=0,
                                   atol=1e-10, equal_nan=True)
    _pair(row[0], f"{row[2]} cond x {row[3]} RDMs x {row[4]} models, N={row[5]}, {row[1]}",
          "float64", own, patched, own_rounds=1, rounds=3, benchmark=benchmark,
          backend="l2bg cuda", goal=">= 20x")
