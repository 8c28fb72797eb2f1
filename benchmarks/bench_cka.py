"""Minibatch CKA and the distributed paths (``pytest benchmarks/bench_cka.py -s``).

CPU:

* ``minibatch_cka`` of two 5-layer convnets (inputs 3 x 8 x 8, 8 channels; every pair of their
  5 layers) over 10,000 inputs in batches of 256 (forward hooks, one Gram per layer per batch,
  nothing kept) against storing every activation and computing the biased linear CKA
  (:func:`l2bg.rsa.cka.linear_cka`) of every pair: time alternated in one run, best of
  ``ROUNDS``, with the ratio and the load; the peak extra memory of each in a fresh process,
  against the goal "one batch's Grams plus the model";
* distributed, 2 ranks against 1, with the machine's core count and the load: one plain
  process (2 threads) against ``torchrun --nproc-per-node 2`` gloo ranks (1 thread each), for
  (a) the same minibatch CKA, batches split, and (b) layer x layer RSA (two RDMs + Pearson) of
  two layers on disk, n = 1000, d = 8192, features split; compute time from a start all ranks
  agree on, and wall time with the start-up; rank 0's result checked against one process's.

The minibatch and full-data estimators differ: those rows compare cost, not values. Threads of
one process: ``$L2BG_BENCH_THREADS`` (default min(2, cores)); on a loaded 2-core machine torch's
2-thread runs of these small ops can be many times slower than 1 thread (thread hand-offs), so
the 2-rank rows are also compared with 1 process at 1 thread.

CUDA (marked ``cuda``, run by ``make gpu-check``; skipped without a GPU): minibatch CKA on CUDA
tensors, and the distributed path at world size 1 on NCCL (``torchrun --nproc-per-node 1``
on a CUDA device, both schemes), each checked against one process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import Timing, peak_extra_memory, record
from torch import nn

SUITE = "cka"
N, BATCH, ROUNDS = 10_000, 256, 3
ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
LAYERS = ["1", "3", "5", "7", "9"]
CUDA = torch.cuda.is_available()
N_RDM, D_RDM = 1000, 8192


def convnet(seed: int) -> nn.Sequential:
    """5 layers (4 conv + 1 linear) with their ReLUs; LAYERS are the five ReLU/linear outputs."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()


def loader(device: str = "cpu") -> Iterator[torch.Tensor]:
    """N inputs in batches of BATCH, each drawn when asked (no input set is stored)."""
    for k, start in enumerate(range(0, N, BATCH)):
        gen = torch.Generator().manual_seed(k)
        yield torch.randn(min(BATCH, N - start), 3, 8, 8, generator=gen).to(device)


def run_minibatch(device: str = "cpu"):
    from l2bg.rsa.cka_stream import minibatch_cka

    a, b = convnet(0).to(device), convnet(1).to(device)
    return minibatch_cka(a, b, loader(device), LAYERS, LAYERS, device=device)


def run_stored(device: str = "cpu") -> torch.Tensor:
    from l2bg.rsa.cka import linear_cka

    a, b = convnet(0).to(device), convnet(1).to(device)
    acts: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for tag, net in (("a", a), ("b", b)):
        mods = dict(net.named_modules())
        for name in LAYERS:
            def keep(_m, _i, out, key=f"{tag}{name}"):
                acts.setdefault(key, []).append(out.detach().reshape(out.shape[0], -1))

            hooks.append(mods[name].register_forward_hook(keep))
    with torch.no_grad():
        for x in loader(device):
            a(x)
            b(x)
    for h in hooks:
        h.remove()
    full = {k: torch.cat(v) for k, v in acts.items()}
    ys = [full[f"b{name}"] for name in LAYERS]
    return torch.stack([linear_cka(full[f"a{name}"], ys) for name in LAYERS])


def budget_bytes() -> int:
    """The memory goal: one batch's Grams (both nets' layers, float64) plus the two models."""
    params = sum(p.numel() * p.element_size() for s in (0, 1) for p in convnet(s).parameters())
    return 2 * len(LAYERS) * BATCH * BATCH * 8 + params


_PEAK = """
import sys, torch
sys.path.insert(0, {bench!r})
import bench_cka, harness
torch.set_num_threads({threads})
n, bench_cka.N = bench_cka.N, 8
bench_cka.{fn}()  # one batch of 8 first: library code paged in, not counted as the call's
bench_cka.N = n
print(harness.peak_extra_memory(lambda: bench_cka.{fn}()))
"""


def fresh_peak(fn: str, threads: int) -> int:
    """Peak extra RSS of ``fn`` in a fresh process (memory an earlier call freed but kept
    resident would hide a later call's peak)."""
    out = subprocess.run([sys.executable, "-c", _PEAK.format(bench=str(BENCH), fn=fn,
                                                            threads=threads)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    return int(out.stdout.split()[-1])


def _threads() -> int:
    """torch threads of one process: ``$L2BG_BENCH_THREADS``, default min(2, cores)."""
    return int(os.environ.get("L2BG_BENCH_THREADS") or min(2, os.cpu_count() or 1))


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def test_cpu_minibatch_against_stored():
    threads = _threads()
    torch.set_num_threads(threads)
    mini, stored = [], []
    for _ in range(ROUNDS):  # alternated, so both see the same load
        t = time.perf_counter()
        run_minibatch()
        mini.append(time.perf_counter() - t)
        t = time.perf_counter()
        run_stored()
        stored.append(time.perf_counter() - t)
    mem_mini, mem_stored = fresh_peak("run_minibatch", threads), fresh_peak("run_stored", threads)
    goal = budget_bytes()
    shape = f"2 convnets x {len(LAYERS)} layers, n={N}, batch={BATCH}"
    ratio = min(mini) / min(stored)
    record(suite=SUITE, op="minibatch_cka", backend="torch", shape=shape, dtype="float64",
           timing=Timing(mini), items=N, unit="inputs/s", peak_extra_bytes=mem_mini,
           vs_stored=f"{ratio:.2f}x time", goal_mem_mib=f"{goal / 2**20:.1f}",
           mem_goal_met=mem_mini <= goal, load=_load())
    record(suite=SUITE, op="store+linear_cka", backend="torch", shape=shape, dtype="float32",
           timing=Timing(stored), items=N, unit="inputs/s", peak_extra_bytes=mem_stored,
           load=_load())
    print(f"\nminibatch CKA best {min(mini):.3f} s, store + linear CKA best {min(stored):.3f} s: "
          f"ratio {ratio:.2f}; peak extra memory {mem_mini / 2**20:.1f} MiB against "
          f"{mem_stored / 2**20:.1f} MiB (goal <= one batch's Grams + models = "
          f"{goal / 2**20:.1f} MiB: {'met' if mem_mini <= goal else 'MISSED'}, "
          f"{mem_mini / goal:.2f}x; the rest is one layer's activations, a Gram's "
          f"temporaries and the allocator); {threads} "
          f"threads; load average {_load()}; {os.cpu_count()} cores")


# ----------------------------------------------------------------------------- distributed


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_WORKER = """
import json, sys, time
sys.path.insert(0, {bench!r})
import bench_cka
from l2bg.rsa import distributed
scheme, out, device, *sources = sys.argv[1:]
rank, world, dev = distributed.init_from_env(device)
distributed.agree(True)  # every rank has started: the clocks start together
start = time.perf_counter()
if scheme == "a":
    values = bench_cka.run_minibatch(str(dev)).values
else:
    from l2bg.rsa.layers import layer_similarity
    values = layer_similarity(sources, method="pearson", device=dev).values
distributed.agree(True)
took = time.perf_counter() - start
if rank == 0:
    with open(out, "w") as f:
        json.dump({{"values": values.tolist(), "seconds": took, "world": world}}, f)
distributed.shutdown()
"""


def _launch(world: int | None, script: Path, args: list[str], threads: int,
            timeout: float = 600) -> tuple[float, dict]:
    """(wall time, what rank 0 wrote) of ``python script ARGS`` (world None: one plain
    process) or of ``torchrun --nproc-per-node world script ARGS`` on 127.0.0.1."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, str(script), *args]
    if world is not None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc-per-node", str(world), "--master-addr", "127.0.0.1",
               "--master-port", str(_port()), str(script), *args]
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    took = time.perf_counter() - start
    assert r.returncode == 0, r.stderr[-3000:]
    return took, json.loads(Path(args[1]).read_text())


def _worker(tmp_path: Path) -> Path:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(bench=str(BENCH)))
    return script


@pytest.fixture(scope="module")
def rdm_sources(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("acts")
    out = []
    for k in range(2):
        d = root / f"net{k}"
        d.mkdir()
        x = np.random.default_rng(k).normal(size=(N_RDM, D_RDM)).astype(np.float32)
        np.save(d / "layer.npy", x)
        out.append(d)
    return out


@pytest.mark.parametrize("scheme", ["a", "b"])
def test_cpu_two_ranks_against_one(tmp_path, rdm_sources, scheme):
    """Scheme (a) minibatch CKA, batches split, or (b) layer x layer RSA, features split: one
    process (2 threads, and 1) against 2 gloo ranks (1 thread each), alternated, best of 2;
    compute time (from a start all ranks agree on to the result) and wall time (start-up
    included); rank 0's values against one process's."""
    cores = os.cpu_count() or 1
    threads = _threads()
    script = _worker(tmp_path)
    sources = [str(s) for s in rdm_sources] if scheme == "b" else []
    configs = [(1, threads), (1, 1), (2, 1)] if threads > 1 else [(1, 1), (2, 1)]
    times: dict[tuple[int, int], list[tuple[float, float]]] = {c: [] for c in configs}
    for k in range(2):  # alternated
        for world, th in configs:
            out = tmp_path / f"{world}-{th}-{k}.json"
            wall, got = _launch(None if world == 1 else world, script,
                                [scheme, str(out), "cpu", *sources], th)
            times[(world, th)].append((got["seconds"], wall))
            first = tmp_path / f"{configs[0][0]}-{configs[0][1]}-{k}.json"  # one process
            want = json.loads(first.read_text())["values"]
            np.testing.assert_allclose(got["values"], want, rtol=0, atol=1e-6)
    what = ("a: minibatch CKA, batches split" if scheme == "a"
            else "b: layer x layer RSA, features split")
    shape = (f"n={N}, batch={BATCH}, 2 convnets x 5 layers" if scheme == "a"
             else f"2 layers, n={N_RDM}, d={D_RDM}, pearson")
    best = {c: min(t for t, _ in ts) for c, ts in times.items()}
    wall = {c: min(t for _, t in ts) for c, ts in times.items()}
    two = best[(2, 1)]
    for (world, th), ts in times.items():
        record(suite=SUITE, op=f"{what} ({world} rank{'s' if world > 1 else ''}, {th} thr)",
               backend="gloo" if world > 1 else "torch", shape=shape, dtype="float64",
               timing=Timing([t for t, _ in ts]), threads=th, cores=cores, load=_load(),
               wall_s=f"{wall[(world, th)]:.2f}",
               two_ranks_speedup=f"{best[(world, th)] / two:.2f}")
    parts = ", ".join(f"1 process x {th} thread(s) {best[(1, th)]:.2f} s (wall {wall[(1, th)]:.2f}"
                      f" s): {best[(1, th)] / two:.2f}x" for w, th in configs if w == 1)
    print(f"\n{what}: 2 gloo ranks x 1 thread best {two:.2f} s (wall with start-up "
          f"{wall[(2, 1)]:.2f} s); against {parts}; {cores} cores; load average {_load()}")


# ---------------------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_minibatch_cka():
    from harness import measure

    cpu = run_minibatch("cpu")
    got = run_minibatch("cuda")
    np.testing.assert_allclose(got.values, cpu.values, rtol=0, atol=1e-5)
    mem = peak_extra_memory(lambda: run_minibatch("cuda"), "cuda")
    t = measure(lambda: run_minibatch("cuda"), rounds=3, warmup=1, device="cuda")
    record(suite=SUITE, op="minibatch_cka", backend="torch", device="cuda",
           shape=f"2 convnets x 5 layers, n={N}, batch={BATCH}", dtype="float64", timing=t,
           items=N, unit="inputs/s", peak_extra_bytes=mem,
           goal_mem_mib=f"{budget_bytes() / 2**20:.1f}", mem_goal_met=(mem or 0) <= budget_bytes())


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("scheme", ["a", "b"])
def test_cuda_nccl_world_size_one(tmp_path, rdm_sources, scheme):
    """torchrun --nproc-per-node 1 on NCCL (a group of one: every collective runs) gives one
    process's result on the same GPU."""
    from l2bg.rsa.layers import layer_similarity

    sources = [str(s) for s in rdm_sources] if scheme == "b" else []
    out = tmp_path / "nccl.json"
    wall, got = _launch(1, _worker(tmp_path), [scheme, str(out), "cuda", *sources], 1)
    want = (run_minibatch("cuda").values if scheme == "a"
            else layer_similarity(sources, method="pearson", device="cuda").values)
    np.testing.assert_allclose(got["values"], want, rtol=0, atol=1e-5)
    record(suite=SUITE, op=f"{scheme}: torchrun world 1", backend="nccl", device="cuda",
           shape=f"n={N}" if scheme == "a" else f"n={N_RDM}, d={D_RDM}", dtype="float64",
           timing=Timing([got["seconds"]]), wall_s=f"{wall:.2f}", equal_to_one_process=True)
