"""An Avalanche experience's training samples re-read every time a mini-batch is drawn, so its
random train transforms are drawn afresh every epoch, as Avalanche's own strategies draw them.

:class:`DatasetRedraw` is the data layer's re-read (:class:`l2bg.data.redraw.ItemRedraw`, which
seeds every draw from l2bg's seed) reading an Avalanche item (the current, train, transform
group applied) as :func:`~l2bg.avalanche.convert.dataset_tensors` does.

Avalanche 0.6 does not say publicly whether a data set's current transform group (or the data set
under it) draws anything at random, so :func:`reads_differ` asks the data set itself: it reads
a few items twice, under two seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor

from l2bg.base.errors import ParamError
from l2bg.data.redraw import ItemRedraw, item_input, read_items, seeded_rngs

__all__ = ["AUGMENT", "DatasetRedraw", "augment_mode", "reads_differ", "seeded_rngs"]

#: L2BGStrategy's ``augment`` choices: re-read per epoch when a re-read can differ ("auto"),
#: always ("per-epoch"), or read once ("once": every epoch sees the first read)
AUGMENT = ("auto", "per-epoch", "once")

#: the items :func:`reads_differ` reads twice
PROBE_ITEMS = 16


def _sample(dataset: Any, item: int, what: str) -> Tensor:
    """The input of ``dataset[item]`` (its train transforms applied) as a tensor."""
    return torch.as_tensor(item_input(dataset, item, what, "(x, y, task label)",
                                      "a classification data set"))


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
            reads.append(read_items(dataset, items, partial(_sample, what=what)))
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


class DatasetRedraw(ItemRedraw):
    """:class:`~l2bg.data.redraw.ItemRedraw` of an Avalanche data set: row r re-read as
    ``dataset[items[r]]`` (train transforms drawn afresh) and mapped with ``inputs`` (the model's
    input function, e.g. flattening for an MLP). Dropped from a task once it is learned (its data
    set is not pickled with the strategy's checkpoints)."""

    def __init__(self, dataset: Any, items: Tensor, inputs: Callable[[Tensor], Tensor],
                 what: str) -> None:
        super().__init__(dataset, items, partial(_sample, what=what), output=inputs, what=what,
                         about="the data set's current (train) transform group")
