"""Training samples re-read from their data set every time a mini-batch is drawn, so a data
set's random per-sample transforms (torchvision's ``RandomCrop``, Avalanche's train transform
group) are drawn afresh every epoch.

:class:`ItemRedraw` is a batch transform (:mod:`l2bg.data.augment`): given the rows of a
mini-batch (``index``), it reads the data-set item behind each row with a per-sample ``read``
and maps the stacked batch with ``output``. Its random draws are reproducible from l2bg's seed:
each mini-batch seeds torch's (CPU), Python's and NumPy's global generators from a number drawn
from ``gen`` inside :func:`seeded_rngs`, which restores them afterwards, so nothing outside sees
a draw. Used by :mod:`l2bg.data.vision` (``train_transform``) and :mod:`l2bg.avalanche.redraw`.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from l2bg.base.errors import L2BGError

__all__ = ["ItemRedraw", "item_input", "read_items", "seeded_rngs", "stable_repr"]

#: ``read(dataset, item)``: one item's (transformed) input as a tensor
Read = Callable[[Any, int], Tensor]


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """torch's CPU, Python's and NumPy's global generators seeded from ``seed`` inside, their
    states restored on exit (CUDA generators untouched)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def item_input(dataset: Any, item: int, what: str, expected: str, kind: str) -> Any:
    """The input of ``dataset[item]`` (its first element, as the data set gives it); an item
    that is not a sequence of at least (input, label) is a one-line error naming ``expected``
    (e.g. "(image, label)") and the ``kind`` of data set to give."""
    element = dataset[item]
    if not isinstance(element, tuple | list) or len(element) < 2:
        raise L2BGError(f"{what}: item {item} is a {type(element).__name__}, expected "
                        f"{expected}; give {kind}")
    return element[0]


def read_items(dataset: Any, items: list[int], read: Read) -> Tensor:
    """``read(dataset, i)`` of each of ``items``, stacked, float32."""
    return torch.stack([read(dataset, i) for i in items]).float()


def stable_repr(obj: Any) -> str:
    """``repr(obj)`` without memory addresses (``<function f at 0x7f..>`` reads ``<function
    f>``), so a description (a cache key's text) is the same in every process."""
    return re.sub(r" (?:object )?at 0x[0-9a-fA-F]+", "", repr(obj))


class ItemRedraw:
    """A batch transform that re-reads row r's sample as ``read(dataset, items[r])`` (random
    per-sample transforms drawn afresh) and maps the stacked batch with ``output`` (default:
    as read); ``x`` gives only the shape, device and count, and a re-read must keep x's shape.
    ``items``: the data-set item of each of the task's training rows (a stratified subset when a
    validation part was split off). ``about`` describes ``read`` in :meth:`to_dict` (default its
    :func:`stable_repr`); ``what`` names the task in errors. It pickles when its data set and
    ``read`` do."""

    def __init__(self, dataset: Any, items: Tensor, read: Read, *,
                 output: Callable[[Tensor], Tensor] | None = None, what: str = "re-read",
                 about: str | None = None) -> None:
        self.dataset = dataset
        self.items = torch.as_tensor(items).detach().to("cpu", torch.int64)
        self.read = read
        self.output = output
        self.what = what
        self.about = stable_repr(read) if about is None else about

    def __call__(self, x: Tensor, gen: torch.Generator, index: Tensor | None = None) -> Tensor:
        if index is None or index.numel() != x.shape[0]:
            raise L2BGError(f"{self.what}: {type(self).__name__} re-reads its samples by row; "
                            "call it with index= the rows of x_train that x holds (as fit does)")
        seed = int(torch.randint(2**62, (1,), generator=gen))
        items = self.items[index.detach().cpu()].tolist()
        with seeded_rngs(seed):
            out = read_items(self.dataset, items, self.read)
            if self.output is not None:
                out = self.output(out)
        if tuple(out.shape) != tuple(x.shape):
            raise L2BGError(f"{self.what}: a re-read mini-batch has shape {tuple(out.shape)}, "
                            f"the first read {tuple(x.shape)}; give train transforms that keep "
                            "the sample shape (e.g. crop to a fixed size)")
        return out.to(x.device)

    def to_dict(self) -> dict[str, Any]:
        digest = hashlib.sha1(self.items.numpy().tobytes()).hexdigest()[:12]
        return {"name": type(self).__name__, "dataset": type(self.dataset).__name__,
                "items": int(self.items.numel()), "items_sha1": digest, "read": self.about,
                "drawn": "per sample, every time a mini-batch is drawn (every epoch), seeded "
                         "from l2bg's seed"}
