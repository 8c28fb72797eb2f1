"""Output directories: the one claim rule and the one publish protocol of every command that
writes a directory (``l2bg run``, ``l2bg rsa``, ``l2bg search``, :func:`l2bg.rsa.capture.capture`).

**Claim rule.** Before any work a command checks its destination and claims it; it never
replaces or deletes a file it did not write.

* The destination is checked first (:func:`l2bg.base.fileio.writable_dir`): an empty path, a file, a
  symbolic link that points nowhere, a parent that is a file or a directory this process cannot
  write to is one line, before anything is computed.
* Outputs written once (``run``, ``rsa``: :class:`OutDir`): a directory that already holds one of
  them is refused. Two commands of the same kind on one directory: the first holds its lock
  (``.l2bg-CMD.lock``, leased, :mod:`l2bg.base.locks`) and the second stops with one line.
* Outputs rewritten by every process of one job (a search and its workers, resumed or not:
  :func:`claim_shared`): the owner file (``search.json``) names the job; a directory whose owner
  file names another job, or that holds any of the outputs without one, is refused.
* A new directory (``capture``: :class:`NewDir`): the destination must not exist at all (a
  dangling symbolic link is named as such); the claim is a lock beside it
  (``.NAME.l2bg-capture.lock``), under which every temporary ``.NAME.*.tmp`` is a dead
  writer's and is swept.

**Publish protocol** (:class:`OutDir`). Outputs are written into a staging directory of the
command's own (``.l2bg-CMD.staging``) and given their names in the directory by hard links that
never replace a file (:func:`l2bg.base.fileio.link_new`), in order. The last output is the
**completion marker** (``results.json``, ``similarity.json``): once it is published the command
is finished, and its staging directory is retired (renamed to ``.l2bg-CMD.done``, then removed).
What a killed command left is judged under the next one's claim:

* a ``.done`` directory: finished; it is removed;
* a staging directory whose marker is published (the same file as in ``--out``): finished,
  killed before the retirement; it is retired, every output kept (so the next command reports
  "already holds results.json");
* a staging directory whose marker is not published: unfinished; the outputs it had published
  (the same files as in its staging directory) are removed with it.

A staging or done name that is not a plain directory (a symbolic link, a file) was not made by
l2bg: one line, nothing followed or removed. An interrupted command removes only what it wrote
and a directory it created.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from l2bg.base import crashpoints as faults
from l2bg.base.errors import L2BGError, ParamError, params_in
from l2bg.base.fileio import (
    link_new,
    read_json_or_fail,
    refused,
    sweep_stale_temps,
    writable_dir,
    write_json,
)

__all__ = ["NewDir", "OutDir", "claim_shared", "release_shared"]


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _hold(lock: Path, busy: str, params: tuple[str, ...] = ()) -> Any:
    """The entered exclusive, leased lock at ``lock`` (:mod:`l2bg.base.locks`), or one line:
    ``busy`` (``{owner}`` filled in) when a live process holds it; the refused write when the lock's
    content cannot be written (a full disk), removing the empty lock file that left behind (it
    was created exclusively, so it is this process's); ``params``: the parameters ``busy`` names
    as ``{param}``."""
    from l2bg.base.locks import FileLocks, LockHeld

    claim = FileLocks().hold(lock, wait=False)
    try:
        claim.__enter__()
    except LockHeld as exc:
        raise ParamError(busy.replace("{owner}", str(exc.owner)), *params) from None
    except OSError as exc:
        lock.unlink(missing_ok=True)
        raise refused(exc, lock) from exc
    return claim


def _plain_dir(path: Path, owner: Path) -> bool:
    """Whether ``path`` exists as a real directory (False: absent); one line when something
    else (a symbolic link, a file) has the name l2bg keeps for its own directory."""
    if not os.path.lexists(path):
        return False
    if path.is_symlink() or not path.is_dir():
        kind = "a symbolic link" if path.is_symlink() else "a file"
        raise L2BGError(f"{owner} holds {path.name}, which is {kind}, not a directory l2bg "
                        "made; move it away and run again")
    return True


class OutDir:
    """The output directory of one command whose ``outputs`` are written once (the last one is
    the completion marker): claimed on enter, released on exit; see the module docstring.
    ``staging`` is where the command writes; :meth:`publish` gives the outputs their names."""

    def __init__(self, path: str | os.PathLike, outputs: tuple[str, ...], command: str,
                 what: str = "{out}") -> None:
        if not os.fspath(path).strip():
            raise ParamError(f"{what} is empty; give a directory", *params_in(what))
        self.path = Path(path)
        self.outputs, self.marker, self.what = tuple(outputs), outputs[-1], what
        self.command = command
        self.lock = self.path / f".l2bg-{command}.lock"
        self.staging = self.path / f".l2bg-{command}.staging"
        self.done = self.path / f".l2bg-{command}.done"
        self._claim: Any = None
        self._created = self._staged = False
        self._published: list[Path] = []

    def __enter__(self) -> OutDir:
        self._created = not os.path.lexists(self.path)
        writable_dir(self.path, self.what)
        try:
            self._claim = _hold(self.lock, f"{self.what} {self.path} is in use by another "
                                f"l2bg {self.command} ({{owner}}); wait for it to finish or "
                                f"choose another {self.what}", params_in(self.what))
            self._recover()
            held = [n for n in self.outputs if os.path.lexists(self.path / n)]
            if held:
                raise ParamError(f"{self.what} {self.path} already holds {', '.join(held)}; "
                                 f"choose another {self.what} or move those files away",
                                 *params_in(self.what))
            try:
                self.staging.mkdir()
            except OSError as exc:
                raise refused(exc, self.staging) from exc
            self._staged = True
        except BaseException as exc:
            self.__exit__(type(exc), exc, None)
            raise
        return self

    def finished(self) -> bool:
        """Whether the completion marker in staging is published (the command finished)."""
        return _same(self.staging / self.marker, self.path / self.marker)

    def _recover(self) -> None:
        """What a killed command on this directory left (see the module docstring)."""
        if _plain_dir(self.done, self.path):
            shutil.rmtree(self.done, ignore_errors=True)
        if not _plain_dir(self.staging, self.path):
            return
        if self.finished():
            self._retire()
            return
        for name in self.outputs:
            out = self.path / name
            if _same(self.staging / name, out):
                out.unlink(missing_ok=True)
        shutil.rmtree(self.staging, ignore_errors=True)

    def _retire(self) -> None:
        """The command finished: rename the staging directory away (one atomic step, so that
        a partly removed staging directory is never judged), then remove it."""
        try:
            os.rename(self.staging, self.done)
        except OSError:
            return  # left for the next command's recovery, which judges it the same way
        faults.point("publish")
        shutil.rmtree(self.done, ignore_errors=True)

    def publish(self) -> None:
        """Give every output its name in the directory, the completion marker last, never
        replacing a file that appeared there; then retire the staging directory."""
        for name in self.outputs:
            try:
                link_new(self.staging / name, self.path / name)
            except FileExistsError:
                raise ParamError(f"{self.path / name} appeared while the command was working; "
                                 f"it was left as it is: choose another {self.what}",
                                 *params_in(self.what)) from None
            except OSError as exc:
                raise refused(exc, self.path / name) from exc
            self._published.append(self.path / name)
            faults.point("publish")
        self._retire()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if self._staged and self.staging.is_dir() and not self.staging.is_symlink():
                if exc_type is not None and not self.finished():
                    for out in self._published:  # interrupted: take back only what it wrote
                        if _same(self.staging / out.name, out):
                            out.unlink(missing_ok=True)
                    shutil.rmtree(self.staging, ignore_errors=True)
                else:
                    self._retire()
        finally:
            if self._claim is not None:
                self._claim.__exit__(None, None, None)
                self._claim = None
            if self._created and exc_type is not None:
                try:
                    self.path.rmdir()  # only if nothing else is in it
                except OSError:
                    pass


class NewDir:
    """The claim of a new directory ``path`` (written by :func:`l2bg.base.fileio.atomic_dir`):
    checked to be absent with a writable parent, locked beside it while the block runs, and
    the temporaries that dead writers of it left are swept."""

    def __init__(self, path: str | os.PathLike, what: str, fix: str) -> None:
        if not os.fspath(path).strip():
            raise L2BGError(f"{what} is empty; give a new directory")
        self.path, self.what, self.fix = Path(path), what, fix
        self.lock = self.path.parent / f".{self.path.name}.l2bg-capture.lock"
        self._claim: Any = None

    def check(self) -> None:
        """The destination does not exist (a dangling link is named) and its parent is a
        writable directory."""
        p = self.path
        if p.is_symlink() and not p.exists():
            raise L2BGError(f"{self.what} {p} is a symbolic link to {os.readlink(p)}, which "
                            f"does not exist; {self.fix}")
        if os.path.lexists(p):
            kind = "a directory" if p.is_dir() else "a file"
            raise L2BGError(f"{self.what} {p} already exists ({kind}); {self.fix}")
        writable_dir(p.parent, f"{self.what} {p}: its parent")

    def __enter__(self) -> NewDir:
        self.check()
        self._claim = _hold(self.lock, f"{self.what} {self.path} is being written by another "
                            "process ({owner}); wait for it or choose another directory")
        try:
            self.check()  # it may have appeared while we took the lock
        except BaseException:
            self.__exit__(None, None, None)
            raise
        sweep_stale_temps(self.path.parent, 0, (self.path.name,))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._claim is not None:
            self._claim.__exit__(None, None, None)
            self._claim = None


def claim_shared(path: str | os.PathLike, owner: str, meta: Mapping[str, Any],
                 keys: tuple[str, ...], outputs: tuple[str, ...], what: str = "{out}",
                 job: str = "search") -> tuple[int, int, bool] | None:
    """Claim ``path`` for a job whose outputs every process of the job rewrites (see the module
    docstring): the owner file ``owner`` names the job by ``meta[k]`` for ``k`` in ``keys``.
    Creates the owner file (holding ``meta``) when there is none, never replacing one that
    appears meanwhile; returns (device, inode, whether the directory was created too) when this
    call created it, for :func:`release_shared`, else None."""
    fresh = not os.path.lexists(path)
    path = writable_dir(path, what)
    target = path / owner
    while True:
        if os.path.lexists(target):
            found = read_json_or_fail(target, f"move it away or choose another {what}")
            theirs = found if isinstance(found, dict) else {}
            diffs = [f"{k} {theirs.get(k)!r}, not {meta.get(k)!r}" for k in keys
                     if theirs.get(k) != meta.get(k)]
            if diffs:
                raise ParamError(f"{what} {path} holds the outputs of another {job} ({owner}: "
                                 f"{'; '.join(diffs)}); choose another {what}", *params_in(what))
            return None
        held = [n for n in outputs if n != owner and os.path.lexists(path / n)]
        if held:
            raise ParamError(f"{what} {path} already holds {', '.join(held)}, which no {job} "
                             f"wrote there (no {owner}); choose another {what} or move them "
                             "away", *params_in(what))
        tmp = path / f".{owner}.claim-{os.getpid()}.tmp"
        write_json(tmp, dict(meta))
        try:
            link_new(tmp, target)
        except FileExistsError:
            continue  # another process of some job claimed it first: judge its claim
        except OSError as exc:
            raise refused(exc, target) from exc
        finally:
            tmp.unlink(missing_ok=True)
        st = target.stat()
        return st.st_dev, st.st_ino, fresh


def release_shared(path: str | os.PathLike, owner: str,
                   created: tuple[int, int, bool] | None) -> None:
    """Undo :func:`claim_shared` after the job failed before any work: remove the owner file
    if this call created it and it is still that file, and the directory if the claim created
    it and nothing else is in it."""
    if created is None:
        return
    target = Path(path) / owner
    try:
        st = target.stat()
        if (st.st_dev, st.st_ino) == created[:2]:
            target.unlink()
        if created[2]:
            Path(path).rmdir()
    except OSError:
        pass
