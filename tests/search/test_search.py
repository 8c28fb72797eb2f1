"""Grow-sequence search (``l2bg search``): spaces, memoisation, samplers, storages, resume."""

import csv
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from conftest import wait_for as _wait_for

from l2bg.base.errors import L2BGError
from l2bg.base.locks import worker_dead, worker_id
from l2bg.conflict.rules import GROW_RULES
from l2bg.data import build_benchmark
from l2bg.learn.independent import IndependentCache
from l2bg.learn.learner import GrowStep, Learner
from l2bg.learn.training import default_config
from l2bg.net.templates import mlp
from l2bg.search import (
    SAMPLERS,
    Memo,
    SearchSpace,
    hypervolume_2d,
    initial_design,
    nsga2_population,
    redact_url,
)

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("a", "b", "c", "d")
# three 1-epoch pmnist tasks of the embedded digits: every trial trains in about a second
BASE = ["--benchmark", "pmnist", "--tasks", "3", "--epochs", "1", "--rsa-samples", "100",
        "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One cache for the module: the independent nets are trained once."""
    return tmp_path_factory.mktemp("search-cache")


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def main(argv: list[str]) -> int:
    """``l2bg search ARGV`` in this process."""
    from l2bg.cli import main as l2bg_main

    return l2bg_main(["search", *argv])


def _cli(*args):
    return [sys.executable, "-m", "l2bg.search", *args]


def _study(out, name=None):
    import optuna

    meta = json.loads((Path(out) / "search.json").read_text())
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(Path(out) / "study.journal")))
    return optuna.load_study(study_name=name or meta["study_name"], storage=storage)


# ----------------------------------------------------------------------------- spaces


def test_space_shared_delta_is_the_papers():
    space = SearchSpace("shared-delta", TASKS)
    dists = space.distributions()
    assert list(dists) == ["delta"] and dists["delta"].step == 0.05
    order, steps = space.decode({"delta": 0.35000000000000003})
    assert order == [0, 1, 2, 3] and [s.delta for s in steps] == [0.35] * 3
    assert all(s.bind_to is None and s.candidates is None for s in steps)


def test_space_per_task_delta_bind_order_and_restrictions():
    per = SearchSpace("per-task-delta", TASKS, delta_set=(0.8, 0.2, 0.5, 0.2))
    assert sorted(per.distributions()) == ["delta_b", "delta_c", "delta_d"]
    assert per.delta_set == (0.2, 0.5, 0.8)
    assert per.distributions()["delta_b"].choices == (0.2, 0.5, 0.8)
    _, steps = per.decode({"delta_b": 0.2, "delta_c": 0.5, "delta_d": 0.8})
    assert [s.delta for s in steps] == [0.2, 0.5, 0.8]

    bind = SearchSpace("bind", TASKS, bind_targets=("a", "c"))
    d = bind.distributions()
    assert "bind_b" not in d and "bind_c" not in d  # only 'a' is possible: fixed
    assert d["bind_d"].choices == ("a", "c")
    _, steps = bind.decode({"bind_d": "c", "delta_b": 0, "delta_c": 1, "delta_d": 0.5})
    assert [s.bind_to for s in steps] == ["a", "a", "c"]
    params, label = bind.baseline_params(grow_all=False)
    assert label == "delta=0"  # c cannot bind to its previous task b: not exactly `shared`
    params, label = SearchSpace("bind", TASKS).baseline_params(grow_all=True)
    assert label == "full" and params["bind_d"] == "c" and params["delta_d"] == 1.0

    order = SearchSpace("order", TASKS, bind_targets=("b",))
    o, steps = order.decode({"key_a": 0.9, "key_b": 0.1, "key_c": 0.5, "key_d": 0.5,
                             "delta": 0.4})
    assert o == [1, 2, 3, 0]  # ties go to the benchmark order
    assert [s.candidates for s in steps] == [["b"], ["b"], ["b"]]
    params, label = order.baseline_params(grow_all=False)
    assert order.decode(params)[0] == [0, 1, 2, 3] and label == "delta=0"


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "nope", "tasks": TASKS}, "unknown search space"),
    ({"mode": "bind", "tasks": ("a",)}, "at least 2 tasks"),
    ({"mode": "bind", "tasks": TASKS, "bind_targets": ("z",)}, "bind_targets"),
    ({"mode": "bind", "tasks": TASKS, "delta_set": (0.5, 1.5)}, "delta_set must be in"),
])
def test_space_rejects_bad_input(kwargs, match):
    with pytest.raises(L2BGError, match=match):
        SearchSpace(**kwargs)


def test_hypervolume_2d_and_helpers():
    assert hypervolume_2d([]) == 0.0
    assert hypervolume_2d([(0.0, 1.0)]) == pytest.approx(100 * 0.1)
    # a dominated point and one outside the reference add nothing
    assert hypervolume_2d([(0.0, 1.0), (10.0, 1.05), (200.0, 0.1)]) == pytest.approx(10.0)
    assert hypervolume_2d([(-50.0, 0.5), (0.0, 0.2)]) == pytest.approx(
        150 * 0.6 + 100 * 0.3)
    assert nsga2_population(10) == 4 and nsga2_population(400) == 50
    # diagonal start-up for the model-based samplers: δ = 1 and evenly below, never 0
    assert initial_design("gp", None, 10) == pytest.approx([1.0, 2 / 3])
    assert initial_design("tpe", None, 40) == pytest.approx([1 - j / 10 for j in range(9)])
    assert initial_design("nsga2-paper", None, 10) == initial_design("gp", "random", 10) == []
    assert SearchSpace("per-task-delta", TASKS).diagonal_params(2 / 3) == {
        "delta_b": 0.65, "delta_c": 0.65, "delta_d": 0.65}
    assert redact_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert not worker_dead(worker_id())
    assert worker_dead(f"{worker_id().split(':')[0]}:999999999:1")


def test_import_stays_light():
    code = ("import sys, l2bg, l2bg.search; "
            "heavy = [m for m in ('optuna', 'torch', 'matplotlib') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, env=_env())


# ----------------------------------------------------------------------------- memoisation


def _small(tasks, cache_root, memo=True):
    """A learner with the memo (what a search trial runs: ``run(order, steps)`` gives the
    trial's outcome) and a plain learner on the same cache."""
    template = mlp(input_dim=784, hidden=(48, 48), num_classes=10, shared_head=True)
    config = default_config("mlp", epochs=1)
    kw = dict(benchmark="test", seed=0, rsa_samples=100)
    memoised = Learner(tasks, template, config, cache=IndependentCache(cache_root), **kw)
    m = Memo.attach(memoised, memo_dir=cache_root if memo else None)

    def run(order, steps):
        return m.outcome(memoised.run("l2bg", steps, order=order))

    learner = Learner(tasks, template, config, cache=IndependentCache(cache_root), **kw)
    return run, learner


@pytest.mark.slow
def test_memo_reuses_decisions_and_resumes_prefixes(tmp_path):
    torch.set_num_threads(1)
    tasks = build_benchmark("pmnist", num_tasks=3, seed=0).tasks
    trial, learner = _small(tasks, tmp_path)

    first = trial(None, [GrowStep(delta=0.5), GrowStep(delta=0.5)])
    ref = learner.run("l2bg", sequence=[GrowStep(delta=0.5), GrowStep(delta=0.5)]).record
    for key in ("gain", "gain_raw", "params", "acc_matrix", "acc_matrix_val", "avg_val_acc"):
        assert first.record[key] == ref[key], key
    assert [t["grown_slots"] for t in first.record["tasks"]] == \
        [t["grown_slots"] for t in ref["tasks"]]
    # one memo node per prefix: the first task's, then one per decision
    assert first.stats["memo_misses"] == 3 and first.stats["memo_hits"] == 0

    # two δ values with the same nucleus: one decision sequence, trained once
    again = trial(None, [GrowStep(delta=0.5 + 1e-9), GrowStep(delta=0.5 - 1e-9)])
    assert [d.key for d in again.decisions] == [d.key for d in first.decisions]
    assert again.key == first.key
    assert again.stats["memo_misses"] == 0 and again.stats["full_hit"]
    assert again.stats["node_loads"] == 0  # nothing scored or trained: no JointNet loaded
    assert "training" not in again.record["timings"]
    assert again.record["gain"] == first.record["gain"]
    assert [t["delta"] for t in again.record["tasks"]] == [None, 0.5 + 1e-9, 0.5 - 1e-9]

    # same first decision, other second one: resumes from the saved prefix JointNet
    other = 1.0 if first.decisions[2].slots != tuple(range(3)) else 0.0
    resumed = trial(None, [GrowStep(delta=0.5), GrowStep(delta=other)])
    assert resumed.decisions[1].key == first.decisions[1].key
    assert resumed.decisions[2].key != first.decisions[2].key
    assert resumed.stats["prefix_len"] == 2 and resumed.stats["memo_misses"] == 1
    assert resumed.stats["node_loads"] == 1
    fresh = learner.run("l2bg", sequence=[GrowStep(delta=0.5), GrowStep(delta=other)]).record
    assert resumed.record["acc_matrix"] == fresh["acc_matrix"]
    assert resumed.record["gain"] == fresh["gain"] and resumed.record["params"] == fresh["params"]

    # a new process (new memo) finds everything on disk, and forced decisions work too
    trial2, _ = _small(tasks, tmp_path)
    assert trial2(None, [GrowStep(delta=0.5), GrowStep(delta=0.5)]).stats["full_hit"]
    shared = trial2(None, [GrowStep(bind_to="pmnist-0", slots=[]),
                           GrowStep(bind_to="pmnist-1", slots=[])])
    assert shared.record["params"] == first.record["tasks"][0]["params"]
    # another order keeps every task's independent net (keyed by benchmark index)
    reordered = trial2([2, 0, 1], [GrowStep(delta=0.5), GrowStep(delta=0.5)])
    assert reordered.stats["indep_trained"] == 0
    assert reordered.record["order"] == ["pmnist-2", "pmnist-0", "pmnist-1"]
    with pytest.raises(L2BGError, match="permutation"):
        trial2([0, 0, 1], [GrowStep(delta=0.5), GrowStep(delta=0.5)])
    with pytest.raises(L2BGError, match="one step per task"):
        trial2(None, [GrowStep(delta=0.5)])

    # in-memory memo (no directory) gives the same answer
    mem, _ = _small(tasks, tmp_path, memo=False)
    assert mem(None, [GrowStep(delta=0.5)] * 2).record["gain"] == first.record["gain"]
    assert mem(None, [GrowStep(delta=0.51)] * 2).stats["memo_misses"] == 0


# ----------------------------------------------------------------------------- CLI studies


SAMPLER_CASES = {
    "gp": ["--space", "per-task-delta", "--startup-trials", "2"],
    "tpe": ["--space", "bind", "--enqueue-baselines", "--max-params", "800000",
            "--startup-trials", "2"],
    "nsga2": ["--space", "shared-delta", "--delta-set", "0,0.3,0.6,1"],
    "nsga2-paper": ["--space", "per-task-delta", "--bind-targets", "pmnist-0", "--search-rules"],
    "random": ["--space", "order", "--objective", "acc", "--no-baselines", "--grow-rule",
               "similar-first", "--similarity", "linear-cka"],
}


@pytest.mark.slow
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_small_study_with_each_sampler(sampler, tmp_path, cache_dir):
    torch.set_num_threads(1)
    out = tmp_path / "out"
    args = [*BASE, "--trials", "4", "--sampler", sampler, "--cache-dir", str(cache_dir),
            "--out", str(out), *SAMPLER_CASES[sampler]]
    assert main(args) == 0
    pareto = json.loads((out / "pareto.json").read_text())
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["COMPLETE"] * 4
    assert pareto["trials"]["complete"] == 4 and pareto["pareto"]
    assert (out / "pareto.png").stat().st_size > 0 and (out / "hypervolume.png").is_file()
    assert len(pareto["hypervolume_history"]) == 4
    hv = [h["hypervolume"] for h in pareto["hypervolume_history"]]
    assert hv == sorted(hv) and hv[-1] == pareto["hypervolume"]
    for p in pareto["pareto"]:
        assert len(p["grow_sequence"]) == 3 and p["params"] > 0
        assert Path(p["net_dir"], "jointnet.json").is_file()
    study = _study(out)
    t = study.trials[-1]
    for key in ("memo_hits", "memo_misses", "memo_prefix_len", "memo_full_hit", "worker",
                "lease_until", "gain", "avg_val_acc", "params_ratio", "grow_sequence"):
        assert key in t.user_attrs, key
    assert sum(x.user_attrs["memo_hits"] + x.user_attrs["memo_misses"]
               for x in study.trials) == 4 * 3
    if sampler == "gp":  # diagonal start-up: the first trial grows everything
        assert study.trials[0].user_attrs["initial"] == "diagonal delta=1.00"
        assert set(study.trials[0].params.values()) == {1.0}
    if sampler == "tpe":  # baselines enqueued first; the parameter budget is a constraint
        assert [x.user_attrs.get("baseline") for x in study.trials[:2]] == ["shared", "full"]
        assert all("max_params" in x.constraints for x in study.trials)
        assert pareto["max_params"] == 800000
        assert all(p["params"] <= 800000 for p in pareto["pareto"])
        shared = study.trials[0].user_attrs
        assert all(g["grown_slots"] == [] for g in shared["grow_sequence"])
        assert shared["params"] == pareto["baselines"]["shared"]["params"]
    if sampler == "random":
        assert pareto["objective"] == "acc" and "shared" not in pareto["baselines"]
        assert rows[0]["value_acc"]
    else:
        assert set(pareto["baselines"]) == {"independent", "shared"}
    if sampler == "nsga2":
        assert {x.params["delta"] for x in study.trials} <= {0.0, 0.3, 0.6, 1.0}
    if sampler == "nsga2-paper":  # the rules are categorical dimensions, one per trial
        for x in study.trials:
            opts = x.user_attrs["strategy_options"]
            assert opts["grow_rule"] == x.params["grow_rule"]
            assert opts["bind_rule"] == x.params["bind_rule"]
        assert study.user_attrs["l2bg_search"]["choices"]["grow_rule"] == GROW_RULES.names()
        assert "-rules-" in study.study_name and "grow_rule=" in rows[0]["strategy_options"]
    if sampler == "random":  # fixed rules and measure: in the study's name and signature
        assert "-similar-first-linear-cka-" in study.study_name
        assert study.user_attrs["l2bg_search"]["strategy_options"]["similarity"] == "linear-cka"
        assert study.trials[0].user_attrs["strategy_options"]["grow_rule"] == "similar-first"

    # the same command again: nothing left to do; --report rewrites the outputs from storage
    assert main(args) == 0
    assert len(_study(out).trials) == 4
    if sampler == "gp":
        for name in ("pareto.json", "trials.csv", "pareto.png", "hypervolume.png"):
            (out / name).unlink()
        assert main(["--report", str(out), "--quiet"]) == 0
        assert json.loads((out / "pareto.json").read_text())["pareto"] == pareto["pareto"]
        assert (out / "pareto.png").is_file()
        # more trials resume the same study
        assert main([*args[:args.index("--trials")], "--trials", "5",
                     *args[args.index("--trials") + 2:]]) == 0
        assert sum(x.state.name == "COMPLETE" for x in _study(out).trials) == 5


@pytest.mark.parametrize("extra, match", [
    (["--trials", "0"], "--trials must be a positive"),
    (["--trials", "2", "--storage", "redis://localhost"], "unsupported storage URL"),
    (["--trials", "2", "--storage", "sqlite:////nonexistent-dir/x/y.db"], "cannot open storage"),
    (["--trials", "2", "--storage", "postgresql://u:pw@127.0.0.1:1/db"], "cannot open storage"),
    (["--trials", "2", "--storage", "journal:/nonexistent-dir/j.log"], "does not exist"),
    (["--trials", "2", "--tasks", "1"], "--tasks >= 2"),
    (["--trials", "2", "--bind-targets", "pmnist-7"], "--bind-targets"),
    (["--trials", "2", "--search-rules", "--grow-rule", "released"],
     "--grow-rule fixes what --search-rules searches"),
    (["--trials", "2", "--search-similarity", "--strategy", "random", "--space", "order"],
     "not random"),
    (["--trials", "2", "--grow-rule", "widest"], "unknown grow rule"),
])
def test_bad_input_is_one_clear_line(extra, match, tmp_path, capsys):
    args = [a for a in BASE if a != "--quiet"]
    assert main([*args, "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("l2bg: error:") and match in err and "\n" not in err
    assert "pw" not in err


@pytest.mark.slow
def test_existing_study_with_another_space_is_refused(tmp_path, cache_dir, capsys):
    out = tmp_path / "o"
    common = [*BASE, "--trials", "1", "--sampler", "random", "--no-baselines", "--cache-dir",
              str(cache_dir), "--out", str(out), "--study-name", "s"]
    assert main([*common, "--space", "shared-delta"]) == 0
    capsys.readouterr()
    assert main([*common, "--space", "per-task-delta"]) == 2
    err = capsys.readouterr().err.strip()
    assert "created for a different search" in err and "per-task-delta" in err
    assert "\n" not in err
    assert main(["--report", str(tmp_path / "missing")]) == 2
    assert "search.json not found" in capsys.readouterr().err


def test_cli_hook_when_registered(capsys):
    from l2bg import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    if "search" not in sub.choices:
        pytest.skip("l2bg.cli does not register `search` yet (add_search_parser)")
    with pytest.raises(SystemExit) as exc:
        cli.main(["search", "--help"])
    assert exc.value.code == 0 and "--sampler" in capsys.readouterr().out


# ----------------------------------------------------------------------------- processes


def _states(out):
    try:
        return [t.state.name for t in _study(out).trials]
    except Exception:  # noqa: BLE001 - not created yet
        return []


def _running_params(out):
    """Number of parameters of the last trial while it is RUNNING, else -1."""
    try:
        last = _study(out).trials[-1]
    except Exception:  # noqa: BLE001 - not created yet
        return -1
    return len(last.params) if last.state.name == "RUNNING" else -1


@pytest.mark.slow
def test_resume_after_sigkill_loses_no_trial(tmp_path, cache_dir):
    out = tmp_path / "o"
    args = _cli(*BASE, "--trials", "4", "--sampler", "random", "--space", "per-task-delta",
                "--no-baselines", "--cache-dir", str(cache_dir), "--out", str(out))
    proc = subprocess.Popen(args, env=_env(L2BG_SEARCH_TRIAL_DELAY="2"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # kill mid-trial: after the running trial holds all its parameters (per-task-delta,
        # 3 tasks: 2), not between two of Optuna's suggest writes
        _wait_for(lambda: "COMPLETE" in _states(out) and _running_params(out) == 2, 120,
                  "a completed trial and a running one with all its parameters")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = {t.number: (t.values, t.params) for t in _study(out).trials
              if t.state.name == "COMPLETE"}
    killed = [t.number for t in _study(out).trials if t.state.name == "RUNNING"]
    assert before and len(killed) == 1
    # the same command again: the killed trial is failed and retried, the rest kept
    subprocess.run(args, env=_env(), cwd=ROOT, check=True, timeout=300)
    trials = _study(out).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4
    assert {t.number: (t.values, t.params) for t in complete if t.number in before} == before
    assert trials[killed[0]].state.name == "FAIL"
    retry = [t for t in complete if t.user_attrs.get("retry_of") == killed[0]]
    assert len(retry) == 1 and retry[0].params == trials[killed[0]].params
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows].count("FAIL") == 1


@pytest.mark.slow
def test_processes_share_one_journal(tmp_path, cache_dir):
    """`--workers 2` plus a second command on the same journal file: 3 workers, 6 trials."""
    out = tmp_path / "o"
    args = [*BASE, "--trials", "6", "--sampler", "tpe", "--space", "per-task-delta",
            "--startup-trials", "2", "--no-baselines", "--cache-dir", str(cache_dir),
            "--out", str(out)]
    procs = [subprocess.Popen(_cli(*args, "--workers", "2"), env=_env(), cwd=ROOT,
                              stderr=subprocess.PIPE),
             subprocess.Popen(_cli(*args), env=_env(), cwd=ROOT, stderr=subprocess.PIPE)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    trials = _study(out).trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 6 and "RUNNING" not in states and "FAIL" not in states
    assert len({t.number for t in trials}) == len(trials)
    workers = [k for k in _study(out).user_attrs if k.startswith("worker:")]
    assert len(workers) == 3


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("L2BG_TEST_POSTGRES_URL"),
                    reason="no PostgreSQL: source .ci/postgres.sh to start one")
def test_postgres_two_workers_record_every_trial_once(tmp_path, cache_dir):
    import optuna

    url = os.environ["L2BG_TEST_POSTGRES_URL"]
    name = f"l2bg-test-{uuid.uuid4().hex[:8]}"
    args = [*BASE, "--trials", "6", "--sampler", "gp", "--space", "per-task-delta",
            "--startup-trials", "2", "--no-baselines", "--cache-dir", str(cache_dir),
            "--storage", url, "--study-name", name]
    procs = [subprocess.Popen(_cli(*args, "--out", str(tmp_path / f"o{i}")), env=_env(),
                              cwd=ROOT, stderr=subprocess.PIPE) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 6 and "RUNNING" not in states and "FAIL" not in states
    assert len({t.number for t in trials}) == len(trials) == len({t._trial_id for t in trials})
    assert len({t.user_attrs["worker"] for t in trials if t.state.name == "COMPLETE"}) >= 1
    assert len([k for k in study.user_attrs if k.startswith("worker:")]) == 2
    # each worker wrote the outputs it saw when it stopped; --report rereads the storage
    assert main(["--report", str(tmp_path / "o0"), "--quiet"]) == 0
    report = json.loads((tmp_path / "o0" / "pareto.json").read_text())
    assert report["trials"]["complete"] == 6 and report["storage"] == url


@pytest.mark.slow
def test_front_is_one_decision_with_duplicates_marked_once(tmp_path, cache_dir, capsys):
    """δ = 0.001 and 0.002 both grow only the most conflicting slot: the same network. The CLI,
    pareto.json, trials.csv and the plot's data name one front, each network once."""
    torch.set_num_threads(1)
    out = tmp_path / "out"
    args = [a for a in BASE if a != "--quiet"]
    assert main([*args, "--trials", "5", "--sampler", "random", "--space", "shared-delta",
                 "--delta-set", "0.001,0.002,1", "--no-baselines", "--cache-dir",
                 str(cache_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    pareto = json.loads((out / "pareto.json").read_text())
    rows = list(csv.DictReader((out / "trials.csv").open()))
    front = pareto["pareto"]
    numbers = [p["number"] for p in front]
    assert f"Pareto front ({len(front)} networks" in printed
    for n in numbers:
        assert f"trial {n:>4}" in printed
    assert [int(r["number"]) for r in rows if r["pareto"] == "True"] == sorted(numbers)
    assert [p["number"] for p in pareto["figure"]["front"]] == [
        p["number"] for p in sorted(front, key=lambda p: p["params"])]
    # trials that built the same network point at the first one, and never sit on the front
    nets: dict[str, list[int]] = {}
    for r in rows:
        nets.setdefault(r["grow_sequence"], []).append(int(r["number"]))
    assert any(len(v) > 1 for v in nets.values())
    for members in nets.values():
        for n in members[1:]:
            row = rows[n]
            assert row["same_network_as"] == str(members[0]) and row["pareto"] == "False"
    for p in front:
        assert p["trials"] == next(v for v in nets.values() if p["number"] in v)
    # slot names and δ as the space defines them, in the CSV and the per-trial lines
    assert all("[" not in r["grow_sequence"] or "fc" in r["grow_sequence"]
               or "head" in r["grow_sequence"] for r in rows)
    assert {r["delta"] for r in rows} <= {"0.001", "0.002", "1"}
    assert "0.30000000000000004" not in (out / "trials.csv").read_text()
    assert printed.count("] trial ") == 5
