"""What a search trial keeps of its run record (its user attributes): the record's numbers, grow
sequence and environment, the memo counters; read back typed from any trial."""

from __future__ import annotations

import json

import torch

from l2bg.learn.independent import IndependentCache
from l2bg.learn.learner import GrowStep
from l2bg.learn.settings import Settings
from l2bg.search import Memo
from l2bg.search.attrs import TrialAttrs
from l2bg.search.study import trial_attrs

#: the attributes of a trial since l2bg 0.1 (environment is new)
KEYS = {"gain", "gain_raw", "avg_val_acc", "avg_test_acc", "bwt", "fwt", "params",
        "params_independent", "params_ratio", "order", "strategy", "strategy_options",
        "grow_sequence", "decisions_key", "net_dir", "wall_s", "independent_val_acc",
        "independent_test_acc", "memo_hits", "memo_misses", "memo_prefix_len", "memo_full_hit",
        "memo_scores_hits", "memo_scores_misses", "indep_trained", "memo_node_loads",
        "memo_lock_waits"}


def test_trial_attributes_come_from_the_run_record(tiny_mnist, tmp_path):
    torch.set_num_threads(1)
    settings = Settings("pmnist", data_root=str(tiny_mnist), tasks=3, epochs=1, batch_size=32,
                        rsa_samples=10)
    learner = settings.learner(settings.build(), IndependentCache(None))
    memo = Memo.attach(learner, memo_dir=tmp_path)
    outcome = memo.outcome(learner.run("l2bg", [GrowStep(delta=0.5)] * 2))
    r = outcome.record
    attrs = trial_attrs(outcome)
    assert set(attrs) == KEYS | {"environment"}
    assert attrs["environment"] == r.environment.to_json()
    assert attrs["environment"]["torch_threads"] == 1
    assert attrs["gain"] == r.gain and attrs["params_ratio"] == r.params / r.params_independent
    assert attrs["grow_sequence"] == r.to_json()["grow_sequence"]
    assert attrs["order"] == r.order == [t.name for t in learner.tasks]
    assert attrs["independent_test_acc"] == [t.independent_test_acc for t in r.tasks]
    assert attrs["memo_misses"] == 3 and attrs["memo_hits"] == 0
    stored = json.loads(json.dumps(attrs))  # what a storage gives back
    back = TrialAttrs.read({**stored, "worker": "w1", "lease_until": 1.0, "baseline": "shared"})
    assert back.to_attrs() == stored and back.worker == "w1" and back.baseline == "shared"
    assert r.to_json()["decisions"] == [d.key for d in outcome.decisions]


def test_a_trial_without_a_run_reads_as_nothing():
    empty = TrialAttrs.read({"lease_until": 3.0})
    assert empty.gain is None and empty.params_ratio is None and empty.memo_hits is None
