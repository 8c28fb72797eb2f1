"""A user template (module_template) through Learner: the user's TrainConfig, and independent
nets cached on disk that load back with the template."""

from __future__ import annotations

import torch
from activations import Block
from torch import nn

from l2bg.net.modules import module_template


def factory():
    slots = {"stem": nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU()),
             "block": Block(3), "pool": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())}
    return module_template(slots, name="tiny", expandable=["stem", "block"],
                           head=lambda n: nn.Linear(3, n), input_shape=(1, 4, 4))


def test_learner_runs_a_user_template_and_reloads_cached_nets(tmp_path):
    """A user template trains through Learner with the user's TrainConfig; a second Learner on
    the same cache directory loads the independent nets (saved from the user template) instead
    of training them again."""
    from l2bg.data import Task
    from l2bg.learn.independent import IndependentCache
    from l2bg.learn.learner import Learner
    from l2bg.learn.training import TrainConfig

    g = torch.Generator().manual_seed(0)

    def task(name):
        xs = [torch.randn(n, 1, 4, 4, generator=g) for n in (24, 12, 12)]
        ys = [(x.flatten(1).sum(1) > 0).long() + (x[:, 0, 0, 0] > 0).long() for x in xs]
        return Task(name, xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], num_classes=3)

    tasks = [task("u0"), task("u1")]
    config = TrainConfig(optimizer="sgd", lr=0.05, epochs=1, batch_size=8)
    records = []
    for _ in range(2):
        cache = IndependentCache(tmp_path / "cache")
        learner = Learner(tasks, factory(), config, cache=cache, quiet=True)
        result = learner.run("l2bg", delta=0.5)
        records.append((cache.hits, cache.misses, result.record["acc_matrix"]))
    assert records[0][1] == 2
    assert records[1][1] == 0 and records[1][0] >= 2
    assert records[0][2] == records[1][2]
