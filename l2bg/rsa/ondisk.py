"""Activations on disk: per-layer arrays (n samples x features) read in slices of features.

A *source* is one network's activations: a directory of per-layer files (``<layer>.npy``,
``.safetensors``, ``.h5``/``.hdf5``; ``manifest.json`` written by :mod:`l2bg.rsa.capture` gives
the layer order and names), one ``.safetensors`` or HDF5 file holding one tensor per layer, or
one ``.npy`` file (one layer, named by the file). ``.npy`` files are memory-mapped; safetensors
and HDF5 (where ``h5py`` is installed) are read slice by slice, so only one slice of features is
in memory at a time. A layer of any per-sample shape is read as (n, d) with d the product of
its per-sample dims; slices follow the second dimension.

``NpyWriter`` appends rows to a ``.npy`` file whose length is not known in advance (the header
is rewritten in place when it is closed); the capture writes through it inside an atomic
directory (:func:`l2bg.base.fileio.atomic_dir`).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from l2bg.base.errors import L2BGError, ParamError

__all__ = ["MANIFEST", "Layer", "NpyWriter", "Source", "open_source", "safe_name"]

MANIFEST = "manifest.json"
_SUFFIXES = (".npy", ".safetensors", ".h5", ".hdf5")


@dataclass
class Layer:
    """One layer's activations on disk: ``n`` samples of per-sample ``shape`` (``d`` features);
    ``read(rows, start, stop)`` returns the features [start, stop) (rounded out to whole
    units of the second dimension) of the given rows (None: all; else increasing indices),
    float32 or float64."""

    name: str
    path: Path
    n: int
    shape: tuple[int, ...]
    dtype: str
    reader: Callable[[np.ndarray | None, int, int], np.ndarray] = field(repr=False)

    @property
    def d(self) -> int:
        return math.prod(self.shape)

    def read(self, rows: np.ndarray | None, start: int, stop: int) -> Tensor:
        try:
            block = self.reader(rows, start, stop)
        except (OSError, ValueError, KeyError) as exc:
            raise L2BGError(f"cannot read layer {self.name!r} from {self.path} ({exc}); check "
                            "the file") from None
        a = block.reshape(block.shape[0], -1)
        a = np.require(a, np.float64 if a.dtype == np.float64 else np.float32, ["C", "W"])
        return torch.from_numpy(a)


@dataclass
class Source:
    """One network's layers, in order."""

    path: Path
    layers: dict[str, Layer]

    @property
    def n(self) -> int:
        counts = {layer.n for layer in self.layers.values()}
        if len(counts) > 1:
            detail = ", ".join(f"{k}: n={v.n}" for k, v in self.layers.items())
            raise L2BGError(f"{self.path}: layers have different numbers of samples ({detail}); "
                            "capture every layer on the same inputs")
        return counts.pop() if counts else 0

    def select(self, names: list[str] | None) -> list[Layer]:
        if names is None:
            return list(self.layers.values())
        missing = [name for name in names if name not in self.layers]
        if missing:
            raise ParamError(f"layer {missing[0]!r} is not in {self.path} (it has: "
                             f"{', '.join(self.layers) or 'no layers'}); check {{layers}}",
                             "layers")
        return [self.layers[name] for name in names]


def safe_name(name: str) -> str:
    """A file name for a module name: letters, digits, '.', '_', '-' kept, others '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def _span(shape: tuple[int, ...], start: int, stop: int) -> tuple[int, int]:
    """Units [a, b) of the second dimension covering flat features [start, stop)."""
    inner = math.prod(shape[1:]) if len(shape) > 1 else 1
    return start // inner, -(-stop // inner)


def _npy_layer(path: Path, name: str) -> Layer:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise L2BGError(f"cannot read {path} as .npy ({exc}); check the file") from None
    if arr.ndim < 2 or arr.dtype.kind not in "fiu":
        raise L2BGError(f"{path}: expected a numeric array (n, ...) with features per sample, got "
                        f"shape {arr.shape} {arr.dtype}")
    flat = arr.reshape(arr.shape[0], -1) if arr.flags.c_contiguous else None

    def read(rows, start, stop):
        if flat is not None:
            return flat[:, start:stop] if rows is None else flat[rows, start:stop]
        a, b = _span(arr.shape[1:], start, stop)
        return arr[:, a:b] if rows is None else arr[rows, a:b]

    return Layer(name, path, arr.shape[0], tuple(arr.shape[1:]), str(arr.dtype), read)


def _safetensors_layers(path: Path) -> dict[str, Layer]:
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt")
        keys = list(handle.keys())
    except Exception as exc:  # noqa: BLE001 - any parse failure is an unreadable file
        raise L2BGError(f"cannot read {path} as safetensors ({exc}); check the file") from None
    layers = {}
    for key in keys:
        view = handle.get_slice(key)
        shape = tuple(view.get_shape())
        if len(shape) < 2:
            continue

        def read(rows, start, stop, key=key, shape=shape):
            a, b = _span(shape[1:], start, stop)
            block = handle.get_slice(key)[:, a:b]
            if block.dtype != torch.float64:
                block = block.to(torch.float32)
            return (block if rows is None else block[torch.from_numpy(rows)]).numpy()

        layers[key] = Layer(key, path, shape[0], shape[1:], str(view.get_dtype()).lower(), read)
    return layers


def _hdf5_layers(path: Path) -> dict[str, Layer]:
    try:
        import h5py
    except ImportError:
        raise L2BGError(f"{path} is HDF5, which needs h5py; pip install h5py") from None
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise L2BGError(f"cannot read {path} as HDF5 ({exc}); check the file") from None
    layers = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.ndim >= 2 and obj.dtype.kind in "fiu":
            def read(rows, start, stop, ds=obj):
                a, b = _span(ds.shape[1:], start, stop)
                return ds[:, a:b] if rows is None else ds[rows, a:b]  # rows increasing

            layers[name] = Layer(name, path, obj.shape[0], tuple(obj.shape[1:]), str(obj.dtype),
                                 read)

    handle.visititems(visit)
    return layers


def _file_layers(path: Path) -> dict[str, Layer]:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return {path.stem: _npy_layer(path, path.stem)}
    if suffix == ".safetensors":
        return _safetensors_layers(path)
    if suffix in (".h5", ".hdf5"):
        return _hdf5_layers(path)
    raise L2BGError(f"{path}: unknown activation file type; use .npy, .safetensors, .h5/.hdf5 "
                    "or a directory of them")


def _inside(root: Path, rel: str, manifest: Path) -> Path:
    """The file a manifest names, which must lie inside the manifest's directory once every
    symlink is resolved: a manifest never reads ``../``, absolute paths or links leading out."""
    file = root / rel
    try:
        inside = file.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise L2BGError(f"{manifest} names {rel!r}, which cannot be resolved ({exc})") from None
    if not inside:
        raise L2BGError(f"{manifest} names {rel!r}, which lies outside {root}; a manifest may "
                        "only name files inside its own directory: copy the file in, or pass "
                        "it as a source of its own")
    return file


def open_source(path: str | Path) -> Source:
    """The layers of a directory or file of activations (see the module docstring)."""
    from l2bg.base.fileio import read_json_or_fail

    path = Path(path)
    if not path.exists():
        raise L2BGError(f"{path} does not exist; pass a directory or file of activations")
    if path.is_file():
        return Source(path, _file_layers(path))
    manifest = path / MANIFEST
    layers: dict[str, Layer] = {}
    if manifest.is_file():
        entries = read_json_or_fail(manifest, "check or remove it")
        try:
            files = [(e["name"], e["file"]) for e in entries["layers"]]
            if not all(isinstance(v, str) for entry in files for v in entry):
                raise TypeError("layer names and files must be strings")
        except (KeyError, TypeError) as exc:
            raise L2BGError(f"cannot read {manifest} ({exc}); check or remove it") from None
        for name, rel in files:
            file = _inside(path, rel, manifest)
            if not file.is_file():
                raise L2BGError(f"{manifest} names {rel}, which is missing; re-capture")
            found = _file_layers(file)
            if not found:
                raise L2BGError(f"{manifest} names {rel} for layer {name!r}, but it holds no "
                                "numeric array of shape (n, features...); check the file")
            layers[name] = next(iter(found.values()))
            layers[name].name = name
        return Source(path, layers)
    for file in sorted(p for p in path.iterdir() if p.suffix.lower() in _SUFFIXES):
        found = _file_layers(file)
        for name, layer in found.items():
            layer.name = file.stem if len(found) == 1 else f"{file.stem}/{name}"
            layers[layer.name] = layer
    if not layers:
        raise L2BGError(f"{path} holds no activation files (.npy, .safetensors, .h5); capture "
                        "activations first (l2bg.rsa.capture)")
    return Source(path, layers)


class NpyWriter:
    """Appends rows (k, *shape) to a .npy file; the header (fixed 128 bytes) gets the final row
    count on ``close()``."""

    HEADER = 128

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.shape, self.dtype, self.rows = path, tuple(shape), np.dtype(dtype), 0
        self.file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.file.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        text = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                     "shape": (rows, *self.shape)})
        body = text.encode("latin1")
        pad = self.HEADER - len(np.lib.format.MAGIC_PREFIX) - 2 - 2 - len(body) - 1
        if pad < 0:
            raise L2BGError(f"per-sample shape {self.shape} is too long for an .npy header")
        body += b" " * pad + b"\n"
        return np.lib.format.MAGIC_PREFIX + bytes([1, 0]) + struct.pack("<H", len(body)) + body

    def append(self, block: np.ndarray) -> None:
        if tuple(block.shape[1:]) != self.shape:
            raise L2BGError(f"{self.path.name}: a batch of per-sample shape {block.shape[1:]} "
                            f"after {self.shape}; the module's output shape must not change")
        self.file.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += block.shape[0]

    def close(self) -> None:
        try:
            self.file.seek(0)
            self.file.write(self._header(self.rows))
        finally:
            self.file.close()
