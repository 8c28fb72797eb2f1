"""The search's journal file: Optuna's JournalFileBackend, kept readable after a crash.

A journal is one JSON object per line, appended under a lock file. A writer killed mid-append (or
a full disk) leaves a *torn* last line: a partial record without its newline. Optuna then glues
the next record onto it, and from that line on the journal cannot be replayed: every trial is
lost. So, under the same lock that Optuna's appends take (``JournalFileSymlinkLock`` on
``<journal>.lock``, Optuna's default, which also excludes ``JournalFileOpenLock`` users of the
same file) and after re-reading the tail there (a writer may have been mid-append when we first
looked):

* when a journal is opened, a damaged tail (a torn line, or last lines that are not journal
  records) is set aside: the whole journal is first copied to ``<journal>.damaged-<stamp>``, then
  cut back to its last good line, with one warning;
* before every append the same check runs, so a writer that died mid-append on another worker
  cannot make a live worker's record unreadable.

A damaged line *inside* the journal (not at its end) cannot be set aside without changing what
the records after it mean; opening such a journal is a one-line error naming the line. A file that
holds no record and does not begin as one (every record begins ``{"op_code":``) is not a journal
at all (a user's file given as ``journal:FILE``): one line, the file untouched.

An append the file system refuses (a full disk) is cut back to where it began, so the journal
keeps only whole records, and is one :class:`~l2bg.base.errors.L2BGError`; the same command resumes
once there is space.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from l2bg.base import crashpoints as faults
from l2bg.base.errors import L2BGError, warn
from l2bg.base.fileio import damaged_name, refused

__all__ = ["damaged_line", "open_journal", "repair_tail"]

_CHUNK = 1 << 16
#: How every record Optuna writes begins: a torn first record is a prefix of it, or begins so.
_RECORD_START = b'{"op_code":'


def _is_record(line: bytes) -> bool:
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(obj, dict) and isinstance(obj.get("op_code"), int)


def _line_start(f: Any, end: int) -> int:
    """Offset where the line that ends at ``end`` (after its newline, if it has one) starts."""
    hi = end - 1  # the line's own last byte is not a separator
    while hi > 0:
        lo = max(0, hi - _CHUNK)
        f.seek(lo)
        i = f.read(hi - lo).rfind(b"\n")
        if i >= 0:
            return lo + i + 1
        hi = lo
    return 0


def _good_end(f: Any, size: int) -> int:
    """Offset just after the last whole record of the open journal ``f`` (of ``size`` bytes):
    a torn fragment and trailing lines that are not records lie beyond it."""
    end = size
    while end > 0:
        start = _line_start(f, end)
        f.seek(start)
        line = f.read(end - start)
        if line.endswith(b"\n") and _is_record(line):
            return end
        end = start
    return 0


def repair_tail(path: str | os.PathLike, lock: Any | None = None) -> Path | None:
    """Set aside a damaged tail of the journal at ``path`` (see the module docstring), holding
    ``lock`` (an Optuna journal lock) while it re-reads and cuts. Returns the backup's path, or
    None when the tail was good."""
    path = Path(path)
    if not _tail_damaged(path):
        return None
    if lock is not None:
        lock.acquire()
    try:
        return _cut_tail(path)
    finally:
        if lock is not None:
            lock.release()


def _tail_damaged(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return _good_end(f, size) != size
    except FileNotFoundError:
        return False


def _cut_tail(path: Path) -> Path | None:
    """Under the lock: re-read the tail; if it is still damaged, back the journal up and cut it
    back to its last good line."""
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        end = _good_end(f, size)
        if end == size:
            return None  # a writer was mid-append when we first looked; it finished
        if end == 0:
            f.seek(0)
            head = f.read(_CHUNK)
            if b"\n" in head or not (head.startswith(_RECORD_START)
                                     or _RECORD_START.startswith(head)):
                raise L2BGError(f"{path} holds no journal record; it is not an Optuna journal "
                                "file (it was left as it is): point journal: at another file")
        backup = damaged_name(path)
        with open(backup, "wb") as b:
            f.seek(0)
            shutil.copyfileobj(f, b)
            b.flush()
            os.fsync(b.fileno())
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    warn(f"journal {path} ended in {size - end} bytes that are not a whole record (a write cut "
         f"short); set them aside and resumed from the last good record; the journal as it was "
         f"is kept at {backup}")
    return backup


def damaged_line(path: str | os.PathLike) -> tuple[int, str] | None:
    """(1-based number, first bytes) of the first line of the journal that is not a record, or
    None (used to explain a journal that Optuna cannot replay)."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not _is_record(line):
                return number, line[:60].decode("utf-8", "replace")
    return None


def open_journal(path: str | os.PathLike, lease_s: float = 60.0) -> Any:
    """An Optuna JournalStorage on the file ``path`` whose backend repairs a damaged tail when
    opened and before every append. A killed writer's lock is broken after
    ``clamp(lease_s, 3, 30)`` seconds (Optuna's default grace period is 30)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    class RepairingJournalBackend(JournalFileBackend):
        """JournalFileBackend that never appends after a torn line."""

        def __init__(self, file_path: str, lock: JournalFileSymlinkLock) -> None:
            super().__init__(file_path, lock_obj=lock)
            self._l2bg_path = Path(file_path)
            self._l2bg_lock = lock

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs)
                    + "\n").encode("utf-8")
            path = self._l2bg_path
            fix = "free some space on its file system and rerun the same command to resume"
            try:
                self._l2bg_lock.acquire()
            except OSError as exc:
                raise refused(exc, path, fix) from exc
            try:
                if _tail_damaged(path):
                    _cut_tail(path)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
                try:
                    start = os.fstat(fd).st_size
                    faults.point("journal", torn=lambda: os.write(fd, data[:max(1, len(data)
                                                                             // 2)]))
                    try:
                        view = memoryview(data)
                        while view:
                            view = view[os.write(fd, view):]
                        os.fsync(fd)
                    except OSError as exc:  # only whole records stay: cut back, one line
                        try:
                            os.ftruncate(fd, start)
                        except OSError:
                            pass  # the next open or append sets the torn tail aside
                        raise refused(exc, path, fix) from exc
                finally:
                    os.close(fd)
            finally:
                self._l2bg_lock.release()

    grace = int(min(30, max(3, lease_s)))
    lock = JournalFileSymlinkLock(str(path), grace_period=grace)
    repair_tail(path, lock)
    backend = RepairingJournalBackend(str(path), lock)
    try:
        return JournalStorage(backend)
    except Exception as exc:  # noqa: BLE001 - a damaged journal, explained on one line
        bad = damaged_line(path)
        where = f"line {bad[0]} ({bad[1]!r}…) is not a journal record" if bad else str(exc)
        raise L2BGError(f"journal {path} cannot be replayed: {where}; it was edited or damaged "
                        "inside (not at its end), so restore it from a copy") from exc
