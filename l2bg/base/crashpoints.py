"""Fault injection for the fault-tolerance tests: a process that SIGKILLs itself at a chosen point.

Every place where a crash could leave something half done calls :func:`point` with its kind:

* ``write``: a file written by :func:`l2bg.base.fileio.atomic_write`, after its content is on disk
  and before it is renamed into place (what a crash mid-write leaves: a temporary file), and
  an output published by :func:`l2bg.base.fileio.link_new`;
* ``dir``: a directory built by :func:`l2bg.base.fileio.atomic_dir` (cache entries, memo nodes),
  after its files are written and before it is renamed into place;
* ``journal``: an append to a search's journal file; the fault writes half of the record first
  (a torn write, as a crash or a full disk leaves it);
* ``publish``: a step of the publish protocol of :mod:`l2bg.base.outdir` (an output given its name
  in ``--out``; the staging directory retired after the completion marker);
* ``train``: one optimizer step.

``L2BG_FAULT="KIND:K"`` (or ``any:K``, counting every kind) kills the process at the K-th point of
that kind; ``arm(kind, k)`` does the same from Python (a forked test process). Unarmed, a point
costs one comparison. ``counts()`` tells how many points of each kind this process passed, so a
test can choose K within a run's range.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

__all__ = ["ENV", "KINDS", "arm", "counts", "point"]

ENV = "L2BG_FAULT"
KINDS = ("write", "dir", "journal", "publish", "train")

_counts: dict[str, int] = {}
_armed: tuple[str, int] | None = None
_counting = False


def arm(kind: str | None, k: int = 1) -> None:
    """Kill this process at the ``k``-th point of ``kind`` (``'any'``: of every kind) from now
    on; ``kind=None`` disarms. Counting starts again at zero either way."""
    global _armed, _counting
    if kind is not None and kind != "any" and kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; use one of any, {', '.join(KINDS)}")
    if kind is not None and k < 1:
        raise ValueError(f"the fault must come at a point k >= 1, got {k}")
    _counts.clear()
    _armed = None if kind is None else (kind, int(k))
    _counting = True


def counts() -> dict[str, int]:
    """Points passed since the last :func:`arm`, by kind (``'any'``: all of them)."""
    return dict(_counts)


def point(kind: str, torn: Callable[[], None] | None = None) -> None:
    """A place where a crash may happen. When armed for it, call ``torn`` (which leaves a
    partial write behind) and SIGKILL this process."""
    if not _counting:
        return
    _counts[kind] = _counts.get(kind, 0) + 1
    _counts["any"] = _counts.get("any", 0) + 1
    if _armed is None:
        return
    want, k = _armed
    if _counts.get(want, 0) == k and (want == "any" or want == kind):
        if torn is not None:
            torn()
        os.kill(os.getpid(), signal.SIGKILL)


def _from_env() -> None:
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return
    kind, _, k = spec.partition(":")
    arm(kind, int(k or 1))


_from_env()
