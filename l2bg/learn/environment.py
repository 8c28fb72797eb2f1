"""The machine and software a run ran on: the ``environment`` block of every run record.

Runs are bit-identical only on the same machine with the same versions and thread counts (README,
"Reproducibility"); this block says which of those a results.json had, so that two records that
disagree can be told apart by their environments. Collected once per process (what the thread
counts are is read at every call: a caller may change them between runs).
"""

from __future__ import annotations

import functools
import platform
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["Environment"]


@dataclass(frozen=True)
class Environment:
    """torch, numpy, l2bg and Python versions; the device and its name; the CPU model and the
    instruction set torch's kernels use on it; the BLAS of torch and of numpy; and torch's
    intra-op and inter-op thread counts."""

    torch: str
    numpy: str
    l2bg: str
    python: str
    device: str
    device_name: str
    cpu: str
    cpu_capability: str | None
    blas: Mapping[str, str | None]
    torch_threads: int
    interop_threads: int

    @classmethod
    def current(cls, device: torch.device | str = "cpu") -> Environment:
        """The environment of this process for a run on ``device``."""
        import numpy

        from l2bg.base.version import __version__

        device = torch.device(device)
        return cls(torch=torch.__version__, numpy=numpy.__version__, l2bg=__version__,
                   python=platform.python_version(), device=str(device),
                   device_name=_device_name(device), cpu=_cpu_model(),
                   cpu_capability=_cpu_capability(),
                   blas={"torch": _torch_blas(), "numpy": _numpy_blas()},
                   torch_threads=torch.get_num_threads(),
                   interop_threads=torch.get_num_interop_threads())

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["blas"] = dict(self.blas)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Environment:
        """Read back; a key this version does not know is dropped, one it lacks is null."""
        names = cls.__dataclass_fields__
        return cls(**{k: obj.get(k) for k in names})


def _device_name(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return _cpu_model() if device.type == "cpu" else device.type


@functools.cache
def _cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what the platform says)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.cache
def _cpu_capability() -> str | None:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # pragma: no cover - older torch
        return None


@functools.cache
def _torch_blas() -> str | None:
    """torch's BLAS as its build configuration names it (with the MKL version when it is MKL)."""
    try:
        shown = torch.__config__.show()
    except Exception:  # pragma: no cover - a build without the config
        return None
    m = re.search(r"BLAS_INFO=([^,\s]+)", shown)
    name = m.group(1) if m else None
    mkl = re.search(r"Math Kernel Library Version ([^\s-]+)", shown)
    if name == "mkl" and mkl:
        return f"mkl {mkl.group(1)}"
    return name


@functools.cache
def _numpy_blas() -> str | None:
    """numpy's BLAS (name and version) from its build configuration."""
    import numpy

    try:
        blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except Exception:  # pragma: no cover - numpy < 1.25
        return None
    return " ".join(str(blas[k]) for k in ("name", "version") if blas.get(k)) or None
