"""``patch()`` / ``unpatch()``: point every binding of rsatoolbox's functions at the drop-in.

rsatoolbox's modules hold their own references (``from rsatoolbox.rdm import compare`` in its
inference and model-fitting modules, ``from rsatoolbox.rdm.calc import calc_rdm`` in the
searchlight, the package re-exports), so rebinding one name is not enough: ``patch`` imports the
modules listed in ``BINDINGS`` (rsatoolbox 0.3.2) and rebinds every attribute of every loaded
``rsatoolbox`` module that *is* one of the four functions; ``unpatch`` puts back exactly the
objects it replaced, including bindings made while patched by modules imported later.

Names imported before ``patch()`` are covered too: a script that ran ``from rsatoolbox.rdm import
calc_rdm, compare`` holds rsatoolbox's objects in its own globals (``__main__``), so ``patch``
rebinds every global of every loaded module (l2bg's own excepted) that *is* one of rsatoolbox's
originals, and ``unpatch`` restores exactly those (a name that no longer holds the drop-in, because
the module rebound it meanwhile, is left alone). Outside rsatoolbox nothing else is touched: a
module that imported the drop-in itself keeps it after ``unpatch``. A reference that cannot be
rebound (a module whose namespace is read-only) stays rsatoolbox's; one warning names it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from typing import Any

from l2bg.base.errors import warn
from l2bg.rsa.rsatoolbox.calc import calc_rdm
from l2bg.rsa.rsatoolbox.compare import compare
from l2bg.rsa.rsatoolbox.crossval import bootstrap_crossval, cv_noise_ceiling
from l2bg.rsa.rsatoolbox.dual import eval_dual_bootstrap
from l2bg.rsa.rsatoolbox.inference import (
    boot_noise_ceiling,
    eval_bootstrap,
    eval_bootstrap_pattern,
    eval_bootstrap_rdm,
    eval_fixed,
)
from l2bg.rsa.rsatoolbox.noise import prec_from_measurements, prec_from_residuals
from l2bg.rsa.rsatoolbox.options import configure, original, require
from l2bg.rsa.rsatoolbox.searchlight import evaluate_models_searchlight

__all__ = ["BINDINGS", "is_patched", "patch", "unpatch"]

DROP_INS = {
    "calc_rdm": calc_rdm,
    "compare": compare,
    "prec_from_measurements": prec_from_measurements,
    "prec_from_residuals": prec_from_residuals,
    "eval_fixed": eval_fixed,
    "eval_bootstrap": eval_bootstrap,
    "eval_bootstrap_pattern": eval_bootstrap_pattern,
    "eval_bootstrap_rdm": eval_bootstrap_rdm,
    "boot_noise_ceiling": boot_noise_ceiling,
    "eval_dual_bootstrap": eval_dual_bootstrap,
    "bootstrap_crossval": bootstrap_crossval,
    "cv_noise_ceiling": cv_noise_ceiling,
    "evaluate_models_searchlight": evaluate_models_searchlight,
}

BINDINGS = (
    ("rsatoolbox.rdm", "calc_rdm"),
    ("rsatoolbox.rdm", "compare"),
    ("rsatoolbox.rdm.calc", "calc_rdm"),
    ("rsatoolbox.rdm.compare", "compare"),
    ("rsatoolbox.data", "prec_from_measurements"),
    ("rsatoolbox.data", "prec_from_residuals"),
    ("rsatoolbox.data.noise", "prec_from_measurements"),
    ("rsatoolbox.data.noise", "prec_from_residuals"),
    ("rsatoolbox.inference.evaluate", "compare"),
    ("rsatoolbox.inference.noise_ceiling", "compare"),
    ("rsatoolbox.model.fitter", "compare"),
    ("rsatoolbox.util.searchlight", "calc_rdm"),
    *(("rsatoolbox.inference", name) for name in ("eval_fixed", "eval_bootstrap",
      "eval_bootstrap_pattern", "eval_bootstrap_rdm", "boot_noise_ceiling")),
    *(("rsatoolbox.inference.evaluate", name) for name in ("eval_fixed", "eval_bootstrap",
      "eval_bootstrap_pattern", "eval_bootstrap_rdm", "boot_noise_ceiling")),
    ("rsatoolbox.inference.noise_ceiling", "boot_noise_ceiling"),
    ("rsatoolbox.inference", "eval_dual_bootstrap"),
    ("rsatoolbox.inference.evaluate", "eval_dual_bootstrap"),
    *((module, name) for module in ("rsatoolbox.inference", "rsatoolbox.inference.evaluate")
      for name in ("bootstrap_crossval", "cv_noise_ceiling")),
    ("rsatoolbox.inference.noise_ceiling", "cv_noise_ceiling"),
    ("rsatoolbox.util.searchlight", "evaluate_models_searchlight"),
)
"""(module, name) of every binding of the drop-in's functions in rsatoolbox 0.3.2."""

_SAVED: list[tuple[Any, str, Any, Any]] = []  # (module, attribute, its object, the drop-in)
_STATE = {"options": None}
_WARNED: set[str] = set()  # references that could not be rebound, named once per process


def _is_rsatoolbox(name: str) -> bool:
    return name == "rsatoolbox" or name.startswith("rsatoolbox.")


def _modules(everywhere: bool = False) -> Iterator[tuple[str, Any]]:
    """(name, module) of the loaded rsatoolbox modules, or of every loaded module but l2bg's
    own (which hold rsatoolbox's originals on purpose: the drop-in falls through to them)."""
    for name, module in list(sys.modules.items()):
        if module is None or name == "l2bg" or name.startswith("l2bg."):
            continue
        if everywhere or _is_rsatoolbox(name):
            yield name, module


def _globals(module: Any) -> list[tuple[str, Any]]:
    """A module's globals, or none for an entry of sys.modules that has no namespace."""
    try:
        return list(vars(module).items())
    except (TypeError, AttributeError):
        return []


def is_patched() -> bool:
    """Whether ``patch()`` is in effect."""
    return bool(_SAVED)


class _Patch:
    """What ``patch()`` returns: usable as a context manager that unpatches on exit."""

    def __init__(self, owner: bool) -> None:
        self.owner = owner

    def __enter__(self) -> _Patch:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owner:
            unpatch()


def patch(*, dtype: object = None, device: str | None = None) -> _Patch:
    """Run rsatoolbox's ``calc_rdm``, ``compare``, ``prec_from_measurements`` and
    ``prec_from_residuals`` on l2bg everywhere rsatoolbox refers to them, and wherever a loaded
    module imported them before (its globals; module docstring); ``dtype`` and ``device`` set
    the drop-in's defaults while patched. Also a context manager::

        with l2bg.rsa.rsatoolbox.patch():
            ...  # rsatoolbox code, computed by l2bg
    """
    require()
    for module, _ in BINDINGS:
        try:
            importlib.import_module(module)
        except ImportError:  # an optional dependency of that rsatoolbox module is missing
            continue
    owner = not _SAVED
    if owner:
        _STATE["options"] = configure(dtype=dtype, device=device)
    else:
        configure(dtype=dtype, device=device)
    originals = {id(original(name)): name for name in DROP_INS}
    stuck = []
    for where, module in _modules(everywhere=True):
        for attr, value in _globals(module):
            name = originals.get(id(value))
            if name is None or value is not original(name):
                continue
            try:
                setattr(module, attr, DROP_INS[name])
            except (AttributeError, TypeError):
                stuck.append(f"{where}.{attr}")
                continue
            _SAVED.append((module, attr, value, DROP_INS[name]))
    new = [ref for ref in stuck if ref not in _WARNED]
    if new:
        _WARNED.update(new)
        warn(f"rsatoolbox patch: cannot rebind {', '.join(new)} (its module is read-only), so "
             "it still runs rsatoolbox's own function; import the drop-in there instead (from "
             "l2bg.rsa.rsatoolbox import ...)")
    return _Patch(owner)


def unpatch() -> None:
    """Undo ``patch()``: every attribute it rebound (and still holding the drop-in) holds
    rsatoolbox's own object again."""
    drop_ins = {id(f): name for name, f in DROP_INS.items()}
    for module, attr, value, drop_in in reversed(_SAVED):
        if dict(_globals(module)).get(attr) is drop_in:  # else rebound meanwhile: left alone
            setattr(module, attr, value)
    _SAVED.clear()
    for _, module in _modules():  # bound while patched, e.g. by a module imported meanwhile
        for attr, value in _globals(module):
            name = drop_ins.get(id(value))
            if name is not None and value is DROP_INS[name]:
                setattr(module, attr, original(name))
    if _STATE["options"] is not None:
        previous = _STATE["options"]
        configure(dtype=previous.dtype, device=previous.device)
        _STATE["options"] = None
