"""Tasks and benchmarks from any torchvision-style data set: an object with ``len()`` and
``ds[i] -> (image, label)`` (``torchvision.datasets.CIFAR100``, ``ImageFolder``, a user's own).
torchvision itself is optional (``pip install l2bg[vision]``) and never imported here: the
built-in :func:`to_tensor` is the default transform, so results do not depend on an optional
install; a torchvision transform is an explicit ``transform`` and is recorded in the source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from l2bg.base.errors import L2BGError
from l2bg.data.splits import seeded_generator, stratified_split
from l2bg.data.tasks import Benchmark, Task

__all__ = ["benchmark_from_datasets", "task_from_dataset", "to_tensor"]


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


def _stack(dataset: Any, idx: Tensor, transform: Callable[[Any], Any], what: str) -> Tensor:
    xs = []
    for i in idx.tolist():
        item = dataset[i]
        if not isinstance(item, tuple | list) or len(item) < 2:
            raise L2BGError(f"{what}: item {i} is a {type(item).__name__}, expected (image, "
                            "label); give a torchvision-style data set")
        x = transform(item[0])
        xs.append(x if isinstance(x, Tensor) else to_tensor(x))
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) > 1:
        raise L2BGError(f"{what}: the transform gives images of shapes {sorted(shapes)[:3]}; "
                        "resize or crop them to one shape")
    return torch.stack(xs).float()


def task_from_dataset(name: str, train: Any, test: Any, classes: Sequence[int], *,
                      transform: Callable[[Any], Any] | None = None,
                      val_fraction: float = 0.1, seed: int = 0) -> Task:
    """A :class:`Task` of ``classes`` (original label ids, relabelled to their position) from
    torchvision-style ``train`` and ``test`` data sets; a seeded, stratified ``val_fraction`` of
    the train items is the validation split. ``transform`` (default :func:`to_tensor`) maps an
    image to a tensor; every image must come out the same shape."""
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
    return Task(name, _stack(ds_tr, idx_tr[tr], transform, what), y_tr[tr],
                _stack(ds_tr, idx_tr[va], transform, what), y_tr[va],
                _stack(ds_te, idx_te, transform, what), y_te,
                num_classes=len(classes), classes=tuple(classes))


def benchmark_from_datasets(name: str, train: Any, test: Any,
                            task_classes: Sequence[Sequence[int]], *,
                            transform: Callable[[Any], Any] | None = None,
                            template: str = "convnet", val_fraction: float = 0.1,
                            seed: int = 0) -> Benchmark:
    """A :class:`Benchmark` of one task per entry of ``task_classes`` (per-task heads), each
    :func:`task_from_dataset`; the source records the transform (``repr``) and the classes."""
    tasks = [task_from_dataset(f"{name}-{t}", train, test, classes, transform=transform,
                               val_fraction=val_fraction, seed=seed)
             for t, classes in enumerate(task_classes)]
    source = {"kind": "torchvision-style", "dataset": type(train).__name__,
              "transform": "l2bg.data.vision.to_tensor" if transform is None else repr(transform),
              "task_classes": [list(c) for c in task_classes], "val_fraction": val_fraction,
              "seed": seed, "benchmark": name, "num_tasks": len(tasks)}
    return Benchmark(name=name, tasks=tasks, seed=seed, template=template, shared_head=False,
                     source=source)
