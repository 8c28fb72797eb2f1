"""The lock's takeover of a stale lock is a compare-and-swap (issue 22, item 5): processes that
race to break one stale lock give exactly one holder, and a holder that lost its lock (paused
past its lease) never removes the new holder's lock."""

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from l2bg.base.locks import FileLocks, LockHeld, worker_id

LEASE = 5.0
HOLD_S = 0.1
RACES = 20  # per kind of stale lock: 40 races in all
RACERS = 3
HELD, REFUSED, OVERLAP = 0, 1, 2


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _stale_lock(path, kind: str) -> None:
    """A lock left by a dead holder on this host (fresh mtime), or by a live one that has not
    refreshed it for longer than the lease, or an unreadable one as old."""
    if kind == "dead":
        path.write_text(json.dumps({"worker": f"{socket.gethostname()}:{_dead_pid()}:1",
                                    "time": time.time()}))
        return
    path.write_bytes(b"{torn" if kind == "garbage" else json.dumps(
        {"worker": worker_id(), "time": time.time()}).encode())
    old = time.time() - 10 * LEASE
    os.utime(path, (old, old))


def _racer(go: int, lock, inside) -> int:
    """Wait for the start signal, then try the lock once. While holding it, a marker created
    with O_EXCL tells whether another process holds it at the same time."""
    os.read(go, 1)
    try:
        with FileLocks(lease_s=LEASE, poll_s=0.01).hold(lock, wait=False):
            try:
                fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return OVERLAP
            time.sleep(HOLD_S)
            os.close(fd)
            os.unlink(inside)
            return HELD
    except LockHeld:
        return REFUSED


def _race(tmp_path, kind: str) -> list[int]:
    lock, inside = tmp_path / ".k.lock", tmp_path / "inside"
    _stale_lock(lock, kind)
    go, start = os.pipe()
    pids = []
    for _ in range(RACERS):
        pid = os.fork()
        if pid == 0:
            code = 9
            try:
                os.close(start)
                code = _racer(go, lock, inside)
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(go)
    os.write(start, b"x" * RACERS)  # every racer starts at once
    os.close(start)
    codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
    assert not lock.exists() and not inside.exists()
    return codes


@pytest.mark.parametrize("kind", ["dead", "expired", "garbage"])
def test_racing_takeovers_of_a_stale_lock_give_one_holder(tmp_path, kind):
    """RACES races of RACERS processes over one stale lock: never two holders at once."""
    races = RACES if kind != "garbage" else RACES // 4
    results = [_race(tmp_path, kind) for _ in range(races)]
    overlaps = sum(codes.count(OVERLAP) for codes in results)
    assert all(set(codes) <= {HELD, REFUSED, OVERLAP} for codes in results), results
    assert overlaps == 0, f"{overlaps} second holders in {races} races: {results}"
    assert all(HELD in codes for codes in results), results


def test_a_holder_that_lost_its_lock_leaves_the_new_holders_lock(tmp_path):
    """A holder paused past its lease finds its lock taken over; when it resumes and releases,
    the new holder's lock stays."""
    lock = tmp_path / ".k.lock"
    paused = FileLocks(lease_s=60).hold(lock)
    paused.__enter__()
    old = time.time() - 10
    os.utime(lock, (old, old))  # not refreshed for 10 s: stale for a lease of 1 s
    with FileLocks(lease_s=1, poll_s=0.01).hold(lock, wait=False):
        taken = lock.read_text()
        paused.__exit__(None, None, None)  # the paused holder resumes and releases
        assert lock.exists() and lock.read_text() == taken
        with pytest.raises(LockHeld), FileLocks(lease_s=60).hold(lock, wait=False):
            pass
    assert not lock.exists()


def test_a_holder_refreshes_only_its_own_lock_file(tmp_path):
    """The refresh thread touches the file it created, not whatever the path names now (a
    lock that replaced its own after a takeover keeps its age)."""
    lock = tmp_path / ".k.lock"
    with FileLocks(lease_s=1).hold(lock):  # refreshed every 0.5 s
        lock.unlink()
        lock.write_text(json.dumps({"worker": "elsewhere:1:1", "time": 0}))
        old = time.time() - 100
        os.utime(lock, (old, old))
        time.sleep(1.2)
        assert lock.stat().st_mtime == old
    assert lock.exists()  # not ours: left in place


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_a_stale_lock_this_user_cannot_read_is_taken_over_by_its_age(request):
    """A lock another user left unreadable (no flock possible) is judged by its age alone."""
    from forking import NOBODY, forked

    public = Path(tempfile.mkdtemp(prefix="l2bg-locks-"))  # not under pytest's private tmp
    request.addfinalizer(lambda: shutil.rmtree(public, ignore_errors=True))
    public.chmod(0o777)
    lock = public / ".k.lock"
    lock.write_text("{}")
    lock.chmod(0)
    old = time.time() - 10 * LEASE
    os.utime(lock, (old, old))

    def take() -> int:
        with FileLocks(lease_s=LEASE).hold(lock, wait=False):
            return 0 if lock.stat().st_uid == NOBODY else 1
    child = forked(take, uid=NOBODY)
    assert child.code == 0, child.output
    assert not lock.exists()
