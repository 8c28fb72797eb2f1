"""Fuzzing of the bounds on input sizes (issue 22): gzip IDX bombs, CIFAR pickles of nested
shared structures, rsa manifests and template parameters. Every input ends in the right result
or one L2BGError, inflating or expanding nothing beyond the bound (peak memory is measured); the
number of inputs is printed (``-s``)."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2bg.base.errors import L2BGError

FUZZED: Counter = Counter()
OUTCOME: Counter = Counter()
LIMIT = 2**20  # the data-file bound while fuzzing: bombs of up to 64x it are cheap to build


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=5000, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print(f"\ninputs fuzzed: {dict(FUZZED)} (total {sum(FUZZED.values())})")
    print(f"outcomes: {dict(OUTCOME)}")


def peak(fn):
    """(fn's result or the L2BGError it raised, peak bytes Python allocated meanwhile)."""
    tracemalloc.start()
    try:
        try:
            got = fn()
        except L2BGError as exc:
            assert "\n" not in str(exc)
            got = exc
        return got, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ----------------------------------------------------------------------------- gzip IDX


_ZERO_MEMBER = gzip.compress(b"\0" * 2**20, mtime=0)  # 1 MiB of zeros in ~1 KB


@fuzz(150)
@given(st.lists(st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1)), min_size=1,
                max_size=4),
       st.sampled_from([0x08, 0x0B, 0x0D]), st.integers(-3, 3),
       st.one_of(st.none(), st.integers(1, 64)), st.booleans())
def test_idx_headers_and_bombs(dims, code, off_by, bomb_mib, gz):
    """A header of any dims, a body of the declared length +- a few bytes, or (gz) a bomb of
    up to 64 MiB of zeros after it: accepted exactly when the header is within the bound and
    agrees with the data; never inflated much past the bound."""
    from l2bg.data import sources

    itemsize = {0x08: 1, 0x0B: 2, 0x0D: 4}[code]
    declared = int(np.prod(dims, dtype=object)) * itemsize
    header = struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    body_len = max(0, min(declared, 2 * LIMIT) + off_by)
    body = np.arange(body_len, dtype=np.uint64).astype(np.uint8).tobytes()
    raw = gzip.compress(header + body, mtime=0) if gz else header + body
    if gz and bomb_mib:
        raw += _ZERO_MEMBER * bomb_mib
    FUZZED["IDX header / bomb"] += 1
    with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
        mp.setattr(sources, "MAX_DATA_FILE_BYTES", LIMIT)
        path = Path(d) / "x-idx3-ubyte"
        path.write_bytes(raw)
        got, most = peak(lambda: sources.read_idx(path))
    total = len(body) + (bomb_mib or 0) * 2**20 * gz
    ok = len(header) + declared <= LIMIT and total == declared and len(raw) <= LIMIT
    OUTCOME["IDX " + ("accepted" if ok else "refused")] += 1
    if ok:
        assert not isinstance(got, L2BGError), got
        assert got.shape == tuple(dims) and got.nbytes == declared
    else:
        assert isinstance(got, L2BGError), (dims, total, declared)
    assert most < 4 * LIMIT + 2**20, most


# ----------------------------------------------------------------------------- CIFAR pickle


def _shared(depth: int, width: int, leaf) -> list:
    level = [leaf] * width
    for _ in range(depth - 1):
        level = [level] * width
    return level


_LEAVES = st.one_of(st.integers(-5, 120), st.just(2**70), st.booleans(), st.floats(0, 99),
                    st.binary(max_size=4), st.none())
_VALUES = st.one_of(
    _LEAVES,
    st.lists(_LEAVES, max_size=8),
    st.tuples(st.integers(1, 12), st.integers(2, 40), _LEAVES).map(lambda a: _shared(*a)),
    st.sampled_from(["u1", "i8", "f4", "u2"]).flatmap(
        lambda dt: st.tuples(st.integers(0, 6), st.sampled_from([3072, 3, 0])).map(
            lambda shape: np.zeros(shape, dt))),
)


@fuzz(400)
@given(st.one_of(_VALUES, st.integers(1, 6).map(lambda n: np.zeros((n, 3072), np.uint8))),
       st.data())
def test_cifar_pickles_of_any_structure(data, draw):
    """Data and labels of any type, nested and shared up to 40^12 elements: accepted exactly
    when data is uint8 (N, 3072) and labels N ints in 0..99; nothing expanded."""
    from l2bg.data.sources import _load_cifar_pickle

    if draw.draw(st.booleans()):  # half the inputs: a well-formed pickle, perhaps one off
        data = np.zeros((draw.draw(st.integers(1, 6)), 3072), np.uint8)
    rows = len(data) if isinstance(data, np.ndarray) and data.ndim == 2 else 3
    labels = draw.draw(st.lists(st.integers(-1, 100), min_size=rows, max_size=rows)
                       if draw.draw(st.booleans()) else _VALUES)
    raw = pickle.dumps({b"data": data, b"fine_labels": labels}, protocol=2)
    FUZZED["CIFAR pickle structure"] += 1
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "train"
        path.write_bytes(raw)
        got, most = peak(lambda: _load_cifar_pickle(path))
    n = len(data) if isinstance(data, np.ndarray) and data.ndim == 2 else -1
    ok = (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
          and data.shape[1] == 3072 and n > 0 and isinstance(labels, list) and len(labels) == n
          and all(type(v) is int and 0 <= v <= 99 for v in labels))
    OUTCOME["CIFAR " + ("accepted" if ok else "refused")] += 1
    if ok:
        x, y, _ = got
        assert np.array_equal(x, data) and y.tolist() == labels
    else:
        assert isinstance(got, L2BGError), (type(data), labels if len(raw) < 200 else "...")
    assert most < 8 * len(raw) + 2**20, most


# ----------------------------------------------------------------------------- manifests


_FILES = ["a.npy", "b.npy", "sub/c.npy", "./a.npy", "sub/../a.npy", "../out.npy",
          "sub/../../out.npy", "/etc/passwd", "missing.npy", "flat.npy", "link.npy", "", ".",
          "sub", 7, None, ["a.npy"]]


@pytest.fixture(scope="module")
def acts_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    src = root / "acts"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.npy", "b.npy", "sub/c.npy"):
        np.save(src / name, rng.standard_normal((5, 3)))
    np.save(src / "flat.npy", np.arange(5.0))
    np.save(root / "out.npy", np.zeros((5, 3)))
    (src / "link.npy").symlink_to(root / "out.npy")
    return src


@fuzz(300)
@given(st.one_of(
    st.lists(st.fixed_dictionaries({"name": st.text(max_size=3),
                                    "file": st.sampled_from(_FILES[:5])}), max_size=4),
    st.lists(st.fixed_dictionaries({"name": st.one_of(st.text(max_size=3), st.integers()),
                                    "file": st.sampled_from(_FILES)}), max_size=4),
    st.lists(st.sampled_from(_FILES), max_size=3), st.integers(), st.none()),
    st.one_of(st.just(0), st.integers(50, 3000)))
def test_manifests(acts_dir, layers, depth):
    """Entries of any shape, files inside, outside, missing or without an (n, ...) array, and
    nesting up to 3000 deep: a Source of files inside the directory, or one L2BGError."""
    from l2bg.rsa.ondisk import open_source

    FUZZED["manifest.json"] += 1
    body = {"layers": layers}
    text = json.dumps(body) if depth < 50 else "[" * depth + json.dumps(body) + "]" * depth
    (acts_dir / "manifest.json").write_text(text)
    got, _ = peak(lambda: open_source(acts_dir))
    if isinstance(got, L2BGError):
        OUTCOME["manifest refused"] += 1
        return
    OUTCOME["manifest accepted"] += 1
    base = acts_dir.resolve()
    assert depth < 50 and isinstance(layers, list)
    for layer in got.layers.values():
        assert layer.path.resolve().is_relative_to(base) and layer.n == 5


# ----------------------------------------------------------------------------- templates


_SIZES = st.one_of(st.integers(-3, 40), st.just(2**62), st.just(2**31), st.floats(-2, 50),
                   st.just(float("nan")), st.just(float("inf")), st.booleans(), st.text(
                       max_size=2), st.none())
_LISTS = st.one_of(st.lists(_SIZES, max_size=3), _SIZES)


_KEYS = {"mlp": ["input_dim", "hidden", "num_classes"],
         "convnet": ["in_channels", "image_size", "channels", "kernels", "fc", "dropout"]}


_GOOD = {"input_dim": st.integers(1, 50), "num_classes": st.integers(1, 50),
         "in_channels": st.integers(1, 4), "image_size": st.integers(8, 40),
         "dropout": st.floats(0, 0.99), **{k: st.lists(st.integers(1, 8), min_size=1,
                                                        max_size=3)
                                           for k in ("hidden", "channels", "kernels", "fc")}}


def _kwargs(name):
    good = st.fixed_dictionaries({}, optional={k: _GOOD[k] for k in _KEYS[name]})
    bad = st.dictionaries(st.sampled_from(_KEYS[name] + ["bogus"]), st.one_of(_SIZES, _LISTS),
                          max_size=3)
    return st.tuples(good, bad, st.booleans()).map(
        lambda a: {**a[0], **(a[1] if a[2] else {})})


@fuzz(400)
@given(st.sampled_from(["mlp", "convnet"]).flatmap(
    lambda name: st.tuples(st.just(name), _kwargs(name))))
def test_template_parameters(case):
    name, kwargs = case
    """Parameters of any type and size: a template whose slots build (on the meta device:
    shapes only), or one L2BGError naming the parameter; never another exception."""
    from l2bg.net.catalog import make_template

    FUZZED["template parameters"] += 1
    try:
        tpl = make_template(name, **kwargs)
    except TypeError:  # a keyword the template does not take: JointNet.load says so itself
        OUTCOME["template: unknown keyword"] += 1
        return
    except L2BGError as exc:
        assert "\n" not in str(exc)
        OUTCOME["template refused"] += 1
        return
    OUTCOME["template accepted"] += 1
    with torch.device("meta"):
        for slot in tpl.slots:
            slot.build()
        if tpl.per_task_heads:
            tpl.build_head(3)
