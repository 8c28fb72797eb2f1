"""Avalanche's epoch and iteration callbacks fire under L2BGStrategy, for every l2bg training
iteration of an experience (its independent net's and, when it binds, its JointNet training),
in Avalanche's own order (the order Avalanche's Naive calls them), so Avalanche's training
metrics (loss, accuracy, timing) and its clock see l2bg's training: the epoch loss is l2bg's,
the clock counts l2bg's iterations, and shapes follow the model's class ids."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("avalanche")

import avalanche_streams as streams  # noqa: E402
import torch  # noqa: E402
from avalanche.core import SupervisedPlugin  # noqa: E402
from avalanche.evaluation.metrics import (  # noqa: E402
    accuracy_metrics,
    loss_metrics,
    timing_metrics,
)
from avalanche.models import SimpleMLP  # noqa: E402
from avalanche.training import Naive  # noqa: E402
from avalanche.training.plugins import EvaluationPlugin  # noqa: E402

from l2bg.avalanche import L2BGStrategy, to_avalanche  # noqa: E402
from l2bg.base.errors import ParamError  # noqa: E402
from l2bg.learn.plugins import Plugin  # noqa: E402

EPOCH = ["before_training_epoch"] + [
    "before_training_iteration", "before_forward", "after_forward", "before_backward",
    "after_backward", "before_update", "after_update", "after_training_iteration"] + [
    "after_training_epoch"]
EVENTS = ("before_training_exp", *dict.fromkeys(EPOCH), "after_training_exp")


class Callbacks(SupervisedPlugin):
    """Records every training callback (name, l2bg phase) and what the metrics read at
    after_forward (the output's width, the targets, the task labels, the prediction)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str | None]] = []
        self.batches: list[tuple[int, list[int], set[int], torch.Tensor]] = []


def _recorder(name: str):
    def record(self, strategy, **kwargs):
        self.seen.append((name, getattr(strategy, "l2bg_phase", None)))
        if name == "after_forward":
            out = strategy.mb_output
            assert out.shape[0] == len(strategy.mb_y) == len(strategy.mb_x)
            self.batches.append((out.shape[1], strategy.mb_y.tolist(),
                                 set(strategy.mb_task_id.tolist()), out.argmax(1)))
    return record


for _name in EVENTS:
    setattr(Callbacks, _name, _recorder(_name))


class Iterations(Plugin):
    """An l2bg plugin: every trained net's (phase, epoch loss history) and its iterations."""

    def __init__(self) -> None:
        self.iterations = 0
        self.fits: list[tuple[str, list[float]]] = []

    def after_update(self, state) -> None:
        self.iterations += 1

    def after_training_epoch(self, state) -> None:
        if state.epoch == 0:
            self.fits.append((state.phase, state.history))


def strategy(bm, evaluator, **kw) -> L2BGStrategy:
    options = dict(template=streams.template(), train=streams.CONFIG, delta=0.5,
                   valid_stream=bm.valid_stream, evaluator=evaluator)
    return L2BGStrategy(**{**options, **kw})


def experience_events(seen, k: int) -> list[tuple[str, str | None]]:
    """The events of the k-th training experience (before_training_exp .. after_training_exp)."""
    starts = [i for i, (n, _) in enumerate(seen) if n == "before_training_exp"]
    ends = [i for i, (n, _) in enumerate(seen) if n == "after_training_exp"]
    return seen[starts[k]:ends[k] + 1]


def test_callbacks_fire_in_avalanches_order():
    """The first experience trains only its independent net: exactly the callbacks, in the
    order, that Avalanche's Naive calls for the same epochs and mini-batches. An experience
    that binds runs the same epochs twice: its independent net's, then the JointNet's."""
    bm = to_avalanche(streams.tasks(2))
    ours = Callbacks()
    strat = strategy(bm, EvaluationPlugin(loggers=[]), strategy="full", delta=None,
                     plugins=[ours])
    for exp in bm.train_stream:
        strat.train(exp)
    theirs = Callbacks()
    model = SimpleMLP(num_classes=streams.CLASSES, input_size=streams.DIM)
    naive = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                  train_mb_size=streams.CONFIG.batch_size, train_epochs=streams.CONFIG.epochs,
                  plugins=[theirs], evaluator=EvaluationPlugin(loggers=[]))
    naive.train(bm.train_stream[0])
    first = experience_events(ours.seen, 0)
    assert [n for n, _ in first] == [n for n, _ in experience_events(theirs.seen, 0)]
    iters = math.ceil(streams.tasks(1)[0].x_train.shape[0] / streams.CONFIG.batch_size)
    epoch = [EPOCH[0], *EPOCH[1:-1] * iters, EPOCH[-1]]
    E = streams.CONFIG.epochs
    assert [n for n, _ in first] == ["before_training_exp", *epoch * E, "after_training_exp"]
    assert {p for n, p in first[1:-1]} == {"independent"}
    second = experience_events(ours.seen, 1)
    assert [n for n, _ in second] == ["before_training_exp", *epoch * 2 * E,
                                      "after_training_exp"]
    phases = [p for n, p in second if n == "before_training_epoch"]
    assert phases == ["independent"] * E + ["jointnet"] * E
    assert strat.l2bg_phase is None and strat.l2bg_fit is None  # outside training


def test_training_metrics_and_clock_follow_l2bgs_iterations():
    """Epoch and mini-batch loss and accuracy and epoch timing are reported for every task;
    the last epoch's loss of each experience is l2bg's (its JointNet training, or the
    independent net's for the first); the clock counts l2bg's iterations and epochs."""
    bm = to_avalanche(streams.tasks())
    evaluator = EvaluationPlugin(
        loss_metrics(minibatch=True, epoch=True),
        accuracy_metrics(minibatch=True, epoch=True, experience=True),
        timing_metrics(epoch=True), loggers=[])
    counted = Iterations()
    strat = strategy(bm, evaluator, l2bg_plugins=[counted])
    last_losses = []
    for exp in bm.train_stream:
        before = counted.iterations
        strat.train(exp)
        assert strat.clock.train_exp_iterations == counted.iterations - before
        assert strat.clock.train_exp_epochs == streams.CONFIG.epochs * (
            1 if exp.current_experience == 0 else 2)
        last_losses.append(counted.fits[-1][1][-1])  # the last trained net's last epoch
    assert strat.clock.train_iterations == counted.iterations > 0
    metrics = evaluator.get_all_metrics()
    for t in range(3):
        for name in ("Loss_Epoch", "Loss_MB", "Top1_Acc_Epoch", "Top1_Acc_MB", "Time_Epoch"):
            key = f"{name}/train_phase/train_stream/Task{t:03d}"
            assert key in metrics, (key, sorted(metrics))
            assert all(math.isfinite(v) for v in metrics[key][1])
        epochs = metrics[f"Loss_Epoch/train_phase/train_stream/Task{t:03d}"][1]
        assert len(epochs) == streams.CONFIG.epochs * (1 if t == 0 else 2)
        assert epochs[-1] == pytest.approx(last_losses[t], rel=1e-5)
        acc = metrics[f"Top1_Acc_Epoch/train_phase/train_stream/Task{t:03d}"][1]
        assert all(0 <= a <= 1 for a in acc)


def test_class_ids_and_task_labels_as_avalanche_sees_them():
    """With class ids (4, 5, 6) in the second experience, the mini-batch's targets are those
    ids, the output is as wide as the model's (7) with the task's logits at its ids, and the
    task labels are the experience's."""
    tasks = streams.tasks(2)
    bm = streams.shifted(tasks, [0, 4])
    seen = Callbacks()
    strat = strategy(bm, EvaluationPlugin(accuracy_metrics(minibatch=True, epoch=True),
                                          loggers=[]), plugins=[seen])
    strat.train(bm.train_stream[0])
    n0 = len(seen.batches)
    assert all(w == 3 and set(y) <= {0, 1, 2} and t == {0} for w, y, t, _ in seen.batches)
    strat.train(bm.train_stream[1])
    later = seen.batches[n0:]
    assert later and all(w == 7 and set(y) <= {4, 5, 6} and t == {1}
                         and set(pred.tolist()) <= {4, 5, 6} for w, y, t, pred in later)


def test_an_avalanche_plugins_error_stops_training():
    class Broken(SupervisedPlugin):
        def after_backward(self, strategy, **kwargs):
            raise RuntimeError("broken plugin")

    bm = to_avalanche(streams.tasks(1))
    strat = strategy(bm, EvaluationPlugin(loggers=[]), plugins=[Broken()])
    with pytest.raises(RuntimeError, match="broken plugin"):
        strat.train(bm.train_stream[0])
    assert strat.l2bg_phase is None and strat.l2bg_fit is None


@pytest.mark.parametrize("options", [{"eval_every": 1}, {"eval_every": 2, "peval_mode":
                                                           "iteration"}])
def test_evaluation_inside_an_experience_is_refused(options):
    """A periodic evaluation between epochs or iterations would score the model before the
    experience's task is in it: one line naming eval_every; after each experience is fine."""
    bm = to_avalanche(streams.tasks(1))
    with pytest.raises(ParamError, match="eval_every"):
        strategy(bm, EvaluationPlugin(loggers=[]), **options)
    strategy(bm, EvaluationPlugin(loggers=[]), eval_every=1, peval_mode="experience")
