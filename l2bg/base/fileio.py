"""Atomic file and directory writes: the one way l2bg puts a file on disk.

A reader (another worker, a later run, a crash) sees either the old file or the whole new one,
never half of it: content goes to a uniquely named temporary file in the same directory, is
flushed to disk, given the mode a plain ``open()`` would give under the process umask (``mkstemp``
alone would leave it 0600), and renamed over the target. Directories (cache entries, memo nodes)
are built under a unique temporary name and renamed into place the same way. Temporary names are
``.<name>.<random>.tmp``; what a killed process leaves of them is swept by
:func:`sweep_stale_temps` once it is older than any write could take.

A write that the file system refuses (permissions, read-only, full disk) is an
:class:`~l2bg.base.errors.L2BGError` naming the path, never a traceback.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from l2bg.base import crashpoints as faults
from l2bg.base.errors import L2BGError, ParamError, one_line, params_in, warn

__all__ = ["SEAL", "atomic_dir", "atomic_write", "file_mode", "link_new", "os_error", "read_json",
           "refused",
           "read_sealed", "seal", "seal_problem", "set_aside", "sha256_file",
           "sweep_stale_temps", "writable_dir", "write_json"]

#: errno values that mean "the file system will not take this write": reported as L2BGError.
_REFUSED = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
            errno.EISDIR, errno.EFBIG}
#: errno values that mean "no space left": the fix is to free some.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


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


def refused(exc: OSError, path: str | os.PathLike, fix: str = "",
            params: tuple[str, ...] = ()) -> L2BGError:
    """The one-line error for a write the file system refused (``params``: the parameters
    ``fix`` names as ``{param}``)."""
    why = exc.strerror or one_line(exc, 120)
    other = exc.filename
    if other is not None and Path(os.fsdecode(other)).parent != Path(path).parent:
        why = f"{why} on {os.fsdecode(other)}"  # a file the writer read, not the one it wrote
    if not fix:
        fix = ("free some space on its file system (or choose another directory) and run again"
               if exc.errno in _FULL else "check its permissions and free space")
    return ParamError(f"cannot write {path}: {why}; {fix}", *params)


def os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: itself, one it was raised from, or one that a writer outside
    Python reported in its message (Rust's ``... (os error 28)``: safetensors); else None."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError):
            return e
        m = re.search(r"\(os error (\d+)\)", str(e))
        if m:
            code = int(m.group(1))
            return OSError(code, os.strerror(code))
        e = e.__cause__ or e.__context__
    return None


@contextmanager
def _writing(path: Path, every: bool = False) -> Iterator[None]:
    """Turn a refused write (``every``: any OSError) into the one-line error naming ``path``."""
    try:
        yield
    except L2BGError:
        raise
    except Exception as exc:
        err = os_error(exc)
        if err is not None and (every or err.errno in _REFUSED):
            raise refused(err, path) from exc
        raise


def atomic_write(path: str | os.PathLike, content: bytes | str | Callable[[Path], None]) -> Path:
    """Write ``content`` (bytes, text, or a function that writes the file at the path it gets)
    to ``path`` atomically; returns the path. The parent directory must exist or is created.
    Any OSError (a full disk, a writer function's own report of one) is one
    :class:`~l2bg.base.errors.L2BGError` naming ``path``, and the temporary file is removed."""
    path = Path(path)
    tmp: Path | None = None
    fd = -1
    try:
        with _writing(path, every=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            tmp = Path(name)
            if callable(content):
                os.close(fd)
                fd = -1  # closed once: the writer opens the file itself
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
            faults.point("write")
            os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            with suppress(OSError):
                os.close(fd)
        if tmp is not None:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """``obj`` as strict JSON, written atomically. NaN and inf are refused with one
    :class:`L2BGError` before anything is written: l2bg's results are finite by definition,
    so a non-finite number is a fault to report, never a ``null`` to hide."""
    try:
        text = json.dumps(obj, indent=indent, allow_nan=False)
    except ValueError as exc:
        raise L2BGError(f"cannot write {path}: it would hold NaN or infinity ({one_line(exc)}); "
                        "l2bg writes strict JSON: check the input that produced it") from None
    return atomic_write(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file (the caller turns errors into its own one-line message)."""
    return json.loads(Path(path).read_text())


def read_json_or_fail(path: str | os.PathLike, fix: str = "") -> Any:
    """:func:`read_json`, with the one-line :class:`L2BGError` for a file that cannot be read or
    is not JSON (not UTF-8, nested too deep); ``fix`` is appended to the latter."""
    try:
        return read_json(path)
    except (ValueError, RecursionError) as exc:
        raise ParamError(f"{path} is not valid JSON ({one_line(exc, 80)})"
                         f"{'; ' + fix if fix else ''}", *params_in(fix)) from exc
    except OSError as exc:
        raise L2BGError(f"cannot read {path} ({exc.strerror or exc})") from exc


@contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name beside ``final`` and rename it into place when
    the block ends without error. If ``final`` appeared meanwhile (another worker wrote the same
    entry), the new copy is discarded: entries are content-addressed, so both are the same.
    A write the file system refuses inside the block (a full disk) is one L2BGError naming
    ``final``, and the temporary directory is removed."""
    final = Path(final)
    with _writing(final, every=True):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        with _writing(final):
            os.chmod(tmp, file_mode(directory=True))
            yield tmp
        faults.point("dir")
        with _writing(final, every=True):
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir() or final.is_symlink():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def link_new(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Give the file ``src`` the second name ``dst``, which must not exist: an existing ``dst``
    is never replaced (FileExistsError), however two writers race. Where the file system has no
    hard links, ``src`` is renamed to ``dst`` after a check (racy only there)."""
    faults.point("write")
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "File exists", str(dst)) from exc
        os.rename(src, dst)


def _temp_name(name: str, target: str) -> bool:
    """Whether ``name`` is a temporary of ``target`` as :func:`atomic_write` and
    :func:`atomic_dir` make them: ``.<target>.<8 random characters>.tmp``."""
    return re.fullmatch(rf"\.{re.escape(target)}\.[a-z0-9_]{{8}}\.tmp", name) is not None


def sweep_stale_temps(directory: str | os.PathLike, older_than_s: float,
                      names: tuple[str, ...] | None = None) -> list[Path]:
    """Remove the temporary files and directories (``.*.tmp``; with ``names``, only those of
    these target names) in ``directory`` last modified more than ``older_than_s`` ago: what
    killed writers left. A write in progress is never that old (it renames its temporary
    within the lease of the lock it holds); under a claim that excludes every other writer of
    ``names``, ``older_than_s=0`` sweeps all of theirs."""
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for e in entries:
        if names is None:
            if not (e.name.startswith(".") and e.name.endswith(".tmp")):
                continue
        elif not any(_temp_name(e.name, n) for n in names):
            continue
        try:
            if now - e.stat(follow_symlinks=False).st_mtime < older_than_s:
                continue
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
        except OSError:
            continue  # removed by another sweeper, or not ours to remove
        removed.append(Path(e.path))
    return removed


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: Key of the checksums in a sealed metadata object.
SEAL = "sha256"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, allow_nan=False).encode()).hexdigest()


def seal(meta: dict[str, Any], directory: str | os.PathLike | None = None,
         files: tuple[str, ...] = ()) -> dict[str, Any]:
    """``meta`` plus ``sha256``: the checksum of ``meta`` itself (as JSON) and of each of
    ``files`` in ``directory``. What an entry written to the cache or memo stores, so that a
    reader can tell a damaged entry from a good one (:func:`seal_problem`)."""
    body = {k: v for k, v in meta.items() if k != SEAL}
    sums = {name: sha256_file(Path(directory) / name) for name in files}
    sums["meta"] = _digest(body)
    return {**body, SEAL: sums}


def seal_problem(meta: Any, directory: str | os.PathLike | None = None) -> str | None:
    """What is wrong with a sealed entry (its metadata ``meta`` and the files in ``directory``
    it names), or None when everything matches its checksum."""
    if not isinstance(meta, dict) or not isinstance(meta.get(SEAL), dict):
        return "it has no checksum"
    sums = meta[SEAL]
    body = {k: v for k, v in meta.items() if k != SEAL}
    try:
        if sums.get("meta") != _digest(body):
            return "its metadata does not match its checksum"
    except (TypeError, ValueError):
        return "its metadata is not plain JSON"
    for name, want in sums.items():
        if name == "meta":
            continue
        if directory is None or not isinstance(name, str) or "/" in name or name in ("", ".",
                                                                                     ".."):
            return f"it names a file {name!r} that is not its own"
        try:
            got = sha256_file(Path(directory) / name)
        except OSError as exc:
            return f"{name} cannot be read ({exc.strerror or exc})"
        if got != want:
            return f"{name} does not match its checksum"
    return None


def read_sealed(directory: str | os.PathLike, name: str) -> tuple[Any, str | None]:
    """(the sealed metadata file ``name`` of the entry ``directory``, what is wrong with the
    entry or None when it is intact)."""
    try:
        meta = read_json(Path(directory) / name)
    except (OSError, ValueError, RecursionError) as exc:  # missing, not JSON, nested too deep
        return None, f"{name} cannot be read ({one_line(exc, 80)})"
    return meta, seal_problem(meta, directory)


def damaged_name(path: Path) -> Path:
    """A fresh ``<name>.damaged-<stamp>-<random>`` beside ``path``: where a damaged file (or a
    copy of it) is kept."""
    return path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-"
                          f"{os.urandom(3).hex()}")


def set_aside(path: str | os.PathLike, why: str, what: str = "entry") -> Path | None:
    """Rename a damaged file or directory to ``<name>.damaged-<stamp>`` beside it (kept, never
    deleted) and warn once; returns the new path (None if another worker moved it first)."""
    path = Path(path)
    aside = damaged_name(path)
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise refused(exc, path, f"the {what} is damaged ({why}); move it away by hand") from exc
    warn(f"the {what} {path} is damaged ({why}); it was moved to {aside.name} and is "
         "computed again")
    return aside


def writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create ``path`` (and its parents) if missing and check that this process can create files
    in it; one error naming ``what`` (a label, ``"{out}"`` naming the parameter ``out``)
    otherwise: an empty path, a file, a symbolic link that points nowhere, a parent that is a
    file, no permission. Returns the path."""
    params = params_in(what)
    if not os.fspath(path).strip():
        raise ParamError(f"{what} is empty; give a directory", *params)
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ParamError(f"{what} {path} is a symbolic link to {os.readlink(path)}, which does "
                         "not exist; create its target or choose another directory", *params)
    if path.exists() and not path.is_dir():
        raise ParamError(f"{what} {path} is a file, not a directory; choose a directory",
                         *params)
    for parent in path.absolute().parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ParamError(f"{what} {path} cannot be created: {parent} is not a "
                                 "directory; choose another directory", *params)
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".l2bg-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ParamError(f"{what} {path} is not writable ({exc.strerror or exc}); choose a "
                         "directory you can write to", *params) from exc
    return path
