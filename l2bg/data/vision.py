"""Tasks and benchmarks from any torchvision-style data set: an object with ``len()`` and
``ds[i] -> (image, label)`` (``torchvision.datasets.CIFAR100``, ``ImageFolder``, a user's own).
torchvision itself is optional (``pip install l2bg[vision]``) and never imported here: the
built-in :func:`to_tensor` is the default transform, so results do not depend on an optional
install; a torchvision transform is an explicit ``transform`` and is recorded in the source.

``train_transform`` (e.g. torchvision's ``Compose([RandomCrop(32, padding=4),
RandomHorizontalFlip(), ToTensor(), Normalize(...)])``) is a per-sample transform drawn afresh on
the training images every time a mini-batch is drawn (every epoch): the task's x_train is read
once with ``transform`` (shapes, validation), and training re-reads each mini-batch's items
through ``train_transform`` (:class:`l2bg.data.redraw.ItemRedraw`, reproducible from l2bg's
seed). The validation part split off train and the test split keep ``transform``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from l2bg.base.errors import L2BGError
from l2bg.data.redraw import ItemRedraw, item_input, stable_repr
from l2bg.data.sources import CIFAR_VAL_FRACTION, cifar_split
from l2bg.data.splits import seeded_generator, stratified_split
from l2bg.data.tasks import Benchmark, DataSplits, Task

__all__ = ["benchmark_from_datasets", "cifar100_splits", "task_from_dataset", "to_tensor"]


def to_tensor(image: Any) -> Tensor:
    """The built-in transform: a Pillow image, numpy array or tensor as float32 (C, H, W);
    uint8 pixels are scaled to [0, 1], a 2-D image gets one channel."""
    if isinstance(image, Tensor):
        x = image
    else:
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
            arr = arr.transpose(2, 0, 1)  # HWC (Pillow, numpy) -> CHW
        x = torch.from_numpy(np.ascontiguousarray(arr))
    scale = x.dtype == torch.uint8
    x = x.float()
    if scale:
        x = x / 255.0
    return x.unsqueeze(0) if x.ndim == 2 else x


def _labels(dataset: Any, what: str) -> Tensor:
    """Every label of ``dataset``: its ``targets`` when it has them, else read item by item."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [dataset[i][1] for i in range(len(dataset))]
    try:
        y = torch.as_tensor(np.asarray(targets), dtype=torch.int64).flatten()
    except (TypeError, ValueError) as exc:
        raise L2BGError(f"{what}: labels must be integers ({exc}); give a data set whose "
                        "items are (image, int label)") from exc
    if y.numel() != len(dataset):
        raise L2BGError(f"{what}: {y.numel()} targets for {len(dataset)} items; give one label "
                        "per item")
    return y


def _read(dataset: Any, i: int, transform: Callable[[Any], Any], what: str) -> Tensor:
    """Item ``i``'s image through ``transform`` (a non-tensor result through :func:`to_tensor`)."""
    x = transform(item_input(dataset, i, what, "(image, label)", "a torchvision-style data set"))
    return x if isinstance(x, Tensor) else to_tensor(x)


def _stack(dataset: Any, idx: Tensor, transform: Callable[[Any], Any], what: str) -> Tensor:
    xs = [_read(dataset, i, transform, what) for i in idx.tolist()]
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) > 1:
        raise L2BGError(f"{what}: the transform gives images of shapes {sorted(shapes)[:3]}; "
                        "resize or crop them to one shape")
    return torch.stack(xs).float()


def _redraw(dataset: Any, items: Tensor, train_transform: Callable[[Any], Any],
            name: str) -> ItemRedraw:
    """The batch transform that re-reads the training rows' ``items`` through
    ``train_transform`` every time a mini-batch is drawn."""
    what = f"task {name}: train_transform"
    return ItemRedraw(dataset, items, partial(_read, transform=train_transform, what=what),
                      what=what, about=stable_repr(train_transform))


def task_from_dataset(name: str, train: Any, test: Any, classes: Sequence[int], *,
                      transform: Callable[[Any], Any] | None = None,
                      train_transform: Callable[[Any], Any] | None = None,
                      val_fraction: float = 0.1, seed: int = 0) -> Task:
    """A :class:`Task` of ``classes`` (original label ids, relabelled to their position) from
    torchvision-style ``train`` and ``test`` data sets; a seeded, stratified ``val_fraction`` of
    the train items is the validation split. ``transform`` (default :func:`to_tensor`) maps an
    image to a tensor; every image must come out the same shape. ``train_transform`` (a
    per-sample image transform, e.g. torchvision's random crop and flip, ending in a tensor of
    ``transform``'s shape) is drawn on the training images every time a mini-batch is drawn;
    the validation and test splits keep ``transform``."""
    classes = [int(c) for c in classes]
    if not classes or len(set(classes)) != len(classes):
        raise L2BGError(f"task {name}: classes must be distinct label ids, got {classes}")
    transform = to_tensor if transform is None else transform
    lut = {c: i for i, c in enumerate(classes)}
    parts = []
    for split, ds in (("train", train), ("test", test)):
        y = _labels(ds, f"task {name} ({split})")
        idx = torch.isin(y, torch.tensor(classes)).nonzero().flatten()
        missing = sorted(set(classes) - set(y[idx].tolist()))
        if missing:
            raise L2BGError(f"task {name}: the {split} data set has no items of class(es) "
                            f"{missing}; choose classes it holds")
        local = torch.tensor([lut[int(v)] for v in y[idx]], dtype=torch.int64)
        parts.append((ds, idx, local))
    (ds_tr, idx_tr, y_tr), (ds_te, idx_te, y_te) = parts
    tr, va = stratified_split(y_tr, (val_fraction,), seeded_generator(seed, f"split-{name}"))
    what = f"task {name}"
    redraw = (None if train_transform is None
              else _redraw(ds_tr, idx_tr[tr], train_transform, name))
    return Task(name, _stack(ds_tr, idx_tr[tr], transform, what), y_tr[tr],
                _stack(ds_tr, idx_tr[va], transform, what), y_tr[va],
                _stack(ds_te, idx_te, transform, what), y_te,
                num_classes=len(classes), classes=tuple(classes), train_transform=redraw)


def benchmark_from_datasets(name: str, train: Any, test: Any,
                            task_classes: Sequence[Sequence[int]], *,
                            transform: Callable[[Any], Any] | None = None,
                            train_transform: Callable[[Any], Any] | None = None,
                            template: str = "convnet", val_fraction: float = 0.1,
                            seed: int = 0) -> Benchmark:
    """A :class:`Benchmark` of one task per entry of ``task_classes`` (per-task heads), each
    :func:`task_from_dataset`; the source records the transforms (``repr``) and the classes."""
    tasks = [task_from_dataset(f"{name}-{t}", train, test, classes, transform=transform,
                               train_transform=train_transform, val_fraction=val_fraction,
                               seed=seed)
             for t, classes in enumerate(task_classes)]
    source = {"kind": "torchvision-style", "dataset": type(train).__name__,
              "transform": "l2bg.data.vision.to_tensor" if transform is None else repr(transform),
              "train_transform": None if train_transform is None else stable_repr(train_transform),
              "task_classes": [list(c) for c in task_classes], "val_fraction": val_fraction,
              "seed": seed, "benchmark": name, "num_tasks": len(tasks)}
    return Benchmark(name=name, tasks=tasks, seed=seed, template=template, shared_head=False,
                     source=source)


def _cifar_images(dataset: Any, what: str) -> Tensor:
    """uint8 (N, 3, 32, 32): torchvision's ``CIFAR100.data`` (N, 32, 32, 3), else every item's
    image (a Pillow image or HWC array, before any transform)."""
    data = getattr(dataset, "data", None)
    arr = (np.asarray(data) if data is not None else
           np.stack([np.asarray(dataset[i][0]) for i in range(len(dataset))]))
    if arr.dtype != np.uint8 or arr.shape[1:] != (32, 32, 3):
        raise L2BGError(f"{what}: expected uint8 images of shape (32, 32, 3) as "
                        f"torchvision.datasets.CIFAR100 holds them, got {arr.dtype} "
                        f"{arr.shape[1:]}; pass CIFAR100(root, train=..., transform=None)")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


def cifar100_splits(train: Any, test: Any, *, seed: int = 0) -> DataSplits:
    """CIFAR-100 from torchvision-style ``train`` and ``test`` sets (``torchvision.datasets.
    CIFAR100(root, train=True/False)``), split and normalised exactly as
    :func:`l2bg.data.sources.load_cifar100` does the pickles: the same files give bit-identical
    tensors."""
    x_all, y_all = _cifar_images(train, "CIFAR-100 train"), _labels(train, "CIFAR-100 train")
    x_test, y_test = _cifar_images(test, "CIFAR-100 test"), _labels(test, "CIFAR-100 test")
    for y, what in ((y_all, "train"), (y_test, "test")):
        if y.numel() == 0 or int(y.min()) < 0 or int(y.max()) > 99:
            raise L2BGError(f"CIFAR-100 {what}: labels must be 0..99 fine labels; pass "
                            "torchvision.datasets.CIFAR100")
    (x_tr, y_tr), (x_va, y_va), x_te, mean, std = cifar_split(x_all, y_all, x_test, seed)
    source = {"kind": "torchvision-cifar100", "dataset": type(train).__name__,
              "root": str(getattr(train, "root", "")) or None, "input_shape": [3, 32, 32],
              "num_classes": 100,
              "sizes": {"train": len(y_tr), "val": len(y_va), "test": len(y_test)},
              "split": {"val_fraction_of_train": CIFAR_VAL_FRACTION, "stratified": True,
                        "seed": seed, "test": "official test set"},
              "normalisation": {"mean": [float(v) for v in mean],
                                "std": [float(v) for v in std], "of": "train split, pixels/255"},
              "notes": "torchvision-style CIFAR-100 split and normalised as the pickles are"}
    return DataSplits(source, (x_tr, y_tr), (x_va, y_va), (x_te, y_test))
