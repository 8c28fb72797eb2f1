"""L2BGStrategy on tiny task-labelled Avalanche streams: it learns as l2bg's own loop does
(Avalanche's metrics give l2bg's accuracy matrix to 1e-6), it never grows at evaluation,
its options are l2bg's (errors name parameters), and Avalanche's checkpoints round-trip it
with a grown JointNet."""

from __future__ import annotations

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("avalanche")

import avalanche_streams as streams  # noqa: E402
import torch  # noqa: E402
from avalanche.evaluation.metrics import accuracy_metrics  # noqa: E402
from avalanche.training.plugins import EvaluationPlugin  # noqa: E402

from l2bg.avalanche import L2BGStrategy, to_avalanche  # noqa: E402
from l2bg.base.errors import L2BGError, ParamError  # noqa: E402
from l2bg.learn.learner import Learner  # noqa: E402

KEY = "Top1_Acc_Exp/eval_phase/test_stream/Task{t:03d}/Exp{t:03d}"


def evaluator() -> EvaluationPlugin:
    return EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])


def strategy(bm=None, **kw) -> L2BGStrategy:
    options = dict(template=streams.template(), train=streams.CONFIG, delta=0.5,
                   evaluator=evaluator())
    if bm is not None:
        options["valid_stream"] = bm.valid_stream
    return L2BGStrategy(**{**options, **kw})


def grow_sequence(record) -> list[tuple[int | None, tuple[int, ...]]]:
    """Each decision as (the position of its bind target, the grown slots): names differ."""
    names = [d.task for d in record.decisions]
    return [(None if d.bind_to is None else names.index(d.bind_to), tuple(d.slots))
            for d in record.decisions]


def avalanche_matrix(strat: L2BGStrategy, bm) -> list[list[float | None]]:
    """R[i][j]: Avalanche's accuracy on test experience j after training experience i."""
    T = len(bm.train_stream)
    rows = []
    for i, exp in enumerate(bm.train_stream):
        strat.train(exp)
        res = strat.eval(bm.test_stream[:i + 1])
        rows.append([res[KEY.format(t=j)] for j in range(i + 1)] + [None] * (T - i - 1))
    return rows


@pytest.mark.parametrize("name, delta", [("l2bg", 0.5), ("l2bg", 0.9), ("full", None),
                                         ("independent", None)])
def test_avalanche_metrics_give_l2bgs_accuracy_matrix(name, delta):
    """Trained on the converted stream (l2bg's validation data as valid_stream), the strategy
    makes l2bg's decisions, and Avalanche's per-experience accuracies equal l2bg's own test
    accuracy matrix to 1e-6."""
    tasks = streams.tasks()
    own = Learner(tasks, streams.template(), streams.CONFIG, cache=False, quiet=True).run(
        name, delta=delta)
    bm = to_avalanche(tasks)
    strat = strategy(bm, strategy=name, delta=delta)
    got = avalanche_matrix(strat, bm)
    want = own.record.acc_matrix
    for i, row in enumerate(want):
        for j in range(i + 1):
            assert abs(got[i][j] - row[j]) <= 1e-6, (i, j, got, want)
    assert grow_sequence(strat.record) == grow_sequence(own.record)
    assert strat.model.net.num_parameters() == own.net.num_parameters()


def test_grown_jointnet_and_optimizer_rebuilt_after_growth():
    """After each experience the model is one JointNet holding every task (binding grows it
    by less than a whole net); the optimiser holds exactly the newest task's trainable
    parameters."""
    bm = to_avalanche(streams.tasks())
    strat = strategy(bm, strategy="full", delta=None)
    sizes = []
    for exp in bm.train_stream:
        strat.train(exp)
        net = strat.model.net
        sizes.append(net.num_parameters())
        want = {id(p) for g in net.param_groups(net.tasks[-1], streams.CONFIG.lr,
                                                streams.CONFIG.shared_lr_scale)
                for p in g["params"]}
        got = {id(p) for g in strat.optimizer.param_groups for p in g["params"]}
        assert got == want
    assert strat.model.net.tasks == ["task0", "task1", "task2"]
    assert sorted(strat.model.known_train_tasks_labels) == [0, 1, 2]
    assert sizes[0] < sizes[1] < sizes[2]


def test_no_growth_at_evaluation():
    """Evaluating experiences whose task is not learned leaves the JointNet and the known
    task labels as they were, and their logits predict nothing (all equal); the growing
    paths refuse to run outside training."""
    bm = to_avalanche(streams.tasks())
    strat = strategy(bm)
    strat.train(bm.train_stream[0])
    net = strat.model.net
    before = (net.num_parameters(), net.tasks, net.version)
    res = strat.eval(bm.test_stream)
    assert (net.num_parameters(), net.tasks, net.version) == before
    assert strat.model.net is net
    assert strat.model.known_train_tasks_labels == {0}
    assert res[KEY.format(t=0)] > 0.5  # chance: 1/3
    strat.model.eval()
    x = bm.test_stream[2].dataset[0][0].unsqueeze(0)
    assert torch.all(strat.model(x, torch.tensor([2])) == strat.model.mask_value)
    with pytest.raises(L2BGError, match="only while training"):
        strat._train_exp(bm.train_stream[1])
    with pytest.raises(L2BGError, match="only while training"):
        strat.model.learned(1, "task1", (0, 1, 2), net)


def test_class_ids_need_not_start_at_zero():
    """An experience with global class ids (4, 5, 6) is learned with local labels; its logits
    land at its ids and padding never wins, so Avalanche scores it as l2bg does."""
    tasks = streams.tasks(2)
    bm = streams.shifted(tasks, [0, 4])
    own = Learner(tasks, streams.template(), streams.CONFIG, cache=False, quiet=True).run(
        "l2bg", delta=0.5)
    strat = strategy(bm)
    got = avalanche_matrix(strat, bm)
    assert strat.model.task_classes == {0: (0, 1, 2), 1: (4, 5, 6)}
    assert abs(got[1][1] - own.record.acc_matrix[1][1]) <= 1e-6
    out = strat.model(bm.test_stream[1].dataset[0][0].unsqueeze(0), torch.tensor([1]))
    assert out.shape == (1, 7) and torch.all(out[0, :4] == strat.model.mask_value)


def test_validation_from_training_data_without_a_valid_stream():
    """Without valid_stream a seeded part of each experience validates it: two runs with the
    same seed decide and score alike."""
    bm = to_avalanche(streams.tasks(2))
    runs = []
    for _ in range(2):
        strat = strategy()
        for exp in bm.train_stream:
            strat.train(exp)
        runs.append(strat.record)
    assert runs[0].acc_matrix == runs[1].acc_matrix
    assert grow_sequence(runs[0]) == grow_sequence(runs[1])


@pytest.mark.parametrize("options, named", [
    ({"delta": 1.5}, "delta"),
    ({"delta": None}, "delta"),
    ({"strategy": "full", "delta": 0.5}, "delta"),
    ({"grow_rule": "nope"}, "nope"),
    ({"strategy": "nope"}, "nope"),
    ({"epochs": 0}, "epochs"),
    ({"valid_fraction": 1.0}, "valid_fraction"),
    ({"template": "resnet9000"}, "template"),
    ({"eval_every": 1}, "eval_every"),
])
def test_options_are_l2bgs_and_errors_name_them(options, named):
    with pytest.raises(L2BGError, match=named):
        strategy(**options)


def test_deltas_must_cover_the_stream():
    bm = to_avalanche(streams.tasks())
    strat = strategy(bm, delta=None, deltas=[0.5])
    strat.train(bm.train_stream[:2])
    with pytest.raises(ParamError, match="deltas"):
        strat.train(bm.train_stream[2])


def test_each_experience_has_one_new_task_label():
    bm = to_avalanche(streams.tasks(2))
    strat = strategy(bm)
    strat.train(bm.train_stream[0])
    with pytest.raises(L2BGError, match="learned already"):
        strat.train(bm.train_stream[0])


def test_checkpoint_round_trip_with_a_grown_jointnet(tmp_path):
    """save_checkpoint / maybe_load_checkpoint (dill) restore a strategy whose JointNet grew:
    the same topology and outputs, and the next experience is learned as by the original."""
    from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint

    bm = to_avalanche(streams.tasks())
    strat = strategy(bm, strategy="full", delta=None)
    strat.train(bm.train_stream[:2])
    path = tmp_path / "ckpt.pkl"
    save_checkpoint(strat, path)
    fresh = strategy(bm, strategy="full", delta=None)
    fresh, start = maybe_load_checkpoint(fresh, path)
    assert start == 2
    assert fresh.model.net.routes() == strat.model.net.routes()
    ds = bm.test_stream[1].dataset
    x, t = torch.stack([ds[i][0] for i in range(8)]), torch.tensor([1] * 8)
    strat.model.eval()
    fresh.model.eval()
    assert torch.equal(fresh.model(x, t), strat.model(x, t))
    strat.train(bm.train_stream[2])
    fresh.train(bm.train_stream[2])
    assert fresh.record.acc_matrix == strat.record.acc_matrix
    assert fresh.model.net.num_parameters() == strat.model.net.num_parameters()
