"""Golden check: the refactored loop makes the decisions, and reaches the parameter counts and
accuracies, recorded before it (tests/golden/pmnist-3tasks.json, real MNIST test digits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from l2bg.learn.independent import IndependentCache
from l2bg.learn.learner import GrowStep
from l2bg.learn.settings import Settings

GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "pmnist-3tasks.json").read_text())


@pytest.fixture(scope="module")
def learner(mnist_dir):
    settings = Settings("pmnist", data_root=str(mnist_dir), tasks=3, epochs=1, seed=0)
    return settings.learner(settings.build(), IndependentCache(None))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", sorted(GOLDEN["runs"]))
def test_same_decisions_params_and_accuracies_as_recorded(strategy, learner):
    torch.set_num_threads(2)
    want = GOLDEN["runs"][strategy]
    seq = [GrowStep(delta=0.5)] * 2 if strategy == "l2bg" else None
    r = learner.run(strategy, sequence=seq).record
    slots = r["slots"]
    got = [[g["task"], g["bind_to"], [slots.index(s) if isinstance(s, str) else s
                                      for s in g["grown_slots"]]] for g in r["grow_sequence"]]
    assert got == want["decisions"]
    assert r["params"] == want["params"]
    assert [t["params"] for t in r["tasks"]] == want["task_params"]
    for key in ("acc_matrix", "acc_matrix_val"):
        for row_got, row_want in zip(r[key], want[key], strict=True):
            for a, b in zip(row_got, row_want, strict=True):
                assert (a is None and b is None) or abs(a - b) <= 0.01, (key, a, b)
