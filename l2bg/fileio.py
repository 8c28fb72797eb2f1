"""Atomic file and directory writes: the one way l2bg puts a file on disk.

A reader (another worker, a later run, a crash) sees either the old file or the whole new one,
never half of it: content goes to a uniquely named temporary file in the same directory, is
flushed to disk, given the mode a plain ``open()`` would give under the process umask (``mkstemp``
alone would leave it 0600), and renamed over the target. Directories (cache entries, memo nodes)
are built under a unique temporary name and renamed into place the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_dir", "atomic_write", "file_mode", "read_json", "write_json"]


def _read_umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no other portable way to read it: set and restore at once
    os.umask(mask)
    return mask


def file_mode(directory: bool = False) -> int:
    """Mode of a new file (0666) or directory (0777) under the current umask."""
    return (0o777 if directory else 0o666) & ~_read_umask()


def atomic_write(path: str | os.PathLike, content: bytes | str | Callable[[Path], None]) -> Path:
    """Write ``content`` (bytes, text, or a function that writes the file at the path it gets)
    to ``path`` atomically; returns the path. The parent directory must exist or is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        if callable(content):
            os.close(fd)
            content(tmp)
            fd = os.open(tmp, os.O_RDONLY)
        else:
            data = content.encode() if isinstance(content, str) else bytes(content)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """``obj`` as strict JSON (NaN and inf refused), written atomically."""
    return atomic_write(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file (the caller turns errors into its own one-line message)."""
    return json.loads(Path(path).read_text())


@contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name beside ``final`` and rename it into place when
    the block ends without error. If ``final`` appeared meanwhile (another worker wrote the same
    entry), the new copy is discarded: entries are content-addressed, so both are the same."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, file_mode(directory=True))
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
