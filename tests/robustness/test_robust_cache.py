"""Cache and memo entries are verified on read (issue 14, item 4): a damaged entry is moved
aside (renamed, not deleted) and computed again with one warning; what a killed writer left is
swept after the lease. Locks always expire (item 5)."""

import json
import os
import time
import warnings

import pytest
import torch
from forking import forked

from l2bg.base import crashpoints as faults
from l2bg.base.errors import L2BGError, L2BGWarning
from l2bg.base.locks import FileLocks
from l2bg.learn.independent import IndependentCache
from l2bg.learn.learner import GrowStep
from l2bg.learn.settings import Settings
from l2bg.search.memo import Memo


@pytest.fixture(scope="module")
def setting(tiny_mnist):
    torch.set_num_threads(1)
    s = Settings("pmnist", data_root=str(tiny_mnist), tasks=3, epochs=1, batch_size=32,
                 rsa_samples=10)
    return s, s.build()


def _indep(cache, built, index=0):
    t = built.bench.tasks[index]
    return cache.get_or_train(built.bench.name, t, index, 0, built.template, built.train,
                              torch.device("cpu"))


def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(p):
    data = bytearray(p.read_bytes())
    data[-3] ^= 0x10
    p.write_bytes(bytes(data))


def _edit_meta(p):
    meta = json.loads(p.read_text())
    meta["val_acc"] = 1.0
    p.write_text(json.dumps(meta))


CACHE_DAMAGE = {
    "truncated meta.json": ("meta.json", _truncate),
    "edited meta.json": ("meta.json", _edit_meta),
    "truncated weights": ("jointnet.safetensors", _truncate),
    "flipped weight bit": ("jointnet.safetensors", _flip),
    "flipped topology": ("jointnet.json", lambda p: p.write_text(p.read_text().replace(
        '"owner"', '"ownr"'))),
    "missing topology": ("jointnet.json", lambda p: p.unlink()),
}


@pytest.mark.parametrize("damage", CACHE_DAMAGE)
def test_a_damaged_cache_entry_is_moved_aside_and_retrained(tmp_path, setting, damage):
    _, built = setting
    first = _indep(IndependentCache(tmp_path), built)
    want = (first.val_acc, first.test_acc, _state(first.net))
    entry = tmp_path / "independent" / first.key
    name, hurt = CACHE_DAMAGE[damage]
    hurt(entry / name)
    damaged = sorted(p.name for p in entry.iterdir())
    cache = IndependentCache(tmp_path)
    with pytest.warns(L2BGWarning, match="cached independent net") as rec:
        again = _indep(cache, built)
    assert len(rec) == 1 and cache.misses == 1 and not again.cached
    assert (again.val_acc, again.test_acc) == want[:2] and _equal(_state(again.net), want[2])
    [aside] = (tmp_path / "independent").glob(f"{first.key}.damaged-*")
    assert sorted(p.name for p in aside.iterdir()) == damaged  # kept as it was
    with warnings.catch_warnings():
        warnings.simplefilter("error", L2BGWarning)
        hit = _indep(IndependentCache(tmp_path), built)
    assert hit.cached and _equal(_state(hit.net), want[2])


@pytest.fixture
def memo(tmp_path, setting):
    settings, built = setting

    def make():
        """The memo on a learner, a trial through them, and a plain learner."""
        memoised = settings.learner(built, IndependentCache(tmp_path))
        m = Memo.attach(memoised, memo_dir=tmp_path)

        def trial(steps):
            return m.outcome(memoised.run("l2bg", steps))
        return m, trial, settings.learner(built, IndependentCache(tmp_path))
    return make


STEPS = [GrowStep(delta=0.5), GrowStep(delta=0.5)]


def _record_core(r):
    return {k: r[k] for k in ("acc_matrix", "acc_matrix_val", "params", "gain", "grow_sequence")}


@pytest.mark.parametrize("target, hurt", [
    ("node.json", _truncate), ("node.json", lambda p: p.write_text(p.read_text().replace(
        '"val_row": [0', '"val_row": [1'))), ("jointnet.safetensors", _flip),
    ("scores", _truncate), ("scores", lambda p: p.write_text(p.read_text().replace(
        '"layers": [0', '"layers": [1'))),
])
def test_a_damaged_memo_node_or_score_is_moved_aside_and_recomputed(memo, tmp_path, target,
                                                                     hurt):
    m, trial, learner = memo()
    first = trial(STEPS)
    fresh = _record_core(learner.run("l2bg", sequence=STEPS).record)
    assert _record_core(first.record) == fresh
    root = m.store.root
    if target == "scores":
        files = sorted((root / "scores").glob("*.json"))
        victim = files[-1]
    else:
        victim = first.net_dir / target
        if target == "node.json":  # the node of the first task: every later one builds on it
            victim = root / "nodes" / m.node_key(first.decisions[:1]) / target
    before = victim.read_bytes()
    hurt(victim)
    assert victim.read_bytes() != before
    _, trial2, _ = memo()
    with pytest.warns(L2BGWarning, match="damaged") as rec:
        again = trial2(STEPS)
    assert len(rec) == 1
    assert _record_core(again.record) == fresh
    aside = list(victim.parent.glob(f"{victim.name}.damaged-*")) or list(
        victim.parent.parent.glob(f"{victim.parent.name}.damaged-*"))
    assert len(aside) == 1
    assert again.stats["memo_misses"] + again.stats["scores_misses"] >= 1


def test_sigkill_during_a_cache_write_leaves_no_temp_that_survives(tmp_path, setting):
    _, built = setting

    def killed_while_writing():
        faults.arm("dir", 1)
        _indep(IndependentCache(tmp_path), built)
    child = forked(killed_while_writing)
    assert child.killed, child.output
    indep = tmp_path / "independent"
    [orphan] = [p for p in indep.iterdir() if p.name.endswith(".tmp")]
    assert not [p for p in indep.iterdir() if p.is_dir() and not p.name.startswith(".")]
    # a lock the dead writer held is broken (its process is gone), the entry written again;
    # the orphan is younger than the lease, so it stays for now
    cache = IndependentCache(tmp_path, FileLocks(lease_s=60))
    net = _indep(cache, built)
    assert cache.misses == 1 and orphan.exists()
    old = time.time() - 120
    os.utime(orphan, (old, old))
    _indep(cache, built, index=1)  # the next write sweeps temporaries older than the lease
    assert not orphan.exists() and (indep / net.key).is_dir()


def test_an_invalid_lock_never_hangs(tmp_path):
    """Item 5: a lock file with invalid JSON (or none at all) is judged by its age alone."""
    locks = FileLocks(lease_s=0.6, poll_s=0.05)
    lock = tmp_path / ".k.lock"
    for garbage in (b"{not json", b"", b"[1, 2]", b"\xff\xfe", b'{"worker": 7}'):
        lock.write_bytes(garbage)
        start = time.monotonic()
        with locks.hold(lock):
            waited = time.monotonic() - start
        assert 0.3 < waited < 5, (garbage, waited)
        assert not lock.exists()
    lock.write_bytes(b"{not json")
    old = time.time() - 10
    os.utime(lock, (old, old))
    start = time.monotonic()
    with locks.hold(lock):  # already older than the lease: broken at once
        assert time.monotonic() - start < 0.3


@pytest.mark.parametrize("wait", [True, False])
def test_a_lock_under_a_file_is_a_one_line_error_not_a_hang(tmp_path, wait):
    """A lock whose parent path is a file cannot be created: that is refused at once (not
    read as a lock someone holds, which waited for ever or raised LockHeld)."""
    (tmp_path / "afile").write_text("the user's file")
    locks = FileLocks(lease_s=0.6, poll_s=0.05)
    start = time.monotonic()
    with pytest.raises(L2BGError, match="cannot write .*afile"), locks.hold(
            tmp_path / "afile" / "x.lock", wait=wait):
        pass
    assert time.monotonic() - start < 2
    assert (tmp_path / "afile").read_text() == "the user's file"
