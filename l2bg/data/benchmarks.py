"""The benchmarks: named task streams built from a data source, one registry.

* ``pmnist``: permuted MNIST. Every task applies its own random pixel permutation (task 0 too) to
  the same images; one shared 10-way softmax head (``shared_head=True``), template ``"mlp"``.
* ``split-mnist``: 2 digits per task (at most 5 tasks), labels relabelled 0/1, per-task heads.
* ``split-cifar100``: ``T`` tasks of ``100/T`` classes, per-task heads, template ``"convnet"``.
* ``rotated-mnist``: task t rotates every digit by its own angle (default: T angles evenly
  spaced over [0°, 180°), task 0 unrotated), all 10 classes, one shared head like pmnist.
* ``vdd``: the Visual Decathlon, one task per domain (:mod:`l2bg.data.decathlon`), 64×64 RGB,
  per-task heads, template ``"convnet"``.

:func:`register` adds a benchmark; ``BENCHMARKS`` lists them (the CLI's choices).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from l2bg.base.bounds import MAX_TASKS, check_size, memory_bytes
from l2bg.base.errors import L2BGError, ParamError
from l2bg.base.registry import Registry
from l2bg.data.decathlon import DOMAINS, build_vdd
from l2bg.data.sources import CIFAR_URL, load_cifar100, load_mnist
from l2bg.data.splits import derive_seed, seeded_generator
from l2bg.data.tasks import Benchmark, DataSplits, Task

__all__ = ["BENCHMARKS", "BenchmarkSpec", "build_benchmark", "default_angles", "register",
           "rotate"]

SPLIT_MNIST_CLASSES_PER_TASK = 2


@dataclass(frozen=True)
class BenchmarkSpec:
    """A benchmark: ``build(num_tasks, seed, data_root, class_order_seed, **options)`` returns
    the tasks and a ``source`` record; ``default_tasks`` and ``max_tasks`` bound the task count,
    checked before any data is read (``default_tasks`` None: the builder decides, e.g. one task
    per domain present); ``options`` names the extra keyword arguments it takes (``angles`` for
    rotated-mnist, ``domains`` and ``max_per_class`` for vdd)."""

    name: str
    help: str
    template: str
    shared_head: bool
    default_tasks: int | None
    max_tasks: int | None
    build: Callable[..., tuple[list[Task], dict[str, Any]]]
    options: tuple[str, ...] = ()


_REGISTRY: Registry[BenchmarkSpec] = Registry("benchmark", "benchmark")
BENCHMARKS: tuple[str, ...] = ()
"""The registered benchmark names (the choices of ``--benchmark``)."""


def register(spec: BenchmarkSpec, *, replace: bool = False) -> BenchmarkSpec:
    """Add ``spec`` to the registry (its name becomes a choice of ``--benchmark``)."""
    global BENCHMARKS
    _REGISTRY.register(spec, replace=replace)
    BENCHMARKS = tuple(_REGISTRY.names())
    return spec




def _check_num_tasks(name: str, num_tasks: Any, limit: int | None) -> int | None:
    if num_tasks is None:
        return _REGISTRY.get(name).default_tasks
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, (int, np.integer)):
        raise ParamError(f"{{num_tasks}} must be an int, got {num_tasks!r}", "num_tasks")
    num_tasks = int(num_tasks)
    if num_tasks < 1:
        raise ParamError(f"{{num_tasks}} must be >= 1 for {name}, got {num_tasks}", "num_tasks")
    limit = MAX_TASKS if limit is None else min(limit, MAX_TASKS)
    if num_tasks > limit:
        raise ParamError(f"{name} allows at most {limit} tasks, got {{num_tasks}} {num_tasks}; "
                         f"pass {{num_tasks}} <= {limit}", "num_tasks")
    return num_tasks


def _class_order(num_classes: int, class_order_seed: int | None) -> list[int]:
    """Identity, or a ``torch.randperm`` drawn from ``class_order_seed``."""
    if class_order_seed is None:
        return list(range(num_classes))
    gen = torch.Generator().manual_seed(int(class_order_seed))
    return torch.randperm(num_classes, generator=gen).tolist()


def _subset(x: Tensor, y: Tensor, classes: list[int], lut: Tensor) -> tuple[Tensor, Tensor]:
    """Samples of ``classes``, relabelled to their position in ``classes``."""
    mask = torch.isin(y, torch.tensor(classes, dtype=torch.int64))
    return x[mask], lut[y[mask]]


def _split_tasks(
    prefix: str, data: DataSplits, num_tasks: int, per_task: int, total: int,
    class_order_seed: int | None,
) -> tuple[list[Task], dict[str, Any]]:
    """Tasks of ``per_task`` consecutive classes of the class order, relabelled 0..C-1."""
    order = _class_order(total, class_order_seed)
    tasks, task_classes = [], []
    for t in range(num_tasks):
        classes = order[t * per_task:(t + 1) * per_task]
        lut = torch.full((total,), -1, dtype=torch.int64)
        lut[torch.tensor(classes)] = torch.arange(len(classes))
        parts = [_subset(x, y, classes, lut) for x, y in (data.train, data.val, data.test)]
        tasks.append(Task(f"{prefix}-{t}", *parts[0], *parts[1], *parts[2],
                          num_classes=per_task, classes=tuple(classes)))
        task_classes.append(classes)
    info = {"class_order": order, "class_order_seed": class_order_seed,
            "classes_per_task": per_task, "task_classes": task_classes}
    return tasks, info


def _pmnist_tasks(data: DataSplits, num_tasks: int, seed: int) -> tuple[list[Task], dict]:
    """Every task (task 0 too) permutes the pixels of the same images with its own permutation."""
    check_task_memory("pmnist", data, num_tasks)
    gen = seeded_generator(seed, "pmnist-permutations")
    dim = data.train[0].shape[1]
    xs = [np.ascontiguousarray(x.numpy()) for x, _ in (data.train, data.val, data.test)]

    def permute(x: np.ndarray, perm: Tensor) -> Tensor:
        # np.take along columns is ~8x faster than torch advanced indexing x[:, perm] here
        return torch.from_numpy(np.take(x, perm.numpy(), axis=1))

    tasks = []
    for t in range(num_tasks):
        perm = torch.randperm(dim, generator=gen)
        tasks.append(Task(
            f"pmnist-{t}",
            permute(xs[0], perm), data.train[1].clone(),
            permute(xs[1], perm), data.val[1].clone(),
            permute(xs[2], perm), data.test[1].clone(),
            num_classes=10, classes=tuple(range(10)), permutation=perm,
        ))
    info = {"permutations": "torch.randperm(input_dim) per task from a torch.Generator seeded "
                            "with derive_seed(seed, 'pmnist-permutations'); task 0 permuted too",
            "permutation_generator_seed": derive_seed(seed, "pmnist-permutations")}
    return tasks, info




def check_task_memory(name: str, data: DataSplits, num_tasks: int) -> None:
    """Before a benchmark that gives every task its own copy of the inputs builds them: the
    copies must fit in this machine's memory (one line naming ``num_tasks`` otherwise)."""
    total = memory_bytes()
    if total is None:
        return
    per_task = sum(x.element_size() * x.nelement() for x, _ in (data.train, data.val,
                                                                  data.test))
    check_size(f"{{num_tasks}} {num_tasks} of {name} copies the {per_task:,}-byte inputs per "
               "task: the copies", num_tasks * per_task, total, unit="bytes",
               fix=f"the limit is this machine's memory; pass {{num_tasks}} <= "
                   f"{max(1, total // (2 * max(per_task, 1)))} (half of it)",
               params=("num_tasks",))


def _build_split_cifar100(num_tasks: int, seed: int, data_root: str | Path | None,
                          class_order_seed: int | None, datasets: tuple[Any, Any] | None = None
                          ) -> tuple[list[Task], dict[str, Any]]:
    if 100 % num_tasks:
        divisors = [d for d in range(1, 101) if 100 % d == 0]
        raise ParamError(f"split-cifar100 needs {{num_tasks}} dividing 100 (tasks of 100/T "
                         f"classes), got {num_tasks}; choose one of {divisors}", "num_tasks")
    if datasets is not None:  # torchvision.datasets.CIFAR100 train and test sets
        from l2bg.data.vision import cifar100_splits

        data = cifar100_splits(*datasets, seed=seed)
    elif data_root is None:
        raise ParamError(f"split-cifar100 needs {{data_root}} DIR holding cifar-100-python/ "
                         f"(download and extract {CIFAR_URL}); there is no embedded CIFAR",
                         "data_root")
    else:
        data = load_cifar100(data_root, seed=seed)
    tasks, info = _split_tasks("split-cifar100", data, num_tasks, 100 // num_tasks, 100,
                               class_order_seed)
    return tasks, {**data.source, **info}


def _build_split_mnist(num_tasks: int, seed: int, data_root: str | Path | None,
                       class_order_seed: int | None) -> tuple[list[Task], dict[str, Any]]:
    data = load_mnist(data_root, seed=seed)
    tasks, info = _split_tasks("split-mnist", data, num_tasks, SPLIT_MNIST_CLASSES_PER_TASK, 10,
                               class_order_seed)
    return tasks, {**data.source, **info}


def _build_pmnist(num_tasks: int, seed: int, data_root: str | Path | None,
                  class_order_seed: int | None) -> tuple[list[Task], dict[str, Any]]:
    data = load_mnist(data_root, seed=seed)
    tasks, info = _pmnist_tasks(data, num_tasks, seed)
    info["class_order_seed"] = None  # pmnist keeps all 10 classes in every task: ignored
    return tasks, {**data.source, **info}


def default_angles(num_tasks: int) -> list[float]:
    """T angles evenly spaced over [0°, 180°): 180·t/T for t = 0..T−1."""
    return [180.0 * t / num_tasks for t in range(num_tasks)]


def rotate(x: Tensor, angle: float, *, chunk: int = 8192) -> Tensor:
    """Square images ``x`` (N, H·W) or (N, H, W), rotated counter-clockwise by ``angle`` degrees
    about the image centre: bilinear sampling (``affine_grid``/``grid_sample``,
    ``align_corners=False``) with zeros outside the image, and exactly ``torch.rot90`` for
    multiples of 90° (0° is an exact copy). Deterministic; float32, the shape it was given."""
    if x.ndim not in (2, 3):
        raise L2BGError(f"rotate: expected images (N, H*W) or (N, H, W), got {tuple(x.shape)}")
    side = math.isqrt(x.shape[-1]) if x.ndim == 2 else x.shape[-1]
    if (x.ndim == 2 and side * side != x.shape[-1]) or (x.ndim == 3 and x.shape[1] != side):
        raise L2BGError(f"rotate: images must be square, got {tuple(x.shape[1:])} features; "
                        "rotated-mnist needs square MNIST-like digits")
    if not math.isfinite(angle):
        raise L2BGError(f"rotate: angle must be a finite number of degrees, got {angle!r}")
    x = x.float()
    quarter = float(angle) / 90.0
    if quarter == round(quarter):
        img = torch.rot90(x.reshape(-1, side, side), int(round(quarter)) % 4, dims=(-2, -1))
        return img.reshape(x.shape)  # rot90 always returns a new tensor, never a view of x
    return _bilinear_rotation(x, math.radians(angle), side, chunk)


def _bilinear_rotation(x: Tensor, rad: float, side: int, chunk: int = 8192) -> Tensor:
    """``rotate`` by sampling: output pixel p reads the input at R(−angle)·p (normalised
    coordinates, x to the right, y downwards), so the content turns counter-clockwise."""
    c, s = math.cos(rad), math.sin(rad)
    theta = torch.tensor([[[c, -s, 0.0], [s, c, 0.0]]], dtype=torch.float32)
    grid = F.affine_grid(theta, [1, 1, side, side], align_corners=False)
    out = torch.empty_like(x)
    for i in range(0, x.shape[0], chunk):
        part = x[i:i + chunk].reshape(-1, 1, side, side)
        rot = F.grid_sample(part, grid.expand(part.shape[0], -1, -1, -1), mode="bilinear",
                            padding_mode="zeros", align_corners=False)
        out[i:i + chunk] = rot.reshape(out[i:i + chunk].shape)
    return out


def check_angles(angles: Sequence[float] | None, num_tasks: int) -> list[float]:
    """The angle of every task: ``angles`` (one finite number per task) or the defaults."""
    if angles is None:
        return default_angles(num_tasks)
    angles = list(angles)
    if len(angles) != num_tasks:
        raise ParamError(f"{{angles}} has {len(angles)} values for {num_tasks} tasks; give one "
                         "angle (degrees) per task", "angles")
    bad = [a for a in angles if isinstance(a, bool) or not isinstance(a, (int, float))
           or not math.isfinite(a)]
    if bad:
        raise ParamError(f"{{angles}} must be finite numbers of degrees, got {bad[0]!r}",
                         "angles")
    return [float(a) for a in angles]


def _build_rotated_mnist(num_tasks: int, seed: int, data_root: str | Path | None,
                         class_order_seed: int | None, angles: Sequence[float] | None = None
                         ) -> tuple[list[Task], dict[str, Any]]:
    angles = check_angles(angles, num_tasks)
    data = load_mnist(data_root, seed=seed)
    check_task_memory("rotated-mnist", data, num_tasks)
    tasks = []
    for t, angle in enumerate(angles):
        splits = [(rotate(x, angle), y.clone()) for x, y in (data.train, data.val, data.test)]
        tasks.append(Task(f"rotated-mnist-{t}", *splits[0], *splits[1], *splits[2],
                          num_classes=10, classes=tuple(range(10))))
    info = {"angles": angles, "rotation": "counter-clockwise about the image centre, bilinear "
            "(affine_grid/grid_sample, align_corners=False), zeros outside",
            "class_order_seed": None}
    return tasks, {**data.source, **info}


register(BenchmarkSpec("pmnist", "permuted MNIST, one shared softmax slot", "mlp", True, 10,
                       None, _build_pmnist))
register(BenchmarkSpec("split-mnist", "5 tasks of 2 digits, per-task heads", "mlp", False, 5,
                       10 // SPLIT_MNIST_CLASSES_PER_TASK, _build_split_mnist))
register(BenchmarkSpec("split-cifar100", "T tasks of 100/T classes (convnet)", "convnet", False,
                       10, 100, _build_split_cifar100, options=("datasets",)))
register(BenchmarkSpec("rotated-mnist", "each task rotates the digits by its own angle, one "
                       "shared softmax slot", "mlp", True, 10, None, _build_rotated_mnist,
                       options=("angles",)))
register(BenchmarkSpec("vdd", "the Visual Decathlon: one task per domain, 64x64 (convnet)",
                       "convnet", False, None, len(DOMAINS), build_vdd,
                       options=("domains", "max_per_class")))


def build_benchmark(
    name: str,
    *,
    num_tasks: int | None = None,
    seed: int = 0,
    data_root: str | Path | None = None,
    class_order_seed: int | None = None,
    angles: Sequence[float] | None = None,
    domains: Sequence[str] | None = None,
    max_per_class: int | None = None,
    datasets: tuple[Any, Any] | None = None,
) -> Benchmark:
    """Build a benchmark's task stream (see ``BENCHMARKS``) from data already on disk.

    ``seed`` draws the train/val(/test) split and the pmnist permutations; ``class_order_seed``
    shuffles the class order of split benchmarks (None: classes in natural order; ignored by
    pmnist). ``angles`` (rotated-mnist only) gives each task's rotation in degrees; ``domains``
    and ``max_per_class`` (vdd only) the decathlon domains in task order and a cap on the
    images read per class; ``datasets`` (split-cifar100 only) its (train, test) sets as
    torchvision-style data sets (``torchvision.datasets.CIFAR100``) instead of ``data_root``.
    Deterministic: the same arguments give bit-identical tensors.
    """
    key = str(name).strip().lower().replace("_", "-")
    if key not in _REGISTRY:
        raise ParamError(f"unknown benchmark {name!r} for {{benchmark}}: choose one of "
                         f"{', '.join(BENCHMARKS)}", "benchmark")
    spec = _REGISTRY.get(key)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ParamError(f"{{seed}} must be an int, got {seed!r}", "seed")
    seed = int(seed)
    if class_order_seed is not None:
        if isinstance(class_order_seed, bool) or not isinstance(class_order_seed,
                                                                (int, np.integer)):
            raise ParamError(f"{{class_order_seed}} must be an int or None, got "
                             f"{class_order_seed!r}", "class_order_seed")
        class_order_seed = int(class_order_seed)
    options = {"angles": angles, "domains": domains, "max_per_class": max_per_class,
               "datasets": datasets}
    given = [k for k, v in options.items() if v is not None and k not in spec.options]
    if given:
        takers = [n for n in _REGISTRY.names() if given[0] in _REGISTRY.get(n).options]
        raise ParamError(f"{{{given[0]}}} applies to {', '.join(takers)}, not {key}; drop it",
                         given[0])
    for listed in (angles, domains):
        if listed is not None and num_tasks is None:
            num_tasks = len(listed)
    num_tasks = _check_num_tasks(key, num_tasks, spec.max_tasks)
    kwargs = {k: v for k, v in options.items() if k in spec.options}
    tasks, source = spec.build(num_tasks, seed, data_root, class_order_seed, **kwargs)
    source.update(benchmark=key, num_tasks=len(tasks), seed=seed,
                  split_generator_seed=derive_seed(seed, "split"))
    return Benchmark(name=key, tasks=tasks, seed=seed, template=spec.template,
                     shared_head=spec.shared_head, source=source)
