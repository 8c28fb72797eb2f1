"""Loader for the C++ extension ``l2bg._C``: the built module, else a JIT build, else None.

The result is cached; the first fallback emits one warning naming the cause and the fix.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from types import ModuleType

_CSRC = Path(__file__).resolve().parent.parent / "csrc"


@functools.cache
def load_extension() -> ModuleType | None:
    """The imported ``l2bg._C``, or a JIT build of csrc/, or None when neither works."""
    try:
        from l2bg import _C  # noqa: F401

        return _C
    except ImportError as exc:
        built_error = exc
    if os.environ.get("L2BG_NO_JIT") != "1" and _CSRC.is_dir():
        try:
            from torch.utils.cpp_extension import load

            sources = sorted(str(p) for p in _CSRC.glob("*.cpp"))
            return load(name="l2bg_C_jit", sources=sources, extra_cflags=["-O3", "-std=c++17"])
        except Exception as exc:  # noqa: BLE001 - any build failure means: use the reference
            jit_error = exc
    else:
        jit_error = "JIT build disabled (L2BG_NO_JIT=1) or csrc/ not found"
    warnings.warn(
        f"l2bg: native extension unavailable ({built_error}; JIT: {jit_error}); using the "
        "pure-PyTorch reference. Fix: pip install --no-build-isolation -e . with torch installed.",
        RuntimeWarning,
        stacklevel=2,
    )
    return None


def native_available() -> bool:
    return load_extension() is not None
