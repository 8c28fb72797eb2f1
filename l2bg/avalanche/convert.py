"""Converters between l2bg's task streams and Avalanche's task-labelled benchmarks, both ways.

* :func:`to_avalanche`: an l2bg :class:`~l2bg.data.Benchmark` (or a list of tasks) as an
  Avalanche benchmark built in memory with ``tensors_benchmark``: experience t has task label t,
  class ids from zero (l2bg's local labels), and the validation splits become the
  ``valid_stream``, so a strategy that reads it trains on exactly l2bg's data.
* :func:`from_avalanche`: an Avalanche task-incremental benchmark as an l2bg Benchmark: one task
  per training experience, its classes relabelled from zero (the original ids kept in
  ``Task.classes``), the test experience of the same task label as its test split and the
  ``valid_stream``'s (when there is one) or a seeded stratified part of the training data as its
  validation split.

The converters read an experience's data once, through its dataset's own transforms (a random
augmentation is drawn once, when it is read); :class:`~l2bg.avalanche.L2BGStrategy` re-reads the
training data every epoch when its train transforms draw at random (:mod:`l2bg.avalanche.redraw`).
Avalanche is imported only when a converter runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from l2bg.base.errors import L2BGError
from l2bg.data.augment import BatchTransform, describe
from l2bg.data.splits import seeded_generator, stratified_split
from l2bg.data.tasks import Benchmark, Task

__all__ = ["dataset_tensors", "from_avalanche", "make_task", "task_label_of", "to_avalanche"]

#: the seeded part of an experience's training data that validates it when no valid_stream
#: gives one (l2bg's validation data: the conflict scores' inputs)
VALID_FRACTION = 0.1


def task_label_of(experience: Any) -> int:
    """The one task label of an experience (task-incremental streams have one per experience)."""
    labels = sorted({int(t) for t in getattr(experience, "task_labels", ())})
    if len(labels) != 1:
        raise L2BGError(f"experience {getattr(experience, 'current_experience', '?')} has task "
                        f"labels {labels}; l2bg needs exactly one per experience: build a "
                        "task-incremental benchmark (e.g. task_labels=[...] or "
                        "task_incremental_benchmark(...))")
    return labels[0]


def dataset_tensors(dataset: Any, what: str, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Every (x, y) of an Avalanche data set in order, transforms applied, as float32 and
    int64 tensors."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        collate_fn=getattr(dataset, "collate_fn", None))
    xs, ys = [], []
    for batch in loader:
        if not isinstance(batch, Sequence) or len(batch) < 2:
            raise L2BGError(f"{what}: a mini-batch is {type(batch).__name__}, expected "
                            "(x, y, task label); give a classification data set")
        xs.append(torch.as_tensor(batch[0]))
        ys.append(torch.as_tensor(batch[1]))
    if not xs:
        raise L2BGError(f"{what} has no samples; give every experience data")
    return torch.cat(xs).float(), torch.cat(ys).long()


def _local(y: Tensor, classes: Tensor, what: str) -> Tensor:
    """``y`` relabelled to positions in ``classes`` (sorted ids); an id outside is an error."""
    pos = torch.searchsorted(classes, y)
    bad = (pos >= classes.numel()) | (classes[pos.clamp(max=classes.numel() - 1)] != y)
    if bool(bad.any()):
        raise L2BGError(f"{what} has class ids {sorted(set(y[bad].tolist()))[:5]} that its "
                        f"training data lacks (classes {classes.tolist()[:10]}); give every "
                        "split of a task the same classes")
    return pos


def make_task(name: str, train: tuple[Tensor, Tensor], valid: tuple[Tensor, Tensor] | None,
              test: tuple[Tensor, Tensor] | None, *, seed: int = 0,
              valid_fraction: float = VALID_FRACTION,
              train_transform_of: Callable[[Tensor], BatchTransform] | None = None) -> Task:
    """An l2bg :class:`Task` from (x, y) tensors with any class ids: the classes of ``train``,
    sorted, are relabelled 0..k-1 (kept in ``Task.classes``); without ``valid`` a seeded,
    stratified ``valid_fraction`` of ``train`` validates; without ``test`` the validation split
    is also the test split. ``train_transform_of``, given the row of ``train`` behind each
    training row of the task, returns the task's ``train_transform`` (e.g. a
    :class:`~l2bg.avalanche.redraw.DatasetRedraw` of those items)."""
    x, y = train
    rows = torch.arange(y.shape[0])
    classes = torch.unique(y)
    if classes.numel() and int(classes[0]) < 0:
        raise L2BGError(f"task {name}: class ids must be >= 0, got {int(classes[0])}")
    y = _local(y, classes, f"task {name} (train)")
    if valid is None:
        if not 0 < valid_fraction < 1:
            raise L2BGError(f"task {name}: valid_fraction must be in (0, 1), got "
                            f"{valid_fraction!r}")
        tr, va = stratified_split(y, (valid_fraction,), seeded_generator(seed, f"split-{name}"))
        x, y, x_val, y_val, rows = x[tr], y[tr], x[va], y[va], tr
    else:
        x_val, y_val = valid[0], _local(valid[1], classes, f"task {name} (valid)")
    if test is None:
        x_test, y_test = x_val, y_val
    else:
        x_test, y_test = test[0], _local(test[1], classes, f"task {name} (test)")
    transform = None if train_transform_of is None else train_transform_of(rows)
    return Task(name, x, y, x_val, y_val, x_test, y_test, num_classes=int(classes.numel()),
                classes=tuple(int(c) for c in classes), train_transform=transform)


def _streams(tasks: Sequence[Task]) -> dict[str, list[tuple[Tensor, Tensor]]]:
    return {s: [(getattr(t, f"x_{s}"), getattr(t, f"y_{s}")) for t in tasks]
            for s in ("train", "val", "test")}


def to_avalanche(bench: Benchmark | Sequence[Task]) -> Any:
    """An Avalanche benchmark of l2bg tasks: experience t of ``train_stream``, ``valid_stream``
    and ``test_stream`` holds task t's splits with task label t, class ids from zero. A task with
    a ``train_transform`` (augmentation drawn per mini-batch, its stored samples not model-shaped)
    is refused: Avalanche's tensor datasets hold model-shaped samples."""
    tasks = list(bench.tasks if isinstance(bench, Benchmark) else bench)
    if not tasks:
        raise L2BGError("to_avalanche: the task stream is empty; give at least one task")
    augmented = [t for t in tasks if t.train_transform is not None]
    if augmented:
        t = augmented[0]
        raise L2BGError(f"to_avalanche: task {t.name} draws its training inputs per mini-batch "
                        f"(train_transform {describe(t.train_transform)}), which a tensor "
                        "benchmark cannot hold; give tasks without one, e.g. crops drawn once: "
                        "dataclasses.replace(task, x_train=task.train_transform(task.x_train, "
                        "torch.Generator().manual_seed(0)), train_transform=None)")
    from avalanche.benchmarks.scenarios.deprecated.generators import tensors_benchmark

    s = _streams(tasks)
    return tensors_benchmark(train_tensors=s["train"], test_tensors=s["test"],
                             other_streams_tensors={"valid": s["val"]},
                             task_labels=list(range(len(tasks))))


def _by_label(stream: Any, what: str) -> dict[int, Any]:
    """The experiences of a stream by task label (one each)."""
    out: dict[int, Any] = {}
    for exp in stream:
        label = task_label_of(exp)
        if label in out:
            raise L2BGError(f"the {what} stream has two experiences of task label {label}; "
                            "give one experience per task")
        out[label] = exp
    return out


def from_avalanche(benchmark: Any, *, name: str = "avalanche", seed: int = 0,
                   valid_fraction: float = VALID_FRACTION,
                   template: str | None = None) -> Benchmark:
    """An l2bg Benchmark of a task-incremental Avalanche benchmark (see the module): one task
    ``{name}-{label}`` per training experience, in stream order. ``template`` defaults to
    ``mlp`` for flat inputs and ``convnet`` for images."""
    train = list(benchmark.train_stream)
    if not train:
        raise L2BGError("from_avalanche: the train stream is empty")
    test = _by_label(benchmark.test_stream, "test")
    valid_stream = getattr(benchmark, "valid_stream", None)
    valid = _by_label(valid_stream, "valid") if valid_stream is not None else {}
    tasks = []
    for exp in train:
        label = task_label_of(exp)
        if label not in test:
            raise L2BGError(f"from_avalanche: the test stream has no experience of task label "
                            f"{label}; give a test experience per task")
        tname = f"{name}-{label}"
        xy = dataset_tensors(exp.dataset.train(), f"task {tname} (train)")
        va = (dataset_tensors(valid[label].dataset.eval(), f"task {tname} (valid)")
              if label in valid else None)
        te = dataset_tensors(test[label].dataset.eval(), f"task {tname} (test)")
        tasks.append(make_task(tname, xy, va, te, seed=seed, valid_fraction=valid_fraction))
    shape = tasks[0].input_shape
    if template is None:
        template = "mlp" if len(shape) == 1 else "convnet"
    source = {"kind": "avalanche", "benchmark": type(benchmark).__name__,
              "task_labels": [task_label_of(e) for e in train],
              "classes": [list(t.classes) for t in tasks],
              "valid": "valid_stream" if valid else f"seeded {valid_fraction} of train",
              "seed": seed, "num_tasks": len(tasks)}
    return Benchmark(name=name, tasks=tasks, seed=seed, template=template, shared_head=False,
                     source=source)
