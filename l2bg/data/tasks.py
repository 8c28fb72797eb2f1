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

__all__ = ["Benchmark", "DataSplits", "Task", "task_fingerprint"]

_TENSOR_FIELDS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
_TASK_NAME = re.compile(r"^[A-Za-z0-9_-]+$")




@dataclass(eq=False)
class Task:
    """One task of a stream: train/val/test tensors and its number of classes.

    ``x`` is float32 (MNIST: ``(N, 784)`` in [0, 1]; CIFAR: ``(N, 3, 32, 32)`` normalised per
    channel), ``y`` int64 in ``0..num_classes-1``. ``classes`` gives the original class id of each
    local label; ``permutation`` is the pixel permutation of a pmnist task
    (``x_task = x_original[:, permutation]``), else None.
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

    def __post_init__(self) -> None:
        _check_task(self)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample (``x_train.shape[1:]``)."""
        return tuple(self.x_train.shape[1:])

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
        if shape is None:
            shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != shape:
            raise L2BGError(f"task {task.name}: x_{split} samples have shape "
                            f"{tuple(x.shape[1:])}, x_train {shape}; all splits must match")
        if y.numel() == 0:
            raise L2BGError(f"task {task.name}: its {split} split has no samples; give the "
                            "data set more samples of this task's classes")
        if int(y.min()) < 0 or int(y.max()) >= task.num_classes:
            raise L2BGError(f"task {task.name}: y_{split} has labels outside "
                            f"0..{task.num_classes - 1}; relabel the classes")



def task_fingerprint(task: Task) -> str:
    """Short stable hex digest (16 chars of sha1) of a task's six tensors and ``num_classes``.

    Covers dtype, shape and raw bytes of each tensor in a fixed order, so equal tasks built in
    different processes share a cache key and any one-element change gives a different key.
    """
    h = hashlib.sha1()
    h.update(f"l2bg-task-v1;num_classes={task.num_classes};".encode())
    for split in ("train", "val", "test"):
        for kind in ("x", "y"):
            t = getattr(task, f"{kind}_{split}").detach().cpu().contiguous()
            h.update(f"{kind}_{split};{t.dtype};{tuple(t.shape)};".encode())
            h.update(memoryview(t.view(-1).view(torch.uint8).numpy()))
    return h.hexdigest()[:16]
