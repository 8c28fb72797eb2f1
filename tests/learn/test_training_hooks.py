"""The training extension points of the loop's plugins: ``fit`` calls them for every epoch and
mini-batch of every net a run trains (the independent nets, phase ``independent``, and the
task-nets inside the JointNet, ``jointnet``), in order, with the epoch and iteration counters,
the mini-batch, logits and loss; a net that is not trained (from the cache) calls none; without
such plugins, or with plugins that only observe, training is bit-identical to the plain loop;
a plugin's error stops the training and reaches the caller."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from l2bg.data import Task
from l2bg.learn import plugins
from l2bg.learn.independent import IndependentCache
from l2bg.learn.learner import Learner
from l2bg.learn.plugins import TRAINING_POINTS, FitState, Plugin
from l2bg.learn.training import TrainConfig, fit, make_optimizer
from l2bg.net.jointnet import JointNet
from l2bg.net.templates import mlp

DIM, K = 6, 3
CONFIG = TrainConfig(optimizer="adam", lr=1e-2, epochs=2, batch_size=16)


def template():
    return mlp(input_dim=DIM, hidden=(8,), num_classes=K, shared_head=False)


def data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    return torch.randn(K, DIM, generator=g)[y] + torch.randn(n, DIM, generator=g), y


def tasks(num: int = 3, n: int = 40) -> list[Task]:
    out = []
    for t in range(num):
        (x, y), (xv, yv) = data(n, 3 * t), data(12, 3 * t + 1)
        out.append(Task(f"t{t}", x, y, xv, yv, xv, yv, num_classes=K, classes=tuple(range(K))))
    return out


def new_net(task: str = "a", seed: int = 0) -> JointNet:
    torch.manual_seed(seed)
    net = JointNet(template())
    net.add_task(task, K)
    return net


class Recorder(Plugin):
    """Records every training call with what the state holds at it."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def before_training_epoch(self, s: FitState) -> None:
        self.calls.append(("before_training_epoch", s.phase, s.task, s.epoch))

    def before_training_iteration(self, s: FitState) -> None:
        self.calls.append(("before_training_iteration", s.phase, s.task, s.epoch, s.iteration,
                           s.x.clone(), s.y.clone()))

    def after_forward(self, s: FitState) -> None:
        want = nn.functional.cross_entropy(s.logits, s.y)
        self.calls.append(("after_forward", tuple(s.logits.shape), s.loss.item(), want.item()))

    def after_backward(self, s: FitState) -> None:
        grads = [p.grad for g in s.optimizer.param_groups for p in g["params"]]
        self.calls.append(("after_backward", all(g is not None for g in grads)))

    def after_update(self, s: FitState) -> None:
        self.calls.append(("after_update", s.iteration))

    def after_training_epoch(self, s: FitState) -> None:
        self.calls.append(("after_training_epoch", s.epoch, len(s.history), s.history[-1]))

    def fits(self) -> list[tuple[str, str]]:
        """(phase, task) of every trained net, in order."""
        out = []
        for c in self.calls:
            if c[0] == "before_training_epoch" and c[3] == 0:
                out.append((c[1], c[2]))
        return out


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 40), batch_size=st.integers(1, 50), epochs=st.integers(1, 3))
def test_every_epoch_and_iteration_in_order(n, batch_size, epochs):
    """epochs × ⌈n / batch_size⌉ iterations, each before_training_iteration, after_forward,
    after_backward, after_update, between each epoch's before and after; every epoch's
    mini-batches cover the data once; the loss is the cross-entropy of the logits."""
    x, y = data(n)
    rec = Recorder()
    cfg = CONFIG.replace(epochs=epochs, batch_size=batch_size)
    history = fit(new_net(), "a", x, y, cfg, plugins=[rec], phase="independent")
    iters = math.ceil(n / batch_size)
    names = [c[0] for c in rec.calls]
    per_iter = ["before_training_iteration", "after_forward", "after_backward", "after_update"]
    assert names == (["before_training_epoch", *per_iter * iters, "after_training_epoch"]
                     * epochs)
    assert [c[0] for c in rec.calls if c[0] in plugins.TRAINING_POINTS] == names
    calls = iter(rec.calls)
    for e in range(epochs):
        assert next(calls) == ("before_training_epoch", "independent", "a", e)
        xs, ys = [], []
        for i in range(iters):
            _, phase, task, epoch, it, xb, yb = next(calls)
            assert (phase, task, epoch, it) == ("independent", "a", e, i)
            assert xb.shape[0] == yb.shape[0] == min(batch_size, n - i * batch_size)
            xs.append(xb)
            ys.append(yb)
            _, shape, loss, want = next(calls)
            assert shape == (yb.shape[0], K) and loss == pytest.approx(want, rel=1e-6)
            assert next(calls) == ("after_backward", True)
            assert next(calls) == ("after_update", i)
        order = torch.cat(xs)[:, 0].argsort()
        assert torch.equal(torch.cat(xs)[order], x[x[:, 0].argsort()])
        assert torch.equal(torch.cat(ys)[order], y[x[:, 0].argsort()])
        assert next(calls) == ("after_training_epoch", e, e + 1, history[e])


def reference_fit(net: JointNet, task: str, x, y, cfg: TrainConfig) -> None:
    """The plain loop fit runs (docs/design.md §2.10): seeded shuffles, Adam or SGD."""
    opt = make_optimizer(net.param_groups(task, cfg.lr, cfg.shared_lr_scale), cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    net.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            loss = nn.functional.cross_entropy(net(x[idx], task), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


@pytest.mark.parametrize("cfg", [CONFIG, CONFIG.replace(optimizer="sgd", epochs=3,
                                                        batch_size=7)])
def test_observing_plugins_leave_training_bit_identical(cfg):
    """No plugin, a plugin without training points and a recording plugin give the same
    weights and losses, bit for bit, as the plain loop."""
    x, y = data(50)
    nets = {}
    for name, ps in (("none", ()), ("other", [plugins.LogLines([])]), ("recorder", [Recorder()])):
        nets[name] = new_net()
        fit(nets[name], "a", x, y, cfg, plugins=ps)
    nets["reference"] = new_net()
    reference_fit(nets["reference"], "a", x, y, cfg)
    want = nets["reference"].state_dict()
    for name, net in nets.items():
        got = net.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), name


def test_a_run_fires_for_every_trained_net_in_its_phase():
    """Under Learner.run: each task's independent net (phase independent), then, for a bound
    task, its task-net in the JointNet (jointnet); with the independent nets in the cache a
    second run fires only for the JointNet's training, and its results are the same as the
    run's without the plugin."""
    cache = IndependentCache(None)
    rec = Recorder()
    first = Learner(tasks(), template(), CONFIG, cache=cache, quiet=True,
                    plugins=[rec]).run("full")
    assert rec.fits() == [("independent", "t0"), ("independent", "t1"), ("jointnet", "t1"),
                          ("independent", "t2"), ("jointnet", "t2")]
    iters = math.ceil(40 / CONFIG.batch_size)
    assert sum(c[0] == "after_update" for c in rec.calls) == 5 * CONFIG.epochs * iters
    again = Recorder()
    second = Learner(tasks(), template(), CONFIG, cache=cache, quiet=True,
                     plugins=[again]).run("full")
    assert again.fits() == [("jointnet", "t1"), ("jointnet", "t2")]
    plain = Learner(tasks(), template(), CONFIG, cache=False, quiet=True).run("full")
    for result in (first, second):
        assert result.record.acc_matrix == plain.record.acc_matrix
        assert [r.train_loss for r in result.records] == [r.train_loss for r in plain.records]


def test_independent_strategy_trains_only_independent_nets():
    rec = Recorder()
    Learner(tasks(2), template(), CONFIG, cache=False, quiet=True,
            plugins=[rec]).run("independent")
    assert rec.fits() == [("independent", "t0"), ("independent", "t1")]


def test_nothing_fires_outside_a_run():
    """An independent net trained outside Learner.run (Learner.independent, or a result's
    ``independent`` read after its tasks were restored) fires no training point."""
    rec = Recorder()
    learner = Learner(tasks(2), template(), CONFIG, cache=False, quiet=True, plugins=[rec])
    learner.independent(1)
    assert rec.calls == []
    learner.run("independent")
    assert rec.fits() == [("independent", "t0")]  # t1's net was in the cache


@pytest.mark.parametrize("point", TRAINING_POINTS)
def test_a_plugin_error_stops_training_and_propagates(point):
    """An error at any training point reaches fit's caller (and Learner.run's), with the net's
    mode and frozen parameters restored; after_run still sees the failed run."""

    class Boom(RuntimeError):
        pass

    def boom(state):
        raise Boom(point)

    p = Plugin()
    setattr(p, point, boom)  # an instance's own method counts as an override
    net = new_net()
    net.bind("b", "a", K)
    net.eval()
    x, y = data(20)
    with pytest.raises(Boom, match=point):
        fit(net, "b", x, y, CONFIG.replace(shared_lr_scale=0.0), plugins=[p])
    assert not net.training
    assert all(q.requires_grad for q in net.parameters())

    ended = []

    class End(Plugin):
        def after_run(self, run, result):
            ended.append(result)

    with pytest.raises(Boom, match=point):
        Learner(tasks(2), template(), CONFIG, cache=False, quiet=True,
                plugins=[End(), p]).run("full")
    assert ended == [None]
