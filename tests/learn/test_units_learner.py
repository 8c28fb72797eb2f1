"""Units through the Learner: the conflict scores of channel groups, the nucleus over units, the
grow mode of a step, task batch norm, the record of grown units and the memo's context."""

from __future__ import annotations

import pytest
import torch

from l2bg import rsa
from l2bg.data import Task
from l2bg.learn import strategies
from l2bg.learn.independent import task_seed
from l2bg.learn.learner import GrowStep, Learner
from l2bg.learn.record import RunRecord
from l2bg.learn.training import TrainConfig
from l2bg.net.templates import Layer, SlotSpec, Template
from l2bg.net.units import channel_groups


def conv_template(bn: bool) -> Template:
    """Two conv slots (batch norm after each conv when ``bn``), a pooling slot that cannot be
    cut, per-task heads: 4x4 inputs of one channel."""
    def conv(name, c_in, c_out):
        layers = [Layer("conv2d", {"in_channels": c_in, "out_channels": c_out,
                                   "kernel_size": 3, "padding": 1})]
        if bn:
            layers.append(Layer("batch_norm", {"num_features": c_out, "dims": 2}))
        return SlotSpec(name, (*layers, Layer("relu")))

    slots = (conv("conv1", 1, 6), conv("conv2", 6, 5),
             SlotSpec("pool", (Layer("max_pool2d", {"kernel_size": 2}), Layer("flatten"))))
    return Template(f"tiny-conv{'-bn' if bn else ''}", {}, slots, per_task_heads=True,
                    head_in=5 * 2 * 2, input_shape=(1, 4, 4))


def tasks(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)

    def task(name):
        xs = [torch.randn(k, 1, 4, 4, generator=g) for k in (48, 24, 24)]
        ys = [(x[:, 0, 0, 0] > 0).long() + (x[:, 0, 1, 1] > 0).long() for x in xs]
        return Task(name, xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], num_classes=3)

    return [task(f"t{i}") for i in range(n)]


CONFIG = TrainConfig(optimizer="sgd", lr=0.05, epochs=1, batch_size=8)


def learner(bn=False, config=CONFIG, **kw) -> Learner:
    return Learner(tasks(), conv_template(bn), config, cache=False, quiet=True, rsa_samples=20,
                   **kw)


def grouped(granularity="group:2"):
    return strategies.get("l2bg").configured(granularity=granularity)


def test_a_group_score_is_the_measure_on_its_columns_computed_by_hand():
    """Every unit's conflict in the record is the RSA dissimilarity, computed here from the
    two nets' slot activations, of exactly that group's channels; the uncut slot is whole."""
    ln = learner(config=CONFIG.replace(shared_lr_scale=0.0))
    result = ln.run(grouped("group:3"), [GrowStep(delta=0.0)] * 2)
    d = result.record.tasks[1].decision
    sc = d.conflict["t0"]
    assert sc.units == ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, None))
    t1 = ln.tasks[1]
    from l2bg.conflict.scores import sample_indices

    x = t1.x_val[sample_indices(t1.x_val.shape[0], 20, task_seed(0, 1))]
    indep = ln.independent(1)
    ln.independent(0)
    with torch.no_grad():
        indep.net.eval()
        _, a_t = indep.net(x, indep.task, return_activations=True)
        # t0's task-net is unchanged by t1 (shared layers frozen, nothing grew): the JointNet
        net = result.net.eval()
        _, a_b = net(x, "t0", return_activations=True)
    want = []
    for s, g in sc.units:
        if g is None:
            cols = slice(None)
        else:
            lo, hi = channel_groups(net.unit_channels(s), 3)[g]
            rest = a_t[s].shape[1] // net.unit_channels(s)
            cols = slice(lo * rest, hi * rest)
        want.append(float(rsa.dissimilarity([a_t[s][:, cols].float()],
                                             [a_b[s][:, cols].float()])[0]))
    assert list(sc.layers) == pytest.approx(want, abs=1e-10)
    assert sc.score == pytest.approx(sum(c * c for c in want) ** 0.5)


@pytest.mark.parametrize("delta", [0.0, 1.0])
def test_delta_zero_grows_no_unit_and_one_every_unit(delta):
    ln = learner()
    r = ln.run(grouped("group:2"), [GrowStep(delta=delta)] * 2)
    for rec in r.record.tasks[1:]:
        d = rec.decision
        if delta == 0:
            assert not d.grows and d.slots == () and d.groups == {}
        else:
            assert d.slots == (2,) and d.groups == {0: (0, 1), 1: (0, 1)} and d.num_groups == 2
            assert r.net.grown_units(d.task) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, None)]


def test_more_units_grow_with_a_larger_delta():
    """The nucleus over units is monotone in δ on the same scores (same bind target)."""
    grown = []
    for delta in (0.2, 0.5, 0.8):
        r = learner().run(grouped("group:3"), [GrowStep(delta=delta)] * 2).record
        d = r.tasks[1].decision
        grown.append({(s, None) for s in d.slots}
                     | {(s, g) for s, gs in d.groups.items() for g in gs})
    assert grown[0] <= grown[1] <= grown[2] and len(grown[2]) > len(grown[0])


def test_layer_granularity_takes_the_slot_path():
    """granularity layer: scores per slot (no units recorded), decisions of whole slots, and
    the strategy records no granularity option."""
    r = learner().run(strategies.get("l2bg"), [GrowStep(delta=0.5)] * 2).record
    d = r.tasks[1].decision
    assert d.conflict["t0"].units is None and len(d.conflict["t0"].layers) == 3
    assert d.groups == {} and "granularity" not in r.strategy_options
    assert "units" not in r.to_json()["tasks"][1]["conflict"]["t0"]


def test_a_step_grows_adapters_and_the_record_says_so():
    ln = learner()
    r = ln.run(grouped("group:2"), [GrowStep(delta=1.0, mode="adapt"), GrowStep(delta=1.0)])
    d1, d2 = (t.decision for t in r.record.tasks[1:])
    assert d1.mode == "adapt" and d2.mode == "copy"
    assert {r.net.grow_mode("t1", s) for s in (0, 1)} == {"adapt"}
    assert r.net.grow_mode("t2", 0) == "copy"
    js = r.record.to_json()
    assert js["tasks"][1]["grow_mode"] == "adapt" and "grow_mode" not in js["tasks"][2]
    assert js["tasks"][1]["grown_groups"] == {"conv1": [0, 1], "conv2": [0, 1]}
    back = RunRecord.from_json(js)
    assert back.to_json() == js and back.tasks[1].decision.key == d1.key
    assert back.tasks[1].decision.groups == d1.groups and back.tasks[1].decision.mode == "adapt"
    assert d1.key[3:] == [{"groups": {"0": [0, 1], "1": [0, 1]}, "num_groups": 2},
                          {"mode": "adapt"}] and d2.key[3:] == [d1.key[3]]
    assert r.record.params == r.net.num_parameters()


@pytest.mark.parametrize("mode", ["copy", "adapt"])
def test_slots_no_adapter_fits_grow_by_copy_and_the_record_says_which(mode):
    """Grow mode adapt on every slot: the pooling slot (no adapter fits it) grows by copy, the
    decision and results.json name it (read back equal), and the key is the one without it;
    a copy-mode run writes no ``grown_by_copy``."""
    r = learner(grow_mode=mode).run("full")
    d = r.record.tasks[1].decision
    js = r.record.to_json()
    assert d.slots == (0, 1, 2) and d.mode == mode
    assert [r.net.grow_mode("t1", s) for s in (0, 1, 2)] == [mode, mode, "copy"]
    if mode == "copy":
        assert d.copied == () and all("grown_by_copy" not in t for t in js["tasks"])
        return
    assert d.copied == (2,) and d.key == ["t1", "t0", [0, 1, 2], {"mode": "adapt"}]
    assert [t.get("grown_by_copy") for t in js["tasks"]] == [None, ["pool"], ["pool"]]
    assert js["grow_sequence"][1]["grown_by_copy"] == ["pool"]
    back = RunRecord.from_json(js)
    assert back.to_json() == js and back.decisions == r.record.decisions


def test_a_memo_restores_the_slots_grown_by_copy():
    """A task restored from the memo carries the decision the strategy makes again, copies
    included: the second run is all hits and records the same decisions and results."""
    from l2bg.search.memo import Memo

    ln = learner(grow_mode="adapt")
    memo = Memo.attach(ln)
    first = ln.run("full").record
    second = ln.run("full").record
    assert memo.stats["memo_hits"] == 3 and memo.stats["memo_misses"] == 0
    assert second.decisions == first.decisions and second.tasks[2].decision.copied == (2,)
    assert second.to_json()["tasks"] == first.to_json()["tasks"]


def test_the_run_grow_mode_fills_steps_that_name_none_and_no_growth_is_copy():
    r = learner(grow_mode="adapt").run(grouped("group:2"),
                                       [GrowStep(delta=0.0), GrowStep(delta=1.0)]).record
    assert r.tasks[1].decision.mode == "copy" and r.tasks[2].decision.mode == "adapt"


@pytest.mark.parametrize("task_bn", [True, False])
def test_task_batch_norm_keeps_earlier_tasks_bit_identical(task_bn):
    """With shared layers frozen (shared_lr_scale 0) and nothing grown, training t1 leaves
    t0's eval-mode outputs bit-identical with task batch norm; without it the shared running
    statistics move (the outputs change)."""
    ln = learner(bn=True, config=CONFIG.replace(shared_lr_scale=0.0), task_bn=task_bn)
    x = ln.tasks[0].x_test
    first = ln.run("shared", order=[0, 1, 2])
    solo = Learner(tasks()[:1], conv_template(True), CONFIG.replace(shared_lr_scale=0.0),
                   cache=False, quiet=True, task_bn=task_bn).run("shared")
    with torch.no_grad():
        before = solo.net.eval()(x, "t0")
        after = first.net.eval()(x, "t0")
    assert torch.equal(before, after) is task_bn
    assert first.record.config is None and first.net.topology()["task_bn"] is task_bn


def test_memo_context_keeps_its_key_for_default_growth_options():
    """A memo of a run with default options keeps the key it had before these options
    existed; each non-default option gives another context."""
    from l2bg.data import task_fingerprint
    from l2bg.search.memo import MEMO_FORMAT, Memo, sha

    base = learner()
    ex = base.experiment
    old = sha({"format": MEMO_FORMAT, "benchmark": ex.benchmark,
               "tasks": [[t.name, task_fingerprint(t)] for t in ex.tasks], "seed": ex.seed,
               "template": ex.template.to_dict(), "train": ex.config.to_dict(),
               "rsa_samples": ex.rsa_samples})
    assert Memo(ex).context == old
    contexts = {Memo(learner(**kw).experiment).context
                for kw in ({"task_bn": True}, {"grow_mode": "adapt"}, {"adapter_rank": 2})}
    assert old not in contexts and len(contexts) == 3


@pytest.mark.parametrize("kw, param", [({"grow_mode": "clone"}, "grow_mode"),
                                       ({"adapter_rank": 0}, "adapter_rank"),
                                       ({"task_bn": 1}, "task_bn")])
def test_bad_growth_options_name_the_parameter(kw, param):
    from l2bg.base.errors import ParamError

    with pytest.raises(ParamError) as info:
        learner(**kw)
    assert info.value.param == param


def test_more_groups_than_channels_fails_before_any_training(no_training):
    from l2bg.base.errors import ParamError

    with pytest.raises(ParamError, match="slot conv2 of 5 channels"):
        learner().run(grouped("group:6"), [GrowStep(delta=0.5)] * 2)
