"""Batch transforms drawn afresh every time a mini-batch is drawn: training augmentation.

A batch transform is a callable ``transform(x, gen, index=None) -> Tensor`` that maps a batch
``x`` of stored training samples ``(B, ...)`` to a batch of model-shaped samples, drawing its
random choices from the ``torch.Generator`` ``gen`` (so a run is reproducible from its seed), plus
``to_dict()`` describing it for results.json and cache keys. ``index`` holds the rows of the
task's ``x_train`` that ``x`` is (``fit`` always passes it): a transform that re-reads its samples
from a source by row (:class:`l2bg.data.redraw.ItemRedraw`) uses it, the others
ignore it or pass it on. A :class:`~l2bg.data.Task` holds one
as ``train_transform``; :func:`l2bg.learn.training.fit` applies it to every mini-batch, so every
epoch sees new draws. Transforms are frozen dataclasses, so they pickle and compare by value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from l2bg.base.errors import L2BGError

__all__ = ["BatchTransform", "RandomCropFlip", "describe", "random_crop_flip_reference"]


class BatchTransform(Protocol):
    """``transform(x, gen, index=None)``: a batch of stored samples (rows ``index`` of the
    task's ``x_train``) to model-shaped ones; ``to_dict()``."""

    def __call__(self, x: Tensor, gen: torch.Generator, index: Tensor | None = None) -> Tensor:
        ...

    def to_dict(self) -> dict[str, Any]: ...


def describe(transform: BatchTransform) -> str:
    """The canonical text of a transform's ``to_dict()`` (sorted keys): what caches key on."""
    return json.dumps(transform.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class RandomCropFlip:
    """A ``size``×``size`` crop at an offset drawn per sample and, with ``flip``, a horizontal
    flip drawn per sample (probability 1/2): the residual-adapters training augmentation.

    Draws, from ``gen`` in this order: B row offsets, B column offsets, B flip bits (only with
    ``flip``). Vectorised: one gather over the flattened H·W by index arithmetic (row · W +
    column), no loop over samples.
    """

    size: int
    flip: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise L2BGError(f"RandomCropFlip size must be an int >= 1, got {self.size!r}")

    def draws(self, x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(row offsets, column offsets, flip bits) of each sample, drawn on the CPU."""
        if x.dim() != 4:
            raise L2BGError(f"RandomCropFlip takes a (B, C, H, W) batch, got shape "
                            f"{tuple(x.shape)}; store the training images as (C, H, W)")
        b, _, h, w = x.shape
        if h < self.size or w < self.size:
            raise L2BGError(f"RandomCropFlip({self.size}) cannot crop {h}×{w} images; store "
                            f"training images at least {self.size}×{self.size}")
        top = torch.randint(h - self.size + 1, (b,), generator=gen)
        left = torch.randint(w - self.size + 1, (b,), generator=gen)
        flips = (torch.randint(2, (b,), generator=gen).bool() if self.flip
                 else torch.zeros(b, dtype=torch.bool))
        return top, left, flips

    def __call__(self, x: Tensor, gen: torch.Generator, index: Tensor | None = None) -> Tensor:
        top, left, flips = self.draws(x, gen)
        b, c, h, w = x.shape
        s = self.size
        step = torch.arange(s)
        cols = left[:, None] + step
        cols = torch.where(flips[:, None], cols.flip(1), cols)                 # (B, s)
        at = ((top[:, None] + step) * w)[:, :, None] + cols[:, None, :]         # (B, s, s)
        at = at.to(x.device).view(b, 1, s * s).expand(b, c, s * s)
        return x.reshape(b, c, h * w).gather(2, at).view(b, c, s, s)

    def to_dict(self) -> dict[str, Any]:
        return {"name": "RandomCropFlip", "size": self.size, "flip": self.flip,
                "drawn": "per sample, every time a mini-batch is drawn (every epoch)"}


def random_crop_flip_reference(t: RandomCropFlip, x: Tensor, gen: torch.Generator) -> Tensor:
    """:class:`RandomCropFlip` one sample at a time with slicing (the reference of its gather)."""
    top, left, flips = t.draws(x, gen)
    s = t.size
    out = x.new_empty((x.shape[0], x.shape[1], s, s))
    for i in range(x.shape[0]):
        crop = x[i, :, int(top[i]):int(top[i]) + s, int(left[i]):int(left[i]) + s]
        out[i] = crop.flip(-1) if bool(flips[i]) else crop
    return out
