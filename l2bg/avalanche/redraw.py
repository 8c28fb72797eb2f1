"""An Avalanche experience's training samples re-read every time a mini-batch is drawn, so its
random train transforms are drawn afresh every epoch, as Avalanche's own strategies draw them.

:class:`DatasetRedraw` is an l2bg batch transform (:mod:`l2bg.data.augment`): given the rows of a
mini-batch (``index``), it reads the data-set item behind each row (Avalanche applies the
current, train, transform group) and converts it as :func:`~l2bg.avalanche.convert.dataset_tensors`
does. Its random draws are reproducible from l2bg's seed: each mini-batch seeds torch's (CPU),
Python's and NumPy's global generators from a number drawn from ``gen`` inside
:func:`seeded_rngs`, which restores them afterwards, so nothing outside sees a draw.

Avalanche 0.6 does not say publicly whether a data set's current transform group (or the data set
under it) draws anything at random, so :func:`reads_differ` asks the data set itself: it reads
a few items twice, under two seeds.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from l2bg.base.errors import L2BGError, ParamError

__all__ = ["AUGMENT", "DatasetRedraw", "augment_mode", "reads_differ", "seeded_rngs"]

#: L2BGStrategy's ``augment`` choices: re-read per epoch when a re-read can differ ("auto"),
#: always ("per-epoch"), or read once ("once": every epoch sees the first read)
AUGMENT = ("auto", "per-epoch", "once")

#: the items :func:`reads_differ` reads twice
PROBE_ITEMS = 16


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


def _sample(dataset: Any, item: int, what: str) -> Tensor:
    """The input of ``dataset[item]`` (its train transforms applied) as a tensor."""
    element = dataset[item]
    if not isinstance(element, tuple | list) or len(element) < 2:
        raise L2BGError(f"{what}: item {item} is {type(element).__name__}, expected "
                        "(x, y, task label); give a classification data set")
    return torch.as_tensor(element[0])


def read_items(dataset: Any, items: list[int], what: str) -> Tensor:
    """The inputs of ``dataset``'s ``items``, stacked, float32 (as dataset_tensors reads them)."""
    return torch.stack([_sample(dataset, i, what) for i in items]).float()


def reads_differ(dataset: Any, what: str, probe: int = PROBE_ITEMS) -> bool:
    """Whether reading ``dataset``'s first ``probe`` items under two seeds gives different
    inputs: whether its transforms (or the data set) draw at random. A random transform whose
    draws leave all the probed items unchanged (e.g. flips of symmetric images) reads as fixed."""
    items = list(range(min(probe, len(dataset))))
    if not items:
        return False
    reads = []
    for seed in (1, 2):
        with seeded_rngs(seed):
            reads.append(read_items(dataset, items, what))
    return not torch.equal(reads[0], reads[1])


def augment_mode(augment: str, dataset: Any, what: str) -> str:
    """"per-epoch" or "once" for ``dataset`` under the ``augment`` option ("auto": per-epoch
    exactly when :func:`reads_differ`)."""
    if augment == "auto":
        return "per-epoch" if reads_differ(dataset, what) else "once"
    return augment


def check_augment(augment: Any) -> str:
    """``augment`` if it is one of :data:`AUGMENT`, else a one-line error naming it."""
    if not isinstance(augment, str) or augment not in AUGMENT:
        raise ParamError(f"{{augment}} must be one of {', '.join(AUGMENT)}, got {augment!r}",
                         "augment")
    return augment


class DatasetRedraw:
    """A batch transform that re-reads row r's sample as ``dataset[items[r]]`` (train
    transforms drawn afresh) and maps it with ``inputs`` (the model's input function, e.g.
    flattening for an MLP); ``x`` gives only the shape, device and count. ``items``: the data-set
    item of each of the task's training rows (a stratified subset when a validation part was
    split off). Dropped from a task once it is learned (its data set is not pickled with the
    strategy's checkpoints)."""

    def __init__(self, dataset: Any, items: Tensor, inputs: Callable[[Tensor], Tensor],
                 what: str) -> None:
        self.dataset = dataset
        self.items = items.detach().to("cpu", torch.int64)
        self.inputs = inputs
        self.what = what

    def __call__(self, x: Tensor, gen: torch.Generator, index: Tensor | None = None) -> Tensor:
        if index is None or index.numel() != x.shape[0]:
            raise L2BGError(f"{self.what}: DatasetRedraw re-reads its samples by row; call it "
                            "with index= the rows of x_train that x holds (as fit does)")
        seed = int(torch.randint(2**62, (1,), generator=gen))
        items = self.items[index.detach().cpu()].tolist()
        with seeded_rngs(seed):
            out = self.inputs(read_items(self.dataset, items, self.what))
        if tuple(out.shape) != tuple(x.shape):
            raise L2BGError(f"{self.what}: a re-read mini-batch has shape {tuple(out.shape)}, "
                            f"the first read {tuple(x.shape)}; give train transforms that keep "
                            "the sample shape (e.g. crop to a fixed size)")
        return out.to(x.device)

    def to_dict(self) -> dict[str, Any]:
        return {"name": "DatasetRedraw", "dataset": type(self.dataset).__name__,
                "items": int(self.items.numel()),
                "drawn": "the data set's train transforms, per sample, every time a mini-batch "
                         "is drawn (every epoch), seeded from l2bg's seed"}
