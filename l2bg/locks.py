"""Who is working, and advisory file locks for work that several workers may start at once.

A worker is ``host:pid:start`` (start = the process start time in clock ticks, which tells a
reused pid apart). A lock is a file created with ``O_CREAT | O_EXCL``; its holder refreshes its
mtime while it works. Every lock has a lease that always expires: a lock whose holder died on this
host, or that was not refreshed for ``lease_s`` seconds (whatever its content, even unreadable),
is broken. Breaking a live lock by a rare race only duplicates work: every result behind a lock is
written atomically and is the same either way.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from l2bg.fileio import refused

__all__ = ["FileLocks", "LockHeld", "worker_dead", "worker_id"]


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
        self._held: set[Path] = set()
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None
        self.waits = 0

    @contextmanager
    def hold(self, path: Path, wait: bool = True) -> Iterator[None]:
        """Hold the lock at ``path`` for the block: wait while a live worker holds it, or
        (``wait=False``) raise :class:`LockHeld` at once. A stale lock is broken."""
        waited = False
        fix = "make its directory writable or point l2bg at one you can write (--cache-dir, --out)"
        try:  # once: a parent that is a file must not read as a held lock below
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise refused(exc, path, fix) from exc
        while True:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                if self.stale(path):
                    self._break(path)
                    continue
                if not wait:
                    raise LockHeld(path, self.owner(path)) from None
                waited = True
                time.sleep(self.poll_s)
                continue
            except OSError as exc:
                raise refused(exc, path, fix) from exc
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps({"worker": worker_id(), "time": time.time()}))
            break
        if waited:
            self.waits += 1
        with self._mutex:
            self._held.add(path)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._refresh, daemon=True,
                                                name="l2bg-lock-refresh")
                self._thread.start()
        try:
            yield
        finally:
            with self._mutex:
                self._held.discard(path)
            path.unlink(missing_ok=True)

    def stale(self, path: Path) -> bool:
        """Whether the lock at ``path`` may be broken: its holder on this host is gone, or it
        was not refreshed for ``lease_s`` (an unreadable lock is judged by its age alone)."""
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return False  # released meanwhile: the next create decides
        if age > self.lease_s:
            return True
        return worker_dead(self.owner(path))  # unreadable (being written, garbage): age tells

    @staticmethod
    def owner(path: Path) -> str | None:
        """The worker recorded in the lock at ``path`` (None if unreadable)."""
        try:
            owner = json.loads(path.read_text() or "{}").get("worker")
        except (OSError, ValueError, AttributeError):
            return None
        return owner if isinstance(owner, str) else None

    @staticmethod
    def _break(path: Path) -> None:
        tmp = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(path, tmp)
            tmp.unlink(missing_ok=True)
        except FileNotFoundError:
            pass

    def _refresh(self) -> None:
        while True:
            time.sleep(max(0.5, self.lease_s / 4))
            with self._mutex:
                held = list(self._held)
            if not held:
                return
            for p in held:
                try:
                    os.utime(p)
                except OSError:
                    pass
