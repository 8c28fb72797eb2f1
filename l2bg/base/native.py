"""Loader for the C++ extension ``l2bg._C``: the built module, else a JIT build, else None.

Nothing here runs at ``import l2bg``: the extension is loaded on first use. The result is cached;
the first fallback emits one warning naming the cause and the fix. With ``L2BG_REQUIRE_NATIVE=1``
(set in CI) only the built ``l2bg._C`` counts and its absence is an error, so a broken build
cannot hide behind the JIT build or the pure-PyTorch reference.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from pathlib import Path
from types import ModuleType

from l2bg.base.errors import L2BGError

_CSRC = Path(__file__).resolve().parent.parent / "csrc"
ABI_VERSION = 3  # must match kAbiVersion in csrc/extension.cpp
_OPS = ("probe", "plan", "run_plan", "count_discordant")
_status: dict[str, str] = {}


def _require_native() -> bool:
    return os.environ.get("L2BG_REQUIRE_NATIVE", "") not in ("", "0")


def _check(module: ModuleType, origin: str) -> ModuleType:
    """Raise ImportError unless ``module`` is current: same ABI, every op registered."""
    import torch

    abi = getattr(module, "ABI_VERSION", None)
    if abi != ABI_VERSION:
        raise ImportError(f"{origin} is stale (ABI {abi}, need {ABI_VERSION})")
    missing = [op for op in _OPS if not hasattr(torch.ops.l2bg, op)]
    if missing:
        raise ImportError(f"{origin} registers no op {', '.join(missing)}")
    return module


@functools.cache
def load_extension() -> ModuleType | None:
    """The imported ``l2bg._C``, or a JIT build of csrc/, or None when neither works."""
    jit_error: object = None
    import torch  # noqa: F401 - loads libc10/libtorch, which l2bg._C links against

    try:
        from l2bg import _C

        module = _check(_C, "the built l2bg._C")
        _status["native"] = f"built extension l2bg._C (ABI {ABI_VERSION})"
        return module
    except ImportError as exc:
        built_error = exc
        stale = "stale" in str(exc) or "registers no op" in str(exc)
    if _require_native():
        raise L2BGError(
            f"L2BG_REQUIRE_NATIVE=1 but the native backend is missing "
            f"({built_error}); build it with pip install --no-build-isolation -e ."
        )
    if stale:
        # A stale l2bg._C already owns the torch.ops.l2bg namespace: a JIT build cannot load.
        jit_error = "skipped: a stale l2bg._C is loaded"
    elif os.environ.get("L2BG_NO_JIT") == "1" or not _CSRC.is_dir():
        jit_error = "JIT build disabled (L2BG_NO_JIT=1) or csrc/ not found"
    else:
        try:
            from torch.utils.cpp_extension import load

            sources = sorted(str(p) for p in _CSRC.glob("*.cpp"))
            # No -std here: torch's load() passes the C++ standard its headers need.
            module = _check(
                load(name="l2bg_C_jit", sources=sources, extra_cflags=["-O3"]),
                "the JIT build",
            )
            _status["native"] = "JIT build of csrc/ (the built l2bg._C is missing)"
            return module
        except Exception as exc:  # noqa: BLE001 - any build failure means: use the reference
            jit_error = exc
    _status["native"] = f"unavailable: {built_error}; JIT: {jit_error}"
    warnings.warn(
        f"l2bg: native extension unavailable ({built_error}; JIT: {jit_error}); using the "
        "pure-PyTorch reference. Fix: pip install --no-build-isolation -e . with torch installed.",
        RuntimeWarning,
        stacklevel=2,
    )
    return None


def native_available() -> bool:
    return load_extension() is not None


def native_status() -> tuple[bool, str]:
    """(whether the native executor is active, why)."""
    ok = load_extension() is not None
    return ok, _status.get("native", "not loaded")


def _triton_status() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install l2bg[triton])"
    import torch

    if torch.cuda.is_available():
        return True, "triton installed; kernels compile for CUDA"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "triton installed; no CUDA: kernels run in the interpreter"
    return False, "triton installed but no CUDA device (set TRITON_INTERPRET=1 to interpret)"


def backends() -> dict[str, object]:
    """What is active: the executor forward_all uses by default (native C++ or the pure-PyTorch
    reference) and why, and whether Triton kernels can run. Loads the extension if needed."""
    native, why = native_status()
    triton, triton_why = _triton_status()
    return {
        "executor": "native" if native else "reference",
        "native": native,
        "native_reason": why,
        "triton": triton,
        "triton_reason": triton_why,
    }
