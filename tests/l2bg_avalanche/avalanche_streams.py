"""Tiny task streams for the Avalanche suites: Gaussian blobs, each task its own feature
permutation and centres, so tasks conflict a little and every net trains in milliseconds."""

from __future__ import annotations

import torch

from l2bg.data import Task
from l2bg.learn.training import TrainConfig
from l2bg.net.templates import mlp

DIM, CLASSES = 12, 3
CONFIG = TrainConfig(optimizer="adam", lr=1e-2, epochs=2, batch_size=32)


def template(shared_head: bool = False):
    return mlp(input_dim=DIM, hidden=(16, 16), num_classes=CLASSES, shared_head=shared_head)


def blobs(t: int, n: int, split: int = 0, classes: int = CLASSES) -> tuple[torch.Tensor, ...]:
    """``n`` samples of task ``t`` (its centres and permutation) with the noise of ``split``."""
    g = torch.Generator().manual_seed(t)
    centres = 2.0 * torch.randn(classes, DIM, generator=g)
    perm = torch.randperm(DIM, generator=g)
    y = torch.arange(n) % classes
    noise = torch.randn(n, DIM, generator=torch.Generator().manual_seed(100 * t + split + 1))
    return (centres[y] + noise)[:, perm].float(), y.long()


def tasks(num: int = 3, n: tuple[int, int, int] = (90, 30, 30)) -> list[Task]:
    out = []
    for t in range(num):
        (x, y), (xv, yv), (xt, yt) = (blobs(t, k, s) for s, k in enumerate(n))
        out.append(Task(f"blob-{t}", x, y, xv, yv, xt, yt, num_classes=CLASSES,
                        classes=tuple(range(CLASSES))))
    return out


def noise(x: torch.Tensor) -> torch.Tensor:
    """A random train transform drawn from torch's generator: noise on every feature but the
    first, which keeps telling the samples apart."""
    out = x.clone()
    out[1:] += 0.5 * torch.randn(x.shape[0] - 1)
    return out


def py_noise(x: torch.Tensor) -> torch.Tensor:
    """A random train transform drawn from Python's ``random`` (feature 0 kept)."""
    import random

    out = x.clone()
    out[1:] += random.gauss(0.0, 0.5)
    return out


def doubled(x: torch.Tensor) -> torch.Tensor:
    """A train transform that draws nothing."""
    return 2 * x


def with_train_transform(stream, transform) -> list:
    """The experiences of ``stream`` with ``transform`` as their current (train) transform."""
    out = []
    for exp in stream:
        exp.dataset = exp.dataset.replace_current_transform_group(transform)
        out.append(exp)
    return out


def shifted(tasks: list[Task], shift: list[int]):
    """An Avalanche benchmark of ``tasks`` (task label t for task t) whose class ids start at
    ``shift[t]``, in every stream (train, valid, test)."""
    from avalanche.benchmarks.scenarios.deprecated.generators import tensors_benchmark

    def split(name: str) -> list:
        return [(getattr(t, f"x_{name}"), getattr(t, f"y_{name}") + s)
                for t, s in zip(tasks, shift, strict=True)]

    return tensors_benchmark(train_tensors=split("train"), test_tensors=split("test"),
                             other_streams_tensors={"valid": split("val")},
                             task_labels=list(range(len(tasks))))
