"""Upper bounds on sizes read from the command line and from files, checked before anything is
allocated (docs/design.md, "Bounds on input sizes"). Each is generous for every real use (the
paper's benchmarks stay 10x to 1000x below it) and low enough that a typo, a hostile file or a
decompression bomb ends in one line instead of exhausting memory.

One place for the limits and for :func:`check_size`, the one-line error that names the
parameter, the value and the limit.
"""

from __future__ import annotations

import os

__all__ = ["MAX_DATA_FILE_BYTES", "MAX_PARAMETERS", "MAX_TASKS", "check_size", "memory_bytes"]

MAX_TASKS = 1000
"""``--tasks`` / ``num_tasks``: every task of pmnist and rotated-mnist holds its own copy of the
data, so the count multiplies memory (the paper uses 10)."""

MAX_DATA_FILE_BYTES = 2**30
"""A data file (an MNIST IDX file, inflated when gzip-compressed; a CIFAR-100 pickle) may hold at
most 1 GiB: MNIST's largest file is 47 MB, CIFAR-100's 161 MB. The limit is checked against the
IDX header before anything is inflated, and against the file size before anything is read."""

MAX_PARAMETERS = 2**30
"""A template's task-net may have at most 2^30 parameters (4 GiB of float32 weights; the paper's
nets have 0.5 M (mlp) and 6.7 M (convnet))."""


def check_size(name: str, value: int, limit: int, *, unit: str = "", fix: str = "",
               params: tuple[str, ...] = ()) -> int:
    """``value`` when it is at most ``limit``; else one :class:`L2BGError` naming ``name``, the
    value and the limit (``unit`` after both numbers, ``fix`` appended); ``params``: the
    parameters ``name`` and ``fix`` name as ``{param}`` (a :class:`ParamError`)."""
    from l2bg.base.errors import ParamError

    if value > limit:
        unit = f" {unit}" if unit else ""
        raise ParamError(f"{name} is {value:,}{unit}, above the limit of {limit:,}{unit}"
                         f"{'; ' + fix if fix else ''}", *params)
    return value


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None
