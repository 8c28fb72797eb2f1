"""Task streams: a :class:`Task` (train/val/test tensors and its classes), a :class:`Benchmark`
(a named stream of tasks and how to build task-nets for it), :class:`DataSplits` (a loaded, split
data set) and the task fingerprint that keys caches."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from l2bg.base.errors import L2BGError
from l2bg.data.augment import BatchTransform, describe

__all__ = ["Benchmark", "DataSplits", "Task", "task_fingerprint"]

_TENSOR_FIELDS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
_TASK_NAME = re.compile(r"^[A-Za-z0-9_-]+$")




@dataclass(eq=False)
class Task:
    """One task of a stream: train/val/test tensors and its number of classes.

    ``x`` is float32 (MNIST: ``(N, 784)`` in [0, 1]; CIFAR: ``(N, 3, 32, 32)`` normalised per
    channel), ``y`` int64 in ``0..num_classes-1``. ``classes`` gives the original class id of each
    local label; ``permutation`` is the pixel permutation of a pmnist task
    (``x_task = x_original[:, permutation]``), else None. ``train_transform`` (a
    :class:`l2bg.data.augment.BatchTransform`, e.g. a random crop) maps a mini-batch of the
    stored ``x_train`` samples, which may then be larger, to samples of x_val's shape; training
    applies it afresh to every mini-batch. Without one, every split has the same sample shape.
    """

    name: str
    x_train: Tensor = field(repr=False)
    y_train: Tensor = field(repr=False)
    x_val: Tensor = field(repr=False)
    y_val: Tensor = field(repr=False)
    x_test: Tensor = field(repr=False)
    y_test: Tensor = field(repr=False)
    num_classes: int
    classes: tuple[int, ...] = ()
    permutation: Tensor | None = field(default=None, repr=False)
    train_transform: BatchTransform | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_task(self)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one model input sample (``x_val.shape[1:]``: x_train's, or its shape after
        ``train_transform``)."""
        return tuple(self.x_val.shape[1:])

    @property
    def sizes(self) -> dict[str, int]:
        """Number of samples per split."""
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}

    def to(self, device: torch.device | str) -> Task:
        """A copy of this task with its tensors on ``device`` (same object if already there)."""
        moved = {f: getattr(self, f).to(device) for f in _TENSOR_FIELDS}
        if all(moved[f] is getattr(self, f) for f in _TENSOR_FIELDS):
            return self
        return dataclasses.replace(self, **moved)


@dataclass(eq=False)
class Benchmark:
    """A named stream of tasks plus how to build task-nets for it and where its data came from."""

    name: str
    tasks: list[Task] = field(repr=False)
    seed: int
    template: str
    shared_head: bool
    source: dict[str, Any] = field(repr=False)

    def __post_init__(self) -> None:
        for task in self.tasks:  # data read from a root must cover every class it promises
            counts = torch.bincount(task.y_train, minlength=task.num_classes)
            if bool((counts == 0).any()):
                empty = (counts == 0).nonzero().flatten().tolist()
                names = [task.classes[c] if c < len(task.classes) else c for c in empty]
                raise L2BGError(f"{self.name}: task {task.name} has no training samples of "
                                f"class(es) {names}, so it cannot learn them; use a data set "
                                "with samples of every class")

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)

    def __getitem__(self, i: int) -> Task:
        return self.tasks[i]


class DataSplits(NamedTuple):
    """A loaded data set, split: ``source`` record and (x, y) for train, val and test.

    Unpacks as ``source, (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = load_mnist(...)``.
    """

    source: dict[str, Any]
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]


def _check_task(task: Task) -> None:
    """Enforce the Task contract early, so a malformed task fails where it is built."""
    if not isinstance(task.name, str) or not _TASK_NAME.match(task.name):
        raise L2BGError(
            f"task name {task.name!r} is invalid: use only letters, digits, '-' and '_'"
        )
    if not isinstance(task.num_classes, int) or task.num_classes < 1:
        raise L2BGError(f"task {task.name}: num_classes must be a positive int, "
                        f"got {task.num_classes!r}")
    shape = None
    for split in ("train", "val", "test"):
        x, y = getattr(task, f"x_{split}"), getattr(task, f"y_{split}")
        if not isinstance(x, Tensor) or x.dtype != torch.float32:
            raise L2BGError(f"task {task.name}: x_{split} must be a float32 tensor, "
                            f"got {getattr(x, 'dtype', type(x).__name__)}; convert with .float()")
        if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.dim() != 1:
            raise L2BGError(f"task {task.name}: y_{split} must be a 1-D int64 tensor; "
                            f"convert with .long()")
        if x.shape[0] != y.shape[0]:
            raise L2BGError(f"task {task.name}: x_{split} has {x.shape[0]} samples but y_{split} "
                            f"has {y.shape[0]}; give one label per sample")
        if split == "train" and task.train_transform is not None:
            pass  # its samples are checked after the transform, below
        elif shape is None:
            shape = (split, tuple(x.shape[1:]))
        elif tuple(x.shape[1:]) != shape[1]:
            raise L2BGError(f"task {task.name}: x_{split} samples have shape "
                            f"{tuple(x.shape[1:])}, x_{shape[0]} {shape[1]}; all splits must "
                            "match")
        if y.numel() == 0:
            raise L2BGError(f"task {task.name}: its {split} split has no samples; give the "
                            "data set more samples of this task's classes")
        if int(y.min()) < 0 or int(y.max()) >= task.num_classes:
            raise L2BGError(f"task {task.name}: y_{split} has labels outside "
                            f"0..{task.num_classes - 1}; relabel the classes")
    if task.train_transform is not None:
        _check_transform(task, shape[1])


def _check_transform(task: Task, shape: tuple[int, ...]) -> None:
    """``train_transform`` maps two stored training samples (a seeded draw) to float32 samples
    of the val/test shape."""
    t = task.train_transform
    if not callable(t) or not callable(getattr(t, "to_dict", None)):
        raise L2BGError(f"task {task.name}: train_transform {type(t).__name__} must be a "
                        "callable (x, gen, index=None) with to_dict(); use "
                        "l2bg.data.augment.RandomCropFlip or write one like it")
    try:
        rows = torch.arange(min(2, task.x_train.shape[0]))
        out = t(task.x_train[:2], torch.Generator().manual_seed(0), index=rows)
    except L2BGError:
        raise
    except Exception as exc:
        raise L2BGError(f"task {task.name}: train_transform {describe(t)} fails on x_train[:2] "
                        f"({type(exc).__name__}: {exc}); store x_train as the transform "
                        "expects, and take (x, gen, index=None)") from exc
    want = (min(2, task.x_train.shape[0]), *shape)
    if not isinstance(out, Tensor) or out.dtype != torch.float32 or tuple(out.shape) != want:
        got = (f"{out.dtype} {tuple(out.shape)}" if isinstance(out, Tensor)
               else type(out).__name__)
        raise L2BGError(f"task {task.name}: train_transform {describe(t)} maps x_train[:2] to "
                        f"{got}, not float32 {want} (x_val's samples); store x_train so that "
                        "the transform yields x_val's shape")



def task_fingerprint(task: Task) -> str:
    """Short stable hex digest (16 chars of sha1) of a task's six tensors and ``num_classes``.

    Covers dtype, shape and raw bytes of each tensor in a fixed order, so equal tasks built in
    different processes share a cache key and any one-element change gives a different key; a
    ``train_transform`` adds its description (a task without one keys as it always did).
    """
    h = hashlib.sha1()
    h.update(f"l2bg-task-v1;num_classes={task.num_classes};".encode())
    for split in ("train", "val", "test"):
        for kind in ("x", "y"):
            t = getattr(task, f"{kind}_{split}").detach().cpu().contiguous()
            h.update(f"{kind}_{split};{t.dtype};{tuple(t.shape)};".encode())
            h.update(memoryview(t.view(-1).view(torch.uint8).numpy()))
    if task.train_transform is not None:
        h.update(f"train_transform;{describe(task.train_transform)};".encode())
    return h.hexdigest()[:16]
