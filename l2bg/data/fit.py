"""Bring a benchmark's inputs to the shape a template takes: the one place data meet templates.

``l2bg run --template`` puts any image benchmark on any template; :func:`fit_benchmark` makes the
tasks' samples the template's ``input_shape``:

* a flat template (``(D,)``, the mlp) takes the samples flattened (D values);
* an image template (``(C, H, W)``) takes images: a flat sample of s² values is a one-channel
  s×s image (MNIST, the embedded 8×8 digits), one channel is replicated to C when the template
  wants more, and the side is brought to H×W by zero padding, centred, when the image is
  smaller by at most a quarter of the side (MNIST's 28 to 32), else by bilinear resizing
  (antialiased when shrinking; MNIST's 28 to 64, the 8×8 digits to 32).

Inputs already of the template's shape are passed through untouched (the same tensors). A task
with a ``train_transform`` (its stored training samples larger, e.g. 72×72 for random 64 crops)
keeps its stored samples; its transform is composed with the fit (:class:`FitAfter`), so every
drawn crop is brought to the template's shape exactly as the validation and test samples are.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from l2bg.base.errors import ParamError
from l2bg.data.augment import BatchTransform
from l2bg.data.tasks import Benchmark, Task

__all__ = ["FitAfter", "fit_benchmark", "fit_task", "fit_tensor"]


def _as_image(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    if len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        return (1, math.isqrt(shape[0]), math.isqrt(shape[0]))
    return None


def fit_tensor(x: Tensor, shape: Sequence[int], what: str = "inputs") -> Tensor:
    """``x`` (a batch) with its samples brought to ``shape`` (see the module docstring)."""
    shape, have = tuple(int(d) for d in shape), tuple(x.shape[1:])
    if have == shape:
        return x
    if len(shape) == 1:
        if math.prod(have) != shape[0]:
            raise ParamError(f"{what} have {math.prod(have)} values per sample ({have}); the "
                             f"template takes {shape[0]}: choose a {{template}} sized to the "
                             "data", "template")
        return x.reshape(x.shape[0], -1)
    image = _as_image(have)
    if len(shape) != 3 or image is None:
        raise ParamError(f"{what} of shape {have} cannot become {shape}: an image template "
                         "needs (C, H, W) images or flat square ones; choose {template} mlp",
                         "template")
    x = x.reshape(x.shape[0], *image)
    c, h, w = shape
    if image[0] != c:
        if image[0] != 1:
            raise ParamError(f"{what} have {image[0]} channels, the template {c}; only one "
                             "channel is replicated: choose a {template} with "
                             f"in_channels={image[0]}", "template")
        x = x.expand(-1, c, -1, -1)
    ih, iw = image[1:]
    if (ih, iw) != (h, w):
        dh, dw = h - ih, w - iw
        if 0 <= dh <= h // 4 and 0 <= dw <= w // 4:
            x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
        else:
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                              antialias=ih > h or iw > w)
    return x.contiguous()


@dataclass(frozen=True)
class FitAfter:
    """A batch transform followed by :func:`fit_tensor` to ``shape``: a task's
    ``train_transform`` on a template of another input shape."""

    transform: BatchTransform
    shape: tuple[int, ...]

    def __call__(self, x: Tensor, gen: torch.Generator, index: Tensor | None = None) -> Tensor:
        return fit_tensor(self.transform(x, gen, index=index), self.shape,
                          "transformed training inputs")

    def to_dict(self) -> dict[str, Any]:
        return {"name": "FitAfter", "transform": self.transform.to_dict(),
                "shape": list(self.shape)}


def fit_task(task: Task, shape: Sequence[int]) -> Task:
    """``task`` with the samples of every split brought to ``shape`` (with a
    ``train_transform``: x_val and x_test, and the transform composed with the fit)."""
    shape = tuple(int(d) for d in shape)
    if tuple(task.input_shape) == shape:
        return task
    what = f"task {task.name}'s inputs"
    moved: dict[str, Any] = {f"x_{s}": fit_tensor(getattr(task, f"x_{s}"), shape, what)
                             for s in ("val", "test")}
    if task.train_transform is None:
        moved["x_train"] = fit_tensor(task.x_train, shape, what)
    else:
        moved["train_transform"] = FitAfter(task.train_transform, shape)
    return dataclasses.replace(task, **moved)


def fit_benchmark(bench: Benchmark, shape: Sequence[int] | None) -> Benchmark:
    """``bench`` with every task's samples of ``shape`` (None: unchanged); the source record
    says how (``input_fit``)."""
    if shape is None or all(tuple(t.input_shape) == tuple(shape) for t in bench.tasks):
        return bench
    tasks = [fit_task(t, shape) for t in bench.tasks]
    fit: dict[str, Any] = {
        "from": list(bench.tasks[0].input_shape), "to": [int(d) for d in shape],
        "how": "l2bg.data.fit: flatten; or flat s*s -> 1xsxs, channel replication, centred "
               "zero padding up to a quarter of the side, else bilinear resizing"}
    composed = {t.name: t.train_transform.to_dict() for t in tasks
                if t.train_transform is not None}
    if composed:
        fit["train_transforms"] = composed  # each drawn training batch is fitted after it
    source: dict[str, Any] = {**bench.source, "input_fit": fit}
    return dataclasses.replace(bench, tasks=tasks, source=source)
