"""The typed run record: results.json written key for key as before (plus environment and
record_version), read back to the same JSON, older files upgraded, newer ones refused, the
environment of the process recorded, and the mean ± sd over seeds."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l2bg.base.errors import L2BGError
from l2bg.learn import metrics
from l2bg.learn.record import (
    RECORD_VERSION,
    CandidateScore,
    Decision,
    Environment,
    RunRecord,
    TaskRecord,
    over_seeds,
    upgrade,
)

SLOTS = ["fc1", "fc2", "head"]
#: results.json keys in the order every l2bg since 0.1 wrote them (then the new two)
KEYS = ["benchmark", "strategy", "strategy_options", "seed", "tasks", "grow_sequence",
        "acc_matrix", "acc_matrix_val", "avg_val_acc", "avg_test_acc", "bwt", "fwt", "gain",
        "gain_raw", "params", "params_independent", "slots", "expandable_slots", "timings",
        "rsa_backend", "executor_backend", "cache", "wall_time_s"]
TASK_KEYS = ["name", "bind_to", "grown_slots", "delta", "conflict", "rules", "reason",
             "grown_groups", "num_groups", "grow_mode", "grown_by_copy", "independent_val_acc",
             "independent_test_acc", "independent_cached", "train_loss", "val_acc", "test_acc",
             "params"]

acc = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def records(draw):
    """A run record of 1-4 tasks with random decisions, accuracies and conflicts: per slot, or
    per unit (slot 0 cut into 2 channel groups) with grown groups and a grow mode."""
    T = draw(st.integers(1, 4))
    names = [f"t{i}" for i in range(T)]
    tasks = []
    for i in range(T):
        val = [draw(acc) for _ in range(i + 1)] + [None] * (T - i - 1)
        test = [draw(acc) for _ in range(i + 1)] + [None] * (T - i - 1)
        if i == 0:
            d = Decision(names[0], None, reason="first task")
            loss = None
        else:
            bind = draw(st.sampled_from(names[:i]))
            units = draw(st.none() | st.just(((0, 0), (0, 1), (1, None))))
            if units is None:
                slots = tuple(sorted(draw(st.sets(st.sampled_from([0, 1]), max_size=2))))
                groups: dict[int, tuple[int, ...]] = {}
            else:
                slots = tuple(sorted(draw(st.sets(st.just(1)))))
                grown = tuple(sorted(draw(st.sets(st.sampled_from([0, 1])))))
                groups = {0: grown} if grown else {}
            n = 2 if units is None else 3
            conflict = {c: CandidateScore.of([draw(st.floats(0, 2)) for _ in range(n)], units)
                        for c in names[:i]}
            mode = draw(st.sampled_from(["copy", "adapt"])) if slots or groups else "copy"
            copied = tuple(sorted(draw(st.sets(st.sampled_from(slots))))) \
                if mode == "adapt" and slots else ()
            d = Decision(names[i], bind, slots, draw(st.none() | acc), conflict, "why", "torch",
                         {"bind": "least-conflict", "grow": None, "similarity": "rsa-spearman"},
                         groups=groups, num_groups=2 if groups else None, mode=mode,
                         copied=copied)
            loss = [draw(st.floats(0, 10)) for _ in range(draw(st.integers(1, 3)))]
        tasks.append(TaskRecord(d, val, test, draw(st.integers(1, 10**7)), draw(acc), draw(acc),
                                draw(st.integers(1, 1000)), draw(st.integers(1, 10**6)),
                                draw(st.booleans()), loss))
    return RunRecord.build(tasks, benchmark="pmnist", strategy="l2bg",
                           strategy_options={"grow_rule": "conflict"}, seed=draw(st.integers(0, 9)),
                           slots=SLOTS, expandable_slots=SLOTS[:2],
                           timings={"training": draw(st.floats(0, 100))}, wall_s=1.5,
                           executor_backend="native", cache={"hits": 1, "misses": 2},
                           environment=Environment.current())


@settings(max_examples=60, deadline=None)
@given(records())
def test_read_back_gives_the_same_json(record):
    text = json.dumps(record.to_json())
    again = RunRecord.from_json(json.loads(text))
    assert json.dumps(again.to_json()) == text
    assert again.gain == record.gain and again.acc_matrix == record.acc_matrix
    assert [t.val_acc for t in again.tasks] == [t.val_acc for t in record.tasks]
    assert again.environment == record.environment
    assert [t.decision.copied for t in again.tasks] == [t.decision.copied for t in record.tasks]


@settings(max_examples=30, deadline=None)
@given(records())
def test_keys_and_metrics_are_those_of_results_json(record):
    r = record.to_json()
    assert list(r) == [*KEYS, "environment", "record_version"]
    assert r["record_version"] == RECORD_VERSION
    for t in r["tasks"]:
        assert [k for k in TASK_KEYS if k in t] == list(t)
    R_val, R_test = r["acc_matrix_val"], r["acc_matrix"]
    assert r["avg_val_acc"] == metrics.average_accuracy(R_val)
    assert r["bwt"] == metrics.bwt(R_test)
    assert r["params"] == record.tasks[-1].params
    growth = ("bind_to", "delta", "grown_slots", "grown_groups", "num_groups", "grow_mode",
              "grown_by_copy")
    assert r["grow_sequence"] == [{k: t[k] for k in growth if k in t} | {"task": t["name"]}
                                  for t in r["tasks"]]
    assert all(set(t["grown_slots"]) <= set(SLOTS) for t in r["tasks"])


@settings(max_examples=10, deadline=None)
@given(records())
def test_search_trial_and_cli_parts_keep_their_place(record):
    """A trial adds order, decisions and memo after wall_time_s; config (l2bg run, the quality
    table) comes after them."""
    record.order = [t.decision.task for t in record.tasks]
    record.memo = {"memo_hits": 1}
    record.config = {"tasks": len(record.tasks)}
    r = record.to_json()
    assert list(r)[len(KEYS):] == ["order", "decisions", "memo", "config", "environment",
                                   "record_version"]
    assert r["decisions"] == [d.key for d in record.decisions]
    assert json.dumps(RunRecord.from_json(json.loads(json.dumps(r))).to_json()) == json.dumps(r)


@settings(max_examples=10, deadline=None)
@given(records())
def test_read_as_a_mapping_it_is_results_json_and_read_only(record):
    assert record["gain"] == record.gain and dict(record) == record.to_json()
    assert "environment" in record and record.get("nope") is None
    with pytest.raises(TypeError):
        record["gain"] = 1.0  # type: ignore[index]


#: a results.json of l2bg's first release: grown slots as indices, no rules, reason,
#: strategy_options, expandable_slots, executor_backend, environment or record_version
OLDEST = {
    "benchmark": "pmnist", "strategy": "l2bg", "seed": 0,
    "tasks": [
        {"name": "a", "bind_to": None, "grown_slots": [], "delta": None, "conflict": {},
         "independent_val_acc": 0.9, "independent_test_acc": 0.8, "independent_cached": False,
         "val_acc": 0.9, "test_acc": 0.8, "params": 100},
        {"name": "b", "bind_to": "a", "grown_slots": [1], "delta": 0.5,
         "conflict": {"a": {"layers": [0.2, 0.6], "score": 0.632}},
         "independent_val_acc": 0.7, "independent_test_acc": 0.6, "independent_cached": True,
         "train_loss": [1.0], "val_acc": 0.7, "test_acc": 0.65, "params": 150}],
    "grow_sequence": [], "acc_matrix": [[0.8, None], [0.75, 0.65]],
    "acc_matrix_val": [[0.9, None], [0.85, 0.7]], "avg_val_acc": 0.775, "avg_test_acc": 0.7,
    "bwt": -0.05, "fwt": 0.05, "gain": -1.0, "gain_raw": 0.5, "params": 150,
    "params_independent": 200, "slots": ["fc1", "fc2"], "timings": {"training": 1.0},
    "rsa_backend": "torch", "cache": {"hits": 0, "misses": 2}, "wall_time_s": 3.0}


def test_an_older_results_json_is_upgraded():
    r = RunRecord.from_json(json.loads(json.dumps(OLDEST)))
    b = r.tasks[1]
    assert b.decision.slots == (1,) and r.grow_sequence()[1]["grown_slots"] == ["fc2"]
    assert b.decision.rules == {"bind": "least-conflict", "grow": "conflict",
                                "similarity": "rsa-spearman"}
    assert r.tasks[0].decision.rules == {"bind": None, "grow": None, "similarity": None}
    assert r.strategy_options == {} and r.expandable_slots == ["fc1", "fc2"]
    assert r.acc_matrix == OLDEST["acc_matrix"] and b.val_acc == 0.7 and b.train_loss == [1.0]
    out = r.to_json()
    assert out["record_version"] == RECORD_VERSION and out["environment"] is None
    assert out["executor_backend"] is None and out["tasks"][1]["reason"] == ""
    for key in ("gain", "params", "timings", "cache", "wall_time_s", "acc_matrix_val"):
        assert out[key] == OLDEST[key], key
    assert upgrade(OLDEST)["tasks"][1]["grown_slots"] == ["fc2"]
    assert OLDEST["tasks"][1]["grown_slots"] == [1]  # the input is not changed


def test_a_partial_record_reads_with_what_it_has():
    """Only the keys explain needs: the rest is null, each task keeps its own accuracy."""
    r = RunRecord.from_json({"benchmark": "b", "strategy": "s", "slots": ["x"], "tasks": [
        {"name": "a", "bind_to": None, "delta": None, "grown_slots": [], "val_acc": 0.5},
        {"name": "c", "bind_to": "a", "delta": None, "grown_slots": ["x"]}]})
    assert r.tasks[0].val_acc == 0.5 and r.tasks[1].val_acc is None
    assert r.gain is None and r.params_ratio is None and r.seed is None


@pytest.mark.parametrize("version", [RECORD_VERSION + 1, 0, "2", True, 2.5])
def test_a_record_version_this_l2bg_does_not_know_is_one_line(version):
    with pytest.raises(L2BGError, match="record_version .* upgrade l2bg"):
        RunRecord.from_json({**OLDEST, "record_version": version}, "x/results.json")


def test_slots_grown_by_copy_are_recorded_but_not_part_of_the_key():
    """``copied`` follows from slots, mode and template: it is written and read back, and the
    decision's key (the memo's node identity) is the one it has without it."""
    d = Decision("b", "a", (0, 1), mode="adapt", copied=(1,))
    assert d.key == Decision("b", "a", (0, 1), mode="adapt").key == ["b", "a", [0, 1],
                                                                      {"mode": "adapt"}]
    rec = TaskRecord(d, [0.5, 0.5], [0.5, 0.5], 10, 0.5, 0.5, 5, 10, False)
    js = rec.to_json(SLOTS)
    assert js["grown_by_copy"] == ["fc2"] and list(js).index("grown_by_copy") == \
        list(js).index("grow_mode") + 1
    back = TaskRecord.from_json(js, SLOTS, 1, [0.5, 0.5], [0.5, 0.5])
    assert back.decision == d
    plain = TaskRecord(Decision("b", "a", (0, 1), mode="adapt"), [0.5, 0.5], [0.5, 0.5], 10,
                       0.5, 0.5, 5, 10, False)
    assert "grown_by_copy" not in plain.to_json(SLOTS)


@pytest.mark.parametrize("slots, mode, copied", [
    ((0, 1), "copy", (1,)),  # copies under mode copy are just grown slots
    ((0,), "adapt", (1,)),  # not a grown slot
    ((0, 1), "adapt", (1, 0)),  # unsorted
])
def test_a_decision_with_impossible_copies_is_refused(slots, mode, copied):
    with pytest.raises(L2BGError, match="grown by copy"):
        Decision("b", "a", slots, mode=mode, copied=copied)


@pytest.mark.parametrize("edit, words", [
    (lambda r: r.pop("tasks"), "tasks must be a list"),
    (lambda r: r["tasks"][1].update(grown_slots=[7]), "tasks[1].grown_slots"),
    (lambda r: r.update(benchmark=3), "benchmark must be a string"),
    (lambda r: r["tasks"][1].update(train_loss=5), "wrong type or shape"),
    (lambda r: r["tasks"][1].update(grown_groups={"fc9": [0]}, num_groups=2),
     "tasks[1].grown_groups"),
    (lambda r: r["tasks"][1].update(grown_groups={"fc1": [0]}), "tasks[1].num_groups"),
    (lambda r: r["tasks"][1].update(grow_mode="adapt", grown_by_copy=["fc1"]),
     "tasks[1].grown_by_copy"),
    (lambda r: r["tasks"][1].update(grown_by_copy=["fc2"]), "tasks[1].grown_by_copy"),
    (lambda r: r["tasks"][1]["conflict"]["a"].update(units=[[0, 0]]),
     "tasks[1].conflict['a'].units"),
])
def test_a_malformed_record_is_one_line_naming_the_key(edit, words):
    r = json.loads(json.dumps(OLDEST))
    edit(r)
    with pytest.raises(L2BGError) as exc:
        RunRecord.from_json(r, "run/results.json")
    assert words in str(exc.value) and "run/results.json" in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("threads", [1, 2])
def test_environment_is_this_process(threads):
    import numpy

    import l2bg

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        env = Environment.current("cpu")
    finally:
        torch.set_num_threads(before)
    assert env.torch_threads == threads
    assert env.interop_threads == torch.get_num_interop_threads()
    assert (env.torch, env.numpy, env.l2bg) == (torch.__version__, numpy.__version__,
                                                 l2bg.__version__)
    assert env.device == "cpu" and env.cpu and env.device_name == env.cpu
    assert set(env.blas) == {"torch", "numpy"}
    assert Environment.from_json(json.loads(json.dumps(env.to_json()))) == env
    assert Environment.from_json({"torch": "x", "new_key": 1}).torch == "x"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.none() | st.floats(-100, 100), min_size=1, max_size=6))
def test_mean_sd_over_seeds(values):
    vals = [v for v in values if v is not None]
    m, s = metrics.mean_sd(values)
    if not vals:
        assert math.isnan(m) and math.isnan(s)
        return
    assert m == statistics.mean(vals)
    assert s == (statistics.stdev(vals) if len(vals) > 1 else 0.0)
    rows = [{"test_acc": v, "val_acc": v, "params_ratio": 1.0, "gain": v, "bwt": None}
            for v in values]
    out = over_seeds(rows)
    assert out["test_acc_mean"] == m and out["gain_sd"] == s and out["params_ratio_sd"] == 0.0
    assert math.isnan(out["bwt_mean"])


def test_learner_run_returns_the_record_with_its_environment(tiny_mnist):
    from l2bg.learn.independent import IndependentCache
    from l2bg.learn.settings import Settings

    settings = Settings("pmnist", data_root=str(tiny_mnist), tasks=3, epochs=1, batch_size=32,
                        rsa_samples=10)
    learner = settings.learner(settings.build(), IndependentCache(None))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = learner.run("l2bg", delta=0.5)
    finally:
        torch.set_num_threads(before)
    r = result.record
    assert isinstance(r, RunRecord) and r.tasks == result.records
    assert r.environment.torch_threads == 1 and r.environment.device == "cpu"
    assert r["environment"] == r.environment.to_json() and r["gain"] == r.gain
    text = json.dumps(r.to_json())
    assert json.dumps(RunRecord.from_json(json.loads(text)).to_json()) == text


def test_a_results_json_of_0_2_reads_back_key_for_key():
    """tests/golden/results-0.2.0.json: ``l2bg run --benchmark pmnist --tasks 3 --epochs 1
    --rsa-samples 60 --strategy l2bg --delta 0.5 --no-cache`` under l2bg 0.2.0 (version 1)."""
    from pathlib import Path

    path = Path(__file__).parents[1] / "golden" / "results-0.2.0.json"
    old = json.loads(path.read_text())
    assert "record_version" not in old
    new = RunRecord.from_json(old).to_json()
    assert list(new) == [*old, "environment", "record_version"]
    assert json.dumps({k: new[k] for k in old}) == json.dumps(old)  # bit for bit, in order
