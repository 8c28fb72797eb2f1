"""An experience whose train transforms draw at random is re-read every time a mini-batch is
drawn under L2BGStrategy (augment "auto" or "per-epoch"), as Avalanche's own strategies re-read
it: every epoch sees new draws, reproducibly from l2bg's seed, each training row re-read from
its own data-set item when a validation part is split off; "once", and "auto" on a stream that
draws nothing, train exactly as the one read did; checkpoints still round-trip."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("avalanche")

import avalanche_streams as streams  # noqa: E402
import torch  # noqa: E402
from avalanche.core import SupervisedPlugin  # noqa: E402
from avalanche.training.plugins import EvaluationPlugin  # noqa: E402

from l2bg.avalanche import L2BGStrategy, to_avalanche  # noqa: E402
from l2bg.avalanche.convert import dataset_tensors, make_task  # noqa: E402
from l2bg.avalanche.redraw import DatasetRedraw, reads_differ  # noqa: E402
from l2bg.base.errors import L2BGError, ParamError  # noqa: E402


class Inputs(SupervisedPlugin):
    """Avalanche's view of training: the mini-batches (``mb_x``) of every epoch, by phase."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[tuple[str, list[torch.Tensor]]] = []

    def before_training_epoch(self, strategy, **kwargs) -> None:
        self.epochs.append((strategy.l2bg_phase, []))

    def before_training_iteration(self, strategy, **kwargs) -> None:
        self.epochs[-1][1].append(strategy.mb_x.detach().clone())

    def epoch(self, i: int) -> torch.Tensor:
        """Epoch i's inputs, one row per sample, in the order of their first feature."""
        x = torch.cat(self.epochs[i][1])
        return x[torch.argsort(x[:, 0])]


def strategy(**kw) -> L2BGStrategy:
    options = dict(template=streams.template(), train=streams.CONFIG, delta=0.5,
                   evaluator=EvaluationPlugin(loggers=[]))
    return L2BGStrategy(**{**options, **kw})


def trained(experiences, **kw) -> tuple[L2BGStrategy, Inputs]:
    rec = Inputs()
    strat = strategy(plugins=[rec], **kw)
    for exp in experiences:
        strat.train(exp)
    return strat, rec


def weights(strat: L2BGStrategy) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in strat.model.parameters()])


@pytest.mark.parametrize("augment", ["auto", "per-epoch"])
def test_every_epoch_sees_new_draws(augment):
    """Both epochs of the independent net hold every training sample once (the same first
    features: the same rows) with other noise; the validation part is not trained on."""
    exp, = streams.with_train_transform(to_avalanche(streams.tasks(1)).train_stream, streams.noise)
    strat, rec = trained([exp], augment=augment)
    assert strat.record.config["augment"] == {"option": augment,
                                              "reads": {"task0": "per-epoch"}}
    assert rec.epochs[0][0] == rec.epochs[1][0] == "independent"
    first, second = rec.epoch(0), rec.epoch(1)
    assert torch.equal(first[:, 0], second[:, 0])
    assert (first[:, 1:] != second[:, 1:]).all(dim=1).float().mean() > 0.9
    every = dataset_tensors(exp.dataset.train(), "all")[0][:, 0]
    held = strat.l2bg_tasks[0].x_val[:, 0]
    assert torch.equal(first[:, 0], every[~torch.isin(every, held)].sort().values)
    assert strat.l2bg_tasks[0].train_transform is None  # dropped once learned


def test_once_reads_once():
    """augment="once" is the one read: every epoch sees the same inputs."""
    exp, = streams.with_train_transform(to_avalanche(streams.tasks(1)).train_stream, streams.noise)
    strat, rec = trained([exp], augment="once")
    assert strat.record.config["augment"]["reads"] == {"task0": "once"}
    assert torch.equal(rec.epoch(0), rec.epoch(1))


@pytest.mark.parametrize("transform", [streams.noise, streams.py_noise])
def test_the_same_seed_trains_the_same_whatever_the_global_rngs(transform):
    """Draws from torch's or Python's global generator are seeded from l2bg's seed: two runs
    train the same weights whatever the global states, another seed other weights."""
    runs = []
    for run, seed in enumerate((0, 0, 1)):
        torch.manual_seed(100 + run)  # the caller's global states differ, and must not matter
        random.seed(100 + run)
        exps = streams.with_train_transform(to_avalanche(streams.tasks(2)).train_stream,
                                            transform)
        runs.append(weights(trained(exps, seed=seed)[0]))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_a_stream_that_draws_nothing_trains_as_before():
    """tensors_benchmark (no transform) and a transform that draws nothing read once under
    "auto": bit-identical to "once"."""
    for transform in (None, streams.doubled):
        runs = []
        for augment in ("auto", "once"):
            stream = to_avalanche(streams.tasks(2)).train_stream
            exps = list(stream) if transform is None else streams.with_train_transform(
                stream, transform)
            strat, rec = trained(exps, augment=augment)
            runs.append((weights(strat), strat.record.acc_matrix, rec.epoch(0)))
            assert strat.record.config["augment"]["reads"] == {"task0": "once", "task1": "once"}
        assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
        assert torch.equal(runs[0][2], runs[1][2])


def test_each_row_is_re_read_from_its_own_item():
    """make_task's training rows are a stratified subset (a validation part split off):
    DatasetRedraw re-reads row r from the item behind it (the first feature, kept by the
    noise, says which), with new noise; seeded by gen, global generators untouched."""
    exp, = streams.with_train_transform(to_avalanche(streams.tasks(1)).train_stream, streams.noise)
    dataset = exp.dataset.train()
    x, y = dataset_tensors(dataset, "t")
    task = make_task("t", (x, y), None, None, seed=3, train_transform_of=lambda items:
                     DatasetRedraw(dataset, items, lambda v: v, "t"))
    assert task.x_train.shape[0] < x.shape[0]  # a validation part was split off
    rows = torch.tensor([5, 0, 17, 3])
    state, py_state = torch.get_rng_state(), random.getstate()
    out = task.train_transform(task.x_train[rows], torch.Generator().manual_seed(1), index=rows)
    assert torch.equal(torch.get_rng_state(), state) and random.getstate() == py_state
    assert torch.equal(out[:, 0], task.x_train[rows, 0])
    assert (out[:, 1:] != task.x_train[rows, 1:]).all()
    again = task.train_transform(task.x_train[rows], torch.Generator().manual_seed(1), index=rows)
    assert torch.equal(out, again)
    assert task.train_transform.to_dict()["items"] == task.x_train.shape[0]
    with pytest.raises(L2BGError, match="index="):
        task.train_transform(task.x_train[rows], torch.Generator())


def test_reads_differ_sees_random_transforms_only():
    stream = to_avalanche(streams.tasks(1)).train_stream
    assert not reads_differ(stream[0].dataset.train(), "t")
    for transform, differs in ((streams.noise, True), (streams.py_noise, True),
                               (streams.doubled, False)):
        exp, = streams.with_train_transform(to_avalanche(streams.tasks(1)).train_stream,
                                            transform)
        assert reads_differ(exp.dataset.train(), "t") is differs


@pytest.mark.parametrize("bad", ["sometimes", None, 1])
def test_augment_is_checked_and_named(bad):
    with pytest.raises(ParamError, match="augment") as info:
        strategy(augment=bad)
    assert "\n" not in str(info.value)


def test_checkpoint_round_trip_with_re_read_experiences(tmp_path):
    """save_checkpoint / maybe_load_checkpoint with per-epoch re-reads: the restored strategy
    learns the next experience as the original does."""
    from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint

    exps = streams.with_train_transform(to_avalanche(streams.tasks()).train_stream, streams.noise)
    strat = strategy()
    strat.train(exps[:2])
    assert all(t.train_transform is None for t in strat.l2bg_tasks)
    path = tmp_path / "ckpt.pkl"
    save_checkpoint(strat, path)
    fresh, start = maybe_load_checkpoint(strategy(), path)
    assert start == 2
    strat.train(exps[2])
    fresh.train(exps[2])
    assert fresh.record.acc_matrix == strat.record.acc_matrix
    assert torch.equal(weights(fresh), weights(strat))
    assert fresh.record.config["augment"]["reads"] == {f"task{t}": "per-epoch" for t in range(3)}
