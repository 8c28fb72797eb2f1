"""Who is working, and advisory file locks for work that several workers may start at once.

A worker is ``host:pid:start`` (start = the process start time in clock ticks, which tells a
reused pid apart). A lock is a file created with ``O_CREAT | O_EXCL`` holding
``{"worker": …, "time": …}``; its holder keeps it open and refreshes its mtime while it works.
Every lock has a lease that always expires: a lock whose holder died on this host, or that was not
refreshed for ``lease_s`` seconds (whatever its content, even unreadable), is stale.

Taking over a stale lock is a compare-and-swap: the breaker opens the lock file, takes an
exclusive ``flock`` on it, checks that the path still names that same file (device and inode) and
judges it stale again from what it reads there, and only then unlinks it; then every contender
creates the lock anew with ``O_EXCL``, so exactly one of them holds it. A breaker that waited on
the flock of a file another breaker removed finds the path naming another file (or none) and
leaves it. A holder releases the same way: it unlinks the path only while the path still names
its own (open) file, so a holder that lost its lock (paused past its lease) never removes the
new holder's. Where ``flock`` is missing, the identity check alone is kept (a narrow race).
Across machines (a shared file system) the lease still decides. A holder paused past its lease
works on without the lock: every result behind a lock is written atomically and is the same
either way, so that only duplicates work.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from l2bg.base.fileio import refused

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileLocks", "LockHeld", "worker_dead", "worker_id"]

#: the parameters that choose where locks live, named in a refused lock's fix
_WHERE = ("cache_dir", "out")


def _proc_start(pid: int) -> str | None:
    """Start time (clock ticks since boot) of a process, None where /proc is missing; 'Z' for
    a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return "Z" if fields[0] in ("Z", "X") else fields[19]


_WORKER_ID: str | None = None


def worker_id() -> str:
    """``host:pid:start`` of this process."""
    global _WORKER_ID
    pid = os.getpid()
    if _WORKER_ID is None or _WORKER_ID.split(":")[-2] != str(pid):
        _WORKER_ID = f"{socket.gethostname()}:{pid}:{_proc_start(pid) or '0'}"
    return _WORKER_ID


def worker_dead(worker: str | None) -> bool:
    """True when ``worker`` ran on this host and its process is gone; False when it is alive or
    on another host (there, only its lease can tell)."""
    if not isinstance(worker, str) or worker.count(":") < 2:
        return False
    host, pid_s, start = worker.rsplit(":", 2)
    if host != socket.gethostname() or not pid_s.isdigit():
        return False
    pid = int(pid_s)
    now = _proc_start(pid)
    if now is not None:
        return now == "Z" or (start != "0" and now != start)
    if os.path.isdir("/proc"):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


class LockHeld(Exception):
    """``FileLocks.hold(path, wait=False)`` found the lock held by a live worker (``owner``)."""

    def __init__(self, path: Path, owner: str | None) -> None:
        super().__init__(f"{path} is held by {owner or 'another worker'}")
        self.path, self.owner = path, owner


class FileLocks:
    """Advisory lock files; see the module docstring. ``hold(path)`` is a context manager."""

    def __init__(self, lease_s: float = 60.0, poll_s: float = 0.1) -> None:
        self.lease_s = float(lease_s)
        self.poll_s = poll_s
        self._held: dict[Path, int] = {}  # path -> the open descriptor of our lock file
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None
        self.waits = 0

    @contextmanager
    def hold(self, path: Path, wait: bool = True) -> Iterator[None]:
        """Hold the lock at ``path`` for the block: wait while a live worker holds it, or
        (``wait=False``) raise :class:`LockHeld` at once. A stale lock is taken over."""
        waited = False
        fix = "make its directory writable or point l2bg at one you can write ({cache_dir}, {out})"
        try:  # once: a parent that is a file must not read as a held lock below
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise refused(exc, path, fix, _WHERE) from exc
        while True:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                if self.stale(path):
                    try:
                        self._take_over(path)
                    except OSError as exc:
                        raise refused(exc, path, fix, _WHERE) from exc
                    continue
                if not wait:
                    raise LockHeld(path, self.owner(path)) from None
                waited = True
                time.sleep(self.poll_s)
                continue
            except OSError as exc:
                raise refused(exc, path, fix, _WHERE) from exc
            try:
                os.write(fd, json.dumps({"worker": worker_id(), "time": time.time()}).encode())
            except OSError as exc:
                _release(path, fd)
                raise refused(exc, path, fix, _WHERE) from exc
            break
        if waited:
            self.waits += 1
        with self._mutex:
            self._held[path] = fd
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._refresh, daemon=True,
                                                name="l2bg-lock-refresh")
                self._thread.start()
        try:
            yield
        finally:
            with self._mutex:
                fd = self._held.pop(path)
            _release(path, fd)

    def _judge(self, mtime: float, text: bytes | str | None) -> bool:
        if time.time() - mtime > self.lease_s:
            return True
        return worker_dead(_owner(text))  # unreadable (being written, garbage): age tells

    def stale(self, path: Path) -> bool:
        """Whether the lock at ``path`` may be broken: its holder on this host is gone, or it
        was not refreshed for ``lease_s`` (an unreadable lock is judged by its age alone)."""
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return False  # released meanwhile: the next create decides
        return self._judge(mtime, _read(path))

    @staticmethod
    def owner(path: Path) -> str | None:
        """The worker recorded in the lock at ``path`` (None if unreadable)."""
        return _owner(_read(path))

    def _take_over(self, path: Path) -> None:
        """Remove the lock at ``path`` if, pinned (see :func:`_pinned`), it is still stale."""
        with _pinned(path) as pin:
            if pin is not None and self._judge(pin[0].st_mtime, pin[1]):
                with suppress(FileNotFoundError):  # removed by a process without the guard
                    os.unlink(path)

    def _refresh(self) -> None:
        while True:
            time.sleep(max(0.5, self.lease_s / 4))
            with self._mutex:  # under the mutex: a released descriptor is never touched
                if not self._held:
                    return
                for fd in self._held.values():
                    with suppress(OSError):
                        os.utime(fd)  # our own file, even where another has replaced it


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, ValueError):
        return None


def _owner(text: bytes | str | None) -> str | None:
    """The worker recorded in a lock's content (None if unreadable)."""
    try:
        owner = json.loads(text or "{}").get("worker")
    except (TypeError, ValueError, AttributeError):
        return None
    return owner if isinstance(owner, str) else None


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _flock(fd: int) -> None:
    """An exclusive flock on ``fd`` (released when it is closed); none where unsupported."""
    if fcntl is not None:
        with suppress(OSError):  # ENOLCK, EOPNOTSUPP…: the identity check alone is kept
            fcntl.flock(fd, fcntl.LOCK_EX)


def _open(path: Path) -> int | None:
    """``path`` opened to read (read-write where allowed: NFS flocks need it); None if gone."""
    for flags in (os.O_RDWR, os.O_RDONLY):
        try:
            return os.open(path, flags)
        except PermissionError:
            if flags == os.O_RDONLY:
                raise
        except FileNotFoundError:
            return None
    return None


@contextmanager
def _pinned(path: Path) -> Iterator[tuple[os.stat_result, bytes | None] | None]:
    """The file at ``path``, flock-ed, as (its stat, its content) while ``path`` still names
    it; None when it is gone or was replaced while this waited for the flock. A file this
    process may not read is given by its stat alone, unguarded (judged by its age)."""
    try:
        fd = _open(path)
    except PermissionError:
        try:
            pin: tuple[os.stat_result, bytes | None] | None = (os.stat(path), None)
        except FileNotFoundError:
            pin = None
        yield pin
        return
    if fd is None:
        yield None
        return
    try:
        _flock(fd)
        st = os.fstat(fd)
        try:
            same = _same(os.stat(path), st)
        except FileNotFoundError:
            same = False
        yield (st, os.pread(fd, 1 << 16, 0)) if same else None
    finally:
        os.close(fd)


def _release(path: Path, fd: int) -> None:
    """Remove our lock at ``path`` (open as ``fd``) unless it was taken over, then close it."""
    try:
        _flock(fd)
        with suppress(FileNotFoundError):
            if _same(os.stat(path), os.fstat(fd)):
                os.unlink(path)
    finally:
        os.close(fd)
