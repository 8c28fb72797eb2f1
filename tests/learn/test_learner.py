"""Bind-Grow-Step on small real task streams (embedded MNIST digits)."""

import pytest
import torch

from l2bg.base.errors import L2BGError
from l2bg.data import Task, build_benchmark
from l2bg.learn.independent import IndependentCache
from l2bg.learn.learner import GrowStep, Learner
from l2bg.learn.training import default_config
from l2bg.net.templates import mlp


@pytest.fixture(scope="module")
def digits():
    return build_benchmark("pmnist", num_tasks=1, seed=0).tasks[0]


def permuted(base: Task, name: str, perm: torch.Tensor) -> Task:
    def p(x):
        return x[:, perm]

    return Task(name, p(base.x_train), base.y_train, p(base.x_val), base.y_val, p(base.x_test),
                base.y_test, base.num_classes)


def small_learner(tasks, **kw):
    template = mlp(input_dim=784, hidden=(64, 64), num_classes=10, shared_head=True)
    config = default_config("mlp", epochs=kw.pop("epochs", 2), batch_size=128)
    return Learner(tasks, template, config, benchmark="test", seed=0,
                   cache=IndependentCache(None), rsa_samples=kw.pop("rsa_samples", 200), **kw)


@pytest.mark.slow
def test_near_copy_binds_to_its_source(digits):
    g = torch.Generator().manual_seed(5)
    p_unrelated, p_a = torch.randperm(784, generator=g), torch.randperm(784, generator=g)
    p_near = p_a.clone()
    swap = torch.randperm(784, generator=g)[:20]
    p_near[swap] = p_near[swap.flip(0)]  # a few pixels swapped
    tasks = [permuted(digits, "unrelated", p_unrelated), permuted(digits, "A", p_a),
             permuted(digits, "near-A", p_near)]
    # A grows every slot, so its task-net shares nothing with the unrelated task
    seq = [GrowStep(delta=1.0), GrowStep(delta=0.5)]
    result = small_learner(tasks, epochs=3).run("l2bg", sequence=seq)
    rec = result.record["tasks"][2]
    assert rec["bind_to"] == "A"
    s_a, s_u = rec["conflict"]["A"]["score"], rec["conflict"]["unrelated"]["score"]
    assert s_a < 0.6 * s_u
    assert len(rec["conflict"]["A"]["layers"]) == 3  # fc1, fc2, head
    assert result.record["rsa_backend"] == "torch"
    for key in ("activations", "rsa", "training", "evaluation", "independent"):
        assert result.record["timings"][key] >= 0


@pytest.mark.slow
def test_grow_sequence_is_followed_and_recorded(digits):
    g = torch.Generator().manual_seed(1)
    tasks = [permuted(digits, f"t{i}", torch.randperm(784, generator=g)) for i in range(3)]
    learner = small_learner(tasks, epochs=1)
    seq = [GrowStep(delta=1.0), GrowStep(delta=0.0, bind_to="t0")]
    r = learner.run("l2bg", sequence=seq).record
    assert r["tasks"][1]["grown_slots"] == ["fc1", "fc2", "head"]
    assert r["tasks"][1]["delta"] == 1.0
    assert r["tasks"][2]["bind_to"] == "t0" and r["tasks"][2]["grown_slots"] == []
    assert r["grow_sequence"][2] == {"task": "t2", "bind_to": "t0", "delta": 0.0,
                                     "grown_slots": []}
    assert len(r["acc_matrix"]) == 3 and r["acc_matrix"][0][2] is None
    # the independent nets were trained once and reused by the second run
    r2 = learner.run("random").record
    assert r2["cache"]["misses"] == 3 and r2["cache"]["hits"] >= 3
    # random: seeded, so the same run twice makes the same decisions
    assert learner.run("random").record["grow_sequence"] == r2["grow_sequence"]


def test_bad_sequences_are_rejected(digits):
    tasks = [permuted(digits, f"t{i}", torch.arange(784)) for i in range(3)]
    learner = small_learner(tasks, epochs=1)
    with pytest.raises(L2BGError, match="one step per task after the first"):
        learner.run("l2bg", sequence=[GrowStep(delta=0.5)])
    with pytest.raises(L2BGError, match=r"\[0, 1\]"):
        learner.run("l2bg", delta=1.5)
    with pytest.raises(L2BGError, match="unknown strategy"):
        learner.run("bogus")
    with pytest.raises(L2BGError, match="exceeds the"):
        small_learner(tasks, rsa_samples=10_000)


@pytest.mark.slow
def test_forced_bind_to_unlearned_task_is_rejected(digits):
    tasks = [permuted(digits, f"t{i}", torch.arange(784)) for i in range(2)]
    with pytest.raises(L2BGError, match="not a learned task"):
        small_learner(tasks, epochs=1).run("l2bg", sequence=[GrowStep(delta=0.5,
                                                                      bind_to="t1")])


def test_shared_with_frozen_layers_and_no_head_is_rejected(digits):
    tasks = [permuted(digits, f"t{i}", torch.arange(784)) for i in range(2)]
    learner = small_learner(tasks)
    learner.config = learner.config.replace(shared_lr_scale=0.0)
    with pytest.raises(L2BGError, match="nothing to train"):
        learner.run("shared")
