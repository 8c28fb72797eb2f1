"""Settings of the rsatoolbox drop-in, its lazy import of rsatoolbox, and rsatoolbox's own
(unpatched) functions that the drop-in falls through to."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import numpy as np
import torch

from l2bg.base.errors import L2BGError

__all__ = [
    "DEFINED_IN",
    "OPTIONS",
    "Options",
    "configure",
    "on_blas_threads",
    "original",
    "require",
    "resolve",
]

DEFINED_IN = {
    "calc_rdm": "rsatoolbox.rdm.calc",
    "compare": "rsatoolbox.rdm.compare",
    "prec_from_measurements": "rsatoolbox.data.noise",
    "prec_from_residuals": "rsatoolbox.data.noise",
    "eval_fixed": "rsatoolbox.inference.evaluate",
    "eval_bootstrap": "rsatoolbox.inference.evaluate",
    "eval_bootstrap_pattern": "rsatoolbox.inference.evaluate",
    "eval_bootstrap_rdm": "rsatoolbox.inference.evaluate",
    "boot_noise_ceiling": "rsatoolbox.inference.noise_ceiling",
    "eval_dual_bootstrap": "rsatoolbox.inference.evaluate",
    "bootstrap_crossval": "rsatoolbox.inference.evaluate",
    "cv_noise_ceiling": "rsatoolbox.inference.noise_ceiling",
    "evaluate_models_searchlight": "rsatoolbox.util.searchlight",
}
"""The module that defines each function the drop-in replaces (rsatoolbox 0.3.2)."""

_DTYPES = {"float64": torch.float64, "float32": torch.float32}

FAST_INPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
"""The measurement dtypes the fast paths take. rsatoolbox computes in the input's own dtype
where l2bg computes in float: a bool matmul, integers that wrap around, float16 that overflows.
A drop-in never changes a number silently, so every other dtype goes to rsatoolbox."""


def fast_input(a: Any) -> bool:
    """Whether ``a`` is a finite float32/float64 numpy array of at least one channel (2-D
    (N, p) or more, p >= 1): what the fast paths take; anything else goes to rsatoolbox."""
    return (isinstance(a, np.ndarray) and a.ndim >= 2 and a.shape[1] > 0
            and a.dtype in FAST_INPUT_DTYPES and _finite(a))


def _finite(a: np.ndarray) -> bool:
    """No NaN or inf in a: a sum is finite then (one pass, no temporary); only a sum that
    overflows needs the elementwise test."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(a.sum())) or bool(np.isfinite(a).all())


@dataclass(frozen=True)
class Options:
    """``dtype``: arithmetic and rounding of the drop-in (float64 by default, float32 opt-in);
    ``device``: ``'auto'`` (CUDA when available, else the CPU), ``'cpu'``, ``'cuda'``, ..."""

    dtype: torch.dtype = torch.float64
    device: str = "auto"


OPTIONS = [Options()]  # one mutable slot: configure() swaps the frozen Options inside
_ORIGINALS: dict[str, Any] = {}


def _dtype(value: object) -> torch.dtype:
    if isinstance(value, torch.dtype) and value in _DTYPES.values():
        return value
    if isinstance(value, str) and value in _DTYPES:
        return _DTYPES[value]
    raise L2BGError(f"dtype {value!r} is not supported by the rsatoolbox drop-in; use "
                    "'float64' (default) or 'float32'")


def configure(*, dtype: object = None, device: str | None = None) -> Options:
    """Set the drop-in's defaults (None keeps a setting); returns the previous ones."""
    before = OPTIONS[0]
    new = before
    if dtype is not None:
        new = replace(new, dtype=_dtype(dtype))
    if device is not None:
        torch.device("cpu" if device == "auto" else device)  # validates the name
        new = replace(new, device=device)
    OPTIONS[0] = new
    return before


def resolve(dtype: object = None, device: str | None = None) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of one call: its own arguments, else the configured defaults."""
    opts = OPTIONS[0]
    dt = opts.dtype if dtype is None else _dtype(dtype)
    dev = opts.device if device is None else device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    return dt, torch.device(dev)


def require() -> ModuleType:
    """rsatoolbox, imported now (its rdm and data subpackages included); a one-line error when
    it is not installed. Records rsatoolbox's own functions on first use."""
    try:
        rsa = importlib.import_module("rsatoolbox")
        for name in ("rsatoolbox.rdm", "rsatoolbox.rdm.combine", "rsatoolbox.data",
                     *DEFINED_IN.values()):
            importlib.import_module(name)
    except ImportError as exc:
        raise L2BGError(f"the rsatoolbox drop-in needs rsatoolbox ({exc}); pip install "
                        "rsatoolbox") from None
    if not _ORIGINALS:
        import sys

        for name, module in DEFINED_IN.items():
            fn = getattr(sys.modules[module], name)
            _ORIGINALS[name] = getattr(fn, "__l2bg_original__", fn)
    return rsa


def original(name: str) -> Any:
    """rsatoolbox's own ``name`` (never the drop-in, patched or not)."""
    require()
    return _ORIGINALS[name]


def on_blas_threads(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a drop-in function that computes on the CPU with one torch thread, so that numpy's
    BLAS has the cores (:func:`l2bg.rsa.blas.one_torch_thread`)."""
    from l2bg.rsa.blas import one_torch_thread

    @functools.wraps(fn)
    def wrapper(*args: Any, device: str | None = None, **kwargs: Any) -> Any:
        with one_torch_thread(resolve(None, device)[1]):
            return fn(*args, device=device, **kwargs)

    return wrapper
