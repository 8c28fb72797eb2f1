"""``to_avalanche`` refuses a task whose training inputs are drawn per mini-batch (a
``train_transform``), before it imports Avalanche, with one line naming the fix; the fix it names
(crops drawn once, no transform) gives a task it takes."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from l2bg.avalanche.convert import to_avalanche
from l2bg.base.errors import L2BGError
from l2bg.data import Benchmark, Task
from l2bg.data.augment import RandomCropFlip


def _task(name, transform):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(6) % 2
    side = 6 if transform is not None else 4
    return Task(name, torch.randn(6, 1, side, side, generator=g), y,
                torch.randn(4, 1, 4, 4, generator=g), y[:4].clone(),
                torch.randn(4, 1, 4, 4, generator=g), y[:4].clone(), num_classes=2,
                train_transform=transform)


def test_a_task_with_a_train_transform_is_refused_in_one_line():
    tasks = [_task("plain", None), _task("crops", RandomCropFlip(4))]
    with pytest.raises(L2BGError, match="task crops draws its training inputs per mini-batch"
                       ) as info:
        to_avalanche(Benchmark("b", tasks, 0, "convnet", False, {}))
    message = str(info.value)
    assert "\n" not in message and "RandomCropFlip" in message and "drawn once" in message


@pytest.mark.skipif(importlib.util.find_spec("avalanche") is None,
                    reason="needs Avalanche (make test-vision)")
def test_the_named_fix_converts():
    task = _task("crops", RandomCropFlip(4))
    once = dataclasses.replace(task, x_train=task.train_transform(
        task.x_train, torch.Generator().manual_seed(0)), train_transform=None)
    bm = to_avalanche([once])
    assert [e.task_label for e in bm.train_stream] == [0]
