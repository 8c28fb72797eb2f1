"""Capture activations of named modules of any ``nn.Module`` straight to disk.

``capture(model, loader, ["features.3", "classifier.1"], "acts/")`` registers a forward hook on
each named module, runs the model on every batch of the loader (no gradients, the model's own
train/eval mode), and appends each module's output to ``acts/<module>.npy``; ``manifest.json``
records the layer order, names, files and per-sample shapes. The directory is built under a
temporary name and renamed into place when every batch is done
(:func:`l2bg.base.fileio.atomic_dir`), so a reader never sees half a capture. The destination is
claimed first (:class:`l2bg.base.outdir.NewDir`): it must not exist (a file, a directory or a
dangling symbolic link there is one line before any batch runs) and its parent must be writable;
under the claim, the temporaries that a killed capture of the same destination left
(``.NAME.*.tmp``) are swept. The result is the on-disk source that :mod:`l2bg.rsa.ondisk`, layer x
layer RSA and ``l2bg rsa`` read.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from l2bg.base.errors import L2BGError
from l2bg.rsa.ondisk import MANIFEST, NpyWriter, Source, open_source, safe_name
from l2bg.rsa.stream import progress_bar

__all__ = ["capture", "default_inputs"]


def default_inputs(batch: Any) -> Any:
    """The model input of a batch: the batch itself (a tensor), or its first element (an
    (inputs, targets) pair)."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, list | tuple) and batch:
        return batch[0]
    raise L2BGError(f"cannot find the model input in a batch of type {type(batch).__name__}; "
                    "pass inputs=lambda batch: ... to capture()")


def _output_tensor(name: str, out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, list | tuple):
        for item in out:
            if isinstance(item, Tensor):
                return item
    raise L2BGError(f"module {name!r} returned {type(out).__name__}, not a tensor; capture a "
                    "module whose output is a tensor")


def _close(writer: NpyWriter) -> OSError | None:
    """Close one writer (every writer is closed, whatever the others did)."""
    try:
        writer.close()
    except OSError as exc:
        return exc
    return None


def capture(model: nn.Module, loader: Iterable, layers: Sequence[str], out: str | Path, *,
            inputs: Callable[[Any], Any] = default_inputs, device: str | torch.device | None = None,
            dtype: np.dtype | str = np.float32, progress: bool | None = None) -> Source:
    """Write the outputs of ``layers`` (names from ``model.named_modules()``) for every batch
    of ``loader`` to the new directory ``out``; returns it opened as a source."""
    from l2bg.base.fileio import atomic_dir, write_json
    from l2bg.base.outdir import NewDir

    claim = NewDir(out, "capture destination", "capture into a new directory (nothing is "
                   "overwritten)")
    claim.check()  # before the model is looked at
    out = Path(out)
    if isinstance(layers, str) or not layers:
        raise L2BGError("capture: layers must be a non-empty list of module names")
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        known = ", ".join(n for n in modules if n) or "none"
        raise L2BGError(f"module {missing[0]!r} is not in the model (named modules: {known})")
    if len(set(layers)) != len(layers):
        raise L2BGError("capture: a module is named twice in layers")
    files: dict[str, str] = {}
    for name in layers:
        stem = safe_name(name)
        while f"{stem}.npy" in files.values():
            stem += "_"
        files[name] = f"{stem}.npy"
    dtype = np.dtype(dtype)
    writers: dict[str, NpyWriter] = {}
    seen: dict[str, Tensor] = {}

    def hook(name: str):
        def fn(_module, _args, output):
            seen[name] = _output_tensor(name, output).detach()
        return fn

    handles = [modules[name].register_forward_hook(hook(name)) for name in layers]
    total = len(loader) if hasattr(loader, "__len__") else None
    rows = 0
    try:
        with claim, atomic_dir(out) as tmp, torch.no_grad(), progress_bar(
                total, "capture", progress, unit="batch") as bar:
            try:
                for batch in loader:
                    x = inputs(batch)
                    if device is not None:
                        x = x.to(device) if isinstance(x, Tensor) else x
                    seen.clear()
                    model(x)
                    for name in layers:
                        if name not in seen:
                            raise L2BGError(f"module {name!r} did not run in the forward pass; "
                                            "capture modules the model calls")
                        a = seen[name].to("cpu").numpy()
                        if name not in writers:
                            writers[name] = NpyWriter(tmp / files[name], a.shape[1:], dtype)
                        writers[name].append(a)
                    rows += len(seen[layers[0]])
                    bar.update(1)
            finally:
                failed = [e for e in map(_close, writers.values()) if e is not None]
                if failed and sys.exc_info()[0] is None:
                    raise failed[0]
            if rows == 0:
                raise L2BGError("capture: the loader yielded no batches")
            write_json(tmp / MANIFEST, {
                "format": "l2bg-activations", "version": 1, "n": rows,
                "layers": [{"name": name, "file": files[name], "shape": list(writers[name].shape),
                            "dtype": str(dtype)} for name in layers]})
    finally:
        for h in handles:
            h.remove()
    return open_source(out)
