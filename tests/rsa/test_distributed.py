"""RSA and CKA on torch.distributed: 2 gloo ranks on 127.0.0.1 (forked children with torchrun's
environment) give one process's results to 1e-6, only rank 0 writes --out, and a rank that dies
or hangs is a one-line error on the others within the timeout, not a hang."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from forking import forked_all
from hypothesis import given, settings
from hypothesis import strategies as st

from l2bg.base.errors import L2BGError
from l2bg.cli import main
from l2bg.rsa import distributed
from l2bg.rsa.cka_stream import minibatch_cka


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(fns, *, timeout_s: float = 20.0, wait_s: float = 60.0):
    """Run fns[r] as rank r of one gloo group (torchrun's variables, 127.0.0.1)."""
    port, world = _port(), len(fns)

    def rank_fn(rank, fn):
        def run():
            os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                              MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                              L2BG_DIST_TIMEOUT=str(timeout_s))
            torch.set_num_threads(1)
            return fn(rank)
        return run

    return forked_all([rank_fn(r, fn) for r, fn in enumerate(fns)], timeout=wait_s)


def _sources(tmp_path: Path, n: int = 42) -> tuple[Path, Path]:
    """Two networks' activations: a (n, 12) float32 layer, a (n, 2, 3, 3) layer (read in units
    of 9 columns), a float64 layer whose odd rows are 1e20 times larger in the first half of
    the features (the ranks' shards scale them differently); and two layers of the other."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 12))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    np.save(a / "l1.npy", x.astype(np.float32))
    np.save(a / "l2.npy", np.tanh(x @ rng.normal(size=(12, 18))).astype(np.float32)
            .reshape(n, 2, 3, 3))
    big = rng.normal(size=(n, 10))
    big[1::2, :5] *= 1e20
    np.save(a / "l3.npy", big)
    np.save(b / "m1.npy", (x[:, :5] + 0.2 * rng.normal(size=(n, 5))).astype(np.float32))
    np.save(b / "m2.npy", rng.normal(size=(n, 7)).astype(np.float32))
    return a, b


def _cli(argv: list[str]):
    def fn(rank: int) -> int:
        return main(argv)
    return fn


def _json(out: Path) -> dict:
    return json.loads((out / "similarity.json").read_text())


@pytest.mark.parametrize("extra", [
    ["--measure", "rsa", "--method", "pearson"], ["--measure", "rsa", "--method", "spearman"],
    ["--measure", "rsa", "--method", "pearson", "--rdm", "euclidean"],
    ["--measure", "cka-minibatch", "--batch-size", "8"],
    ["--measure", "cka-minibatch", "--batch-size", "10", "--kernel", "rbf"]])
def test_cli_two_ranks_equal_one_process(tmp_path, extra):
    """Features (rsa) or batches (cka-minibatch) split over 2 ranks: rank 0 writes what one
    process writes, each batch counted once."""
    a, b = _sources(tmp_path)
    common = ["rsa", str(a), str(b), *extra, "--device", "cpu", "--quiet", "--slice-width", "4"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    runs = _ranks([_cli([*common, "--out", str(tmp_path / "two")])] * 2)
    assert [r.code for r in runs] == [0, 0], [r.output for r in runs]
    one, two = _json(tmp_path / "one"), _json(tmp_path / "two")
    np.testing.assert_allclose(two["values"], one["values"], rtol=0, atol=1e-6)
    assert two["rows"] == ["l1", "l2", "l3"] and two["n"] == one["n"] >= 40
    assert abs(one["values"][2][0]) > 1e-3  # the rescaled layer carries signal
    assert (two["config"]["world_size"], one["config"]["world_size"]) == (2, 1)
    assert two.get("batches") == one.get("batches")
    assert two.get("dropped_tail") == one.get("dropped_tail")
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir())


def test_torchrun_launches_the_cli(tmp_path):
    """The documented command, ``torchrun --nproc-per-node 2 -m l2bg rsa ...`` (rendezvous on
    127.0.0.1), writes one process's result."""
    import subprocess
    import sys

    a, b = _sources(tmp_path)
    common = ["rsa", str(a), str(b), "--measure", "cka-minibatch", "--batch-size", "8",
              "--device", "cpu", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                        "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                        "--master-port", str(_port()), "-m", "l2bg", *common,
                        "--out", str(tmp_path / "two")], env={**env, "L2BG_DIST_TIMEOUT": "60"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    two = _json(tmp_path / "two")
    np.testing.assert_allclose(two["values"], _json(tmp_path / "one")["values"], rtol=0,
                               atol=1e-6)
    assert two["config"]["world_size"] == 2


def test_cli_own_feature_files_equal_one_process(tmp_path):
    """--shard own: rank r reads its own files ('{rank}' in the path), disjoint feature columns
    of the same samples; the RDMs and their comparison are one process's on the whole files."""
    a, b = _sources(tmp_path)
    for r, cols in enumerate((slice(0, 7), slice(7, None))):
        for src in (a, b):
            part = tmp_path / f"{src.name}.part{r}"
            part.mkdir()
            for f in src.iterdir():
                x = np.load(f)
                np.save(part / f.name, np.ascontiguousarray(x.reshape(len(x), -1)[:, cols]))
    common = ["rsa", "--method", "pearson", "--quiet", "--device", "cpu"]
    assert main([*common, str(a), str(b), "--out", str(tmp_path / "one")]) == 0
    parts = [str(tmp_path / "a.part{rank}"), str(tmp_path / "b.part{rank}")]
    runs = _ranks([_cli([*common, *parts, "--shard", "own", "--out", str(tmp_path / "two")])] * 2)
    assert [r.code for r in runs] == [0, 0], [r.output for r in runs]
    np.testing.assert_allclose(_json(tmp_path / "two")["values"],
                               _json(tmp_path / "one")["values"], rtol=0, atol=1e-6)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


_DATA = [torch.randn(9 if k < 4 else 5, 6, generator=torch.Generator().manual_seed(k))
         for k in range(5)]


@pytest.mark.parametrize("shard", ["split", "own"])
def test_python_minibatch_cka_two_ranks_equal_one_process(tmp_path, shard):
    """minibatch_cka on 2 ranks: the same loader split by batches, or each rank's own batches;
    every rank returns the one-process matrix, samples and batches counted once."""
    one = minibatch_cka(_net(), _net(), _DATA, ["0", "1"], ["1", "2"], kernel="rbf")

    def fn(rank: int) -> int:
        distributed.init_from_env()
        data = _DATA if shard == "split" else _DATA[rank::2]
        m = minibatch_cka(_net(), _net(), data, ["0", "1"], ["1", "2"], kernel="rbf",
                          shard=shard)
        np.save(tmp_path / f"r{rank}.npy", np.append(m.values.ravel(), [m.n, m.info["batches"]]))
        distributed.shutdown()
        return 0

    runs = _ranks([fn, fn])
    assert [r.code for r in runs] == [0, 0], [r.output for r in runs]
    for rank in range(2):
        got = np.load(tmp_path / f"r{rank}.npy")
        np.testing.assert_allclose(got[:-2].reshape(2, 2), one.values, rtol=0, atol=1e-6)
        assert (got[-2], got[-1]) == (one.n, one.info["batches"]) == (41, 5)


@pytest.mark.parametrize("fault", ["dies", "hangs"])
def test_a_rank_that_dies_or_hangs_is_an_error_not_a_hang(tmp_path, fault):
    """Rank 1 joins the group, then exits (or sleeps) instead of working: rank 0 stops with one
    line naming the cause, within the short timeout, and --out holds no result."""
    a, b = _sources(tmp_path)
    out = tmp_path / "o"
    argv = ["rsa", str(a), str(b), "--measure", "cka-minibatch", "--batch-size", "8",
            "--quiet", "--out", str(out)]

    finished = tmp_path / "rank0-finished"

    def rank0(rank: int) -> int:
        try:
            return main(argv)
        finally:
            finished.touch()

    def rank1(rank: int) -> int:
        distributed.init_from_env()
        while fault == "hangs" and not finished.exists():  # alive, silent, until rank 0 is done
            time.sleep(0.05)
        os._exit(0)

    start = time.monotonic()
    runs = _ranks([rank0, rank1], timeout_s=3, wait_s=40)
    took = time.monotonic() - start
    assert runs[0].code == 2, runs[0].output
    last = runs[0].output.strip().splitlines()[-1]
    assert last.startswith("l2bg:") and "another rank has exited or timed out" in last, last
    assert took < 25
    assert not (out / "similarity.json").exists()


def test_rank0_refused_out_stops_every_rank(tmp_path):
    """--out already holds a result: rank 0 refuses it before any work and rank 1 says so."""
    a, _ = _sources(tmp_path)
    out = tmp_path / "o"
    out.mkdir()
    (out / "similarity.json").write_text("{}")
    runs = _ranks([_cli(["rsa", str(a), "--quiet", "--out", str(out)])] * 2)
    assert [r.code for r in runs] == [2, 2]
    assert "already holds similarity.json" in runs[0].output
    assert "rank 0 could not claim --out" in runs[1].output.strip().splitlines()[-1]
    assert (out / "similarity.json").read_text() == "{}"


def test_ranks_given_different_sources_disagree(tmp_path):
    """Ranks whose SOURCEs have different sample counts stop with one line, not a wrong sum."""
    a, _ = _sources(tmp_path, n=42)
    c = tmp_path / "c"
    c.mkdir()
    np.save(c / "l1.npy", np.ones((40, 12), dtype=np.float32))
    np.save(c / "l2.npy", np.ones((40, 2, 3, 3), dtype=np.float32))
    np.save(c / "l3.npy", np.ones((40, 10)))
    (tmp_path / "s0").symlink_to(a)
    (tmp_path / "s1").symlink_to(c)
    argv = ["rsa", str(tmp_path / "s{rank}"), "--shard", "own", "--quiet",
            "--out", str(tmp_path / "o")]
    runs = _ranks([_cli(argv)] * 2)
    assert [r.code for r in runs] == [2, 2]
    assert "ranks disagree on the number of samples" in runs[0].output


@given(d=st.integers(0, 200), world=st.integers(1, 9), unit=st.sampled_from([1, 3, 9, 7]))
def test_feature_shards_are_disjoint_and_cover(d, world, unit):
    """The ranks' column ranges tile [0, d) in order, aligned to whole units when unit | d."""
    shards = [distributed.feature_shard(d, r, world, unit) for r in range(world)]
    assert shards[0][0] == 0 and shards[-1][1] == d
    assert all(shards[r][1] == shards[r + 1][0] for r in range(world - 1))
    assert all(lo <= hi for lo, hi in shards)
    if d % unit == 0:
        assert all(lo % unit == 0 for lo, _ in shards)


def test_outside_torchrun_nothing_is_joined(monkeypatch):
    """A plain process (no WORLD_SIZE) stays one rank without a group; a bad WORLD_SIZE or a
    missing rendezvous variable is one line."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env()[:2] == (0, 1) and not distributed.active()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(L2BGError, match="not a number"):
        distributed.init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(L2BGError, match="RANK is not set; launch with torchrun"):
        distributed.init_from_env()


@settings(deadline=None, max_examples=60)
@given(seed=st.integers(0, 2**16), n=st.integers(3, 9), d=st.integers(2, 14),
       cut=st.floats(0.0, 1.0), big=st.sampled_from([1.0, 1e-30, 1e30]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_merging_streams_of_disjoint_features_is_one_stream(seed, n, d, cut, big, dtype):
    """Two streams over disjoint feature columns, brought to common row scales, re-centred about
    the union's row means and summed (what the ranks do), give one stream's RDM; rows scaled
    differently in the two parts, zero and constant rows included."""
    from l2bg.rsa.stream import TorchRDMStream

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    k = int(cut * d)
    x[0] = 0.0
    x[1 % n] = 3.0
    x[2 % n, :k] *= big
    x = x.to(dtype)
    one = TorchRDMStream(n, dtype=dtype).update(x).result(triu=True)
    parts = [TorchRDMStream(n, dtype=dtype).update(x[:, :k]),
             TorchRDMStream(n, dtype=dtype).update(x[:, k:])]
    top = torch.maximum(parts[0].row_exponents(), parts[1].row_exponents())
    for p in parts:
        p.rescale_rows(top)
    total = sum(p.d_seen for p in parts)
    mean = sum(p.mean.double() * p.d_seen for p in parts) / total
    for p in parts:
        p.centre_about(mean)
    merged = parts[0]
    for g0, g1 in zip(merged.gram, parts[1].gram, strict=True):
        g0.add_(g1)
    merged.d_seen = total
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(merged.result(triu=True), one, rtol=0, atol=tol)
