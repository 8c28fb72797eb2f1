"""Fault injection (issue 14): ``l2bg run`` and ``l2bg search`` processes SIGKILL themselves at a
point chosen by a seeded RNG (the k-th optimizer step, file write, cache or memo directory,
journal append, report file: :mod:`l2bg.faults`); after each fault the same command is run again
and must end where an uninterrupted run ends:

* run: results.json and the JointNet equal the uninterrupted run's (a run killed after it
  published results.json had finished: the rerun refuses its --out, which it already holds);
  the user's own files in --out are untouched and nothing of the dead run is left in it;
* search: every trial that had completed keeps its values and parameters, every completed trial
  (a retried one included) has the values of a fresh evaluation of its parameters, and each
  failed trial was retried with its parameters;
* both: no cached independent net or memo node that existed after the fault is lost, and none
  is found damaged (every write is atomic).

Processes are forks of the test process (milliseconds to start); tasks are tiny (4x4-pixel
digits, 1 epoch). The counts are printed (``-s``) and asserted: at least 50 faults, 0 losses.
"""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter

import pytest
import torch
from forking import forked

from l2bg.base import crashpoints as faults
from l2bg.cli import main
from l2bg.cli.run import OUTPUTS

SEED = 14
RUN_FAULTS = 36
SEARCH_FAULTS = 18
TALLY: Counter = Counter()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    torch.set_num_threads(1)
    yield
    print(f"\nfault injection: {dict(TALLY)}")


def _count(fn):
    """Run ``fn`` in this process (which also imports everything the forked children need)
    counting fault points; returns the counts."""
    faults.arm(None)
    assert fn() == 0
    counts = faults.counts()
    faults.arm(None)
    return counts


def _armed(fn, kind, k):
    def body():
        faults.arm(kind, k)
        return fn()
    return body


def _pick(rng, counts, kinds):
    """(kind to arm, k): a fault point chosen uniformly among those of a kind; ``report`` is
    one of the last writes (results.json, the report files)."""
    kind = rng.choice([k for k in kinds if k == "report" or counts.get(k, 0) > 0])
    if kind == "report":
        w = counts["write"]
        return "write", rng.randint(max(1, w - 4), w), "report"
    return kind, rng.randint(1, counts[kind]), kind


def _entries(cache):
    """Visible entries (cached nets, memo nodes, scores) under the cache directory."""
    found = set()
    for d in ("independent", "memo"):
        root = cache / d
        if root.is_dir():
            found |= {str(p.relative_to(cache)) for p in root.rglob("*")
                      if not any(part.startswith(".") for part in p.relative_to(cache).parts)
                      and ".damaged-" not in p.name and (p.parent.name in (
                          "independent", "nodes", "scores"))}
    return found


def _damaged(cache):
    return sorted(str(p) for p in cache.rglob("*.damaged-*"))


def _seed_cache(rng, ref_cache, cache):
    """A cold, warm or partly warm cache."""
    mode = rng.choice(["cold", "warm", "partial"])
    if mode != "cold":
        shutil.copytree(ref_cache, cache)
        if mode == "partial":
            entries = sorted(p for p in (cache / "independent").iterdir()
                             if not p.name.startswith("."))
            for p in rng.sample(entries, rng.randint(1, len(entries))):
                shutil.rmtree(p)
            memo = cache / "memo"
            if memo.is_dir() and rng.random() < 0.5:
                shutil.rmtree(memo)
    return "warm" if mode == "warm" else "cold"


# ----------------------------------------------------------------------------- run


def _run_argv(data, cache, out):
    return ["run", "--benchmark", "pmnist", "--data-root", str(data), "--tasks", "3",
            "--strategy", "l2bg", "--delta", "0.5", "--epochs", "1", "--batch-size", "32",
            "--rsa-samples", "10", "--quiet", "--cache-dir", str(cache), "--out", str(out)]


CORE = ("benchmark", "strategy", "seed", "tasks", "grow_sequence", "acc_matrix",
        "acc_matrix_val", "avg_test_acc", "avg_val_acc", "bwt", "fwt", "gain", "gain_raw",
        "params", "params_independent")


def _core(record):
    tasks = [{k: v for k, v in t.items() if k != "independent_cached"}
             for t in record["tasks"]]
    return {**{k: record[k] for k in CORE}, "tasks": tasks}


def _weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "jointnet.safetensors"))


def test_killed_runs_end_as_an_uninterrupted_run(tmp_path, tiny_mnist):
    rng = random.Random(SEED)
    ref_cache, ref_out = tmp_path / "ref-cache", tmp_path / "ref-out"
    counts = {state: _count(lambda o=out: main(_run_argv(tiny_mnist, ref_cache, o)))
              for state, out in (("cold", ref_out), ("warm", tmp_path / "ref-out-warm"))}
    ref = _core(json.loads((ref_out / "results.json").read_text()))
    ref_w = _weights(ref_out)
    kinds = ("train", "write", "dir", "any", "report")
    i = 0
    while TALLY["run faults"] < RUN_FAULTS and i < 2 * RUN_FAULTS:
        i += 1
        cache, out = tmp_path / f"c{i}", tmp_path / f"o{i}"
        state = _seed_cache(rng, ref_cache, cache)
        user = {}
        if rng.random() < 0.5:  # --out already holds the user's files
            out.mkdir()
            (out / "notes.txt").write_text(f"notes {i}")
            user[out / "notes.txt"] = f"notes {i}"
        kind, k, label = _pick(rng, counts[state], kinds)
        argv = _run_argv(tiny_mnist, cache, out)
        child = forked(_armed(lambda a=argv: main(a), kind, k))
        if child.killed:
            TALLY["run faults"] += 1
            TALLY[f"run faults: {label}"] += 1
            kept = _entries(cache)
            rerun = forked(lambda a=argv: main(a))
            # killed after results.json, the completion marker, was published: the run had
            # finished, its outputs are kept and the rerun says so
            finished = rerun.code == 2 and "already holds" in rerun.output
            TALLY["run: killed after it finished"] += finished
            assert rerun.code == 0 or finished, (i, kind, k, rerun.output)
        else:  # the point was not reached (a warmer cache does less): a finished run
            assert child.code == 0, (i, kind, k, child.output)
            TALLY["run: fault point not reached"] += 1
            kept = set()
        losses = []
        got = json.loads((out / "results.json").read_text())
        if _core(got) != ref:
            losses.append("results differ")
        w = _weights(out)
        if w.keys() != ref_w.keys() or not all(torch.equal(w[k_], ref_w[k_]) for k_ in w):
            losses.append("JointNet differs")
        if sorted(p.name for p in out.iterdir()) != sorted([*OUTPUTS, *(p.name for p in user)]):
            losses.append(f"--out holds {sorted(p.name for p in out.iterdir())}")
        if any(p.read_text() != text for p, text in user.items()):
            losses.append("a user file changed")
        if not kept <= _entries(cache):
            losses.append(f"cache entries lost: {sorted(kept - _entries(cache))}")
        if _damaged(cache):
            losses.append(f"damaged entries: {_damaged(cache)}")
        TALLY["losses"] += len(losses)
        assert not losses, (i, kind, k, losses)
        shutil.rmtree(cache)
        shutil.rmtree(out)
    assert TALLY["run faults"] == RUN_FAULTS


# ----------------------------------------------------------------------------- search


def _search_argv(data, cache, out, trials):
    return ["search", "--benchmark", "pmnist", "--data-root", str(data), "--tasks", "3",
            "--epochs", "1", "--batch-size", "32", "--rsa-samples", "10", "--trials",
            str(trials), "--sampler", "random", "--space", "per-task-delta", "--no-baselines",
            "--threads", "1", "--quiet", "--lease-seconds", "3", "--study-name", "s",
            "--cache-dir", str(cache), "--out", str(out)]


def _trials(out):
    """Trials as Optuna replays the journal, read-only (a torn tail is skipped, not cut)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = out / "study.journal"
    if not path.is_file():
        return []
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(path)))
    try:
        return optuna.load_study(study_name="s", storage=storage).trials
    except KeyError:
        return []


@pytest.fixture(scope="module")
def evaluate(tiny_mnist):
    """Fresh evaluation of a trial's parameters: Learner.run of the decoded grow sequence."""
    from l2bg.learn.independent import IndependentCache
    from l2bg.learn.settings import Settings
    from l2bg.search.space import SearchSpace

    settings = Settings("pmnist", data_root=str(tiny_mnist), tasks=3, epochs=1, batch_size=32,
                        rsa_samples=10)
    built = settings.build()
    learner = settings.learner(built, IndependentCache(None))
    space = SearchSpace("per-task-delta", tuple(t.name for t in built.bench.tasks))
    memo: dict = {}

    def values(params):
        key = json.dumps(params, sort_keys=True)
        if key not in memo:
            order, steps = space.decode(params)
            r = learner.run("l2bg", sequence=steps, order=order).record
            memo[key] = [float(r["gain"]), float(r["params"])]
        return memo[key]
    return values


def test_killed_searches_keep_every_trial_and_retry_the_killed_one(tmp_path, tiny_mnist,
                                                                    evaluate):
    rng = random.Random(SEED + 1)
    ref_cache, ref_out = tmp_path / "ref-cache", tmp_path / "ref-out"
    counts = {("fresh", "cold"): _count(lambda: main(_search_argv(tiny_mnist, ref_cache,
                                                                  ref_out, 3)))}
    for study, cache_state in (("fresh", "warm"), ("resumed", "cold"), ("resumed", "warm")):
        c, o = tmp_path / "count-cache", tmp_path / "count-out"
        if cache_state == "warm":
            shutil.copytree(ref_cache, c)
        if study == "resumed":
            shutil.copytree(ref_out, o)
        counts[study, cache_state] = _count(lambda c=c, o=o: main(_search_argv(
            tiny_mnist, c, o, 5)))
        shutil.rmtree(c, ignore_errors=True)
        shutil.rmtree(o, ignore_errors=True)
    kinds = ("train", "write", "dir", "journal", "report", "train", "write", "dir", "journal")
    i = 0
    while TALLY["search faults"] < SEARCH_FAULTS and i < 2 * SEARCH_FAULTS:
        i += 1
        cache, out = tmp_path / f"c{i}", tmp_path / f"o{i}"
        cache_state = _seed_cache(rng, ref_cache, cache)
        study, trials = "fresh", 3
        if rng.random() < 0.4:  # resume a study that already holds completed trials
            shutil.copytree(ref_out, out)
            study, trials = "resumed", 5
        state = (study, cache_state)
        kind, k, label = _pick(rng, counts[state], kinds)
        argv = _search_argv(tiny_mnist, cache, out, trials)
        child = forked(_armed(lambda a=argv: main(a), kind, k))
        if not child.killed:
            assert child.code == 0, (i, kind, k, child.output)
            TALLY["search: fault point not reached"] += 1
            continue
        TALLY["search faults"] += 1
        TALLY[f"search faults: {label}"] += 1
        before = {t.number: (t.values, t.params) for t in _trials(out)
                  if t.state.name == "COMPLETE"}
        kept = _entries(cache)
        rerun = forked(lambda a=argv: main(a))
        assert rerun.code == 0, (i, kind, k, rerun.output)
        losses = []
        after = _trials(out)
        complete = [t for t in after if t.state.name == "COMPLETE"]
        if len(complete) != trials:
            losses.append(f"{len(complete)} complete trials, not {trials}")
        now = {t.number: (t.values, t.params) for t in complete}
        if any(now.get(n) != v for n, v in before.items()):
            losses.append("a completed trial changed or vanished")
        for t in complete:
            if t.values != evaluate(t.params):
                losses.append(f"trial {t.number} differs from a fresh evaluation")
        for t in after:
            if t.state.name != "FAIL":
                continue
            retries = [r for r in complete if r.user_attrs.get("retry_of") == t.number]
            if len(retries) != 1 or not t.params.items() <= retries[0].params.items():
                losses.append(f"failed trial {t.number} was not retried with its parameters")
            TALLY["search: trials retried"] += 1
        pareto = json.loads((out / "pareto.json").read_text())
        if pareto["trials"]["complete"] != trials:
            losses.append("the report misses trials")
        if not kept <= _entries(cache):
            losses.append(f"cache entries lost: {sorted(kept - _entries(cache))}")
        if _damaged(cache):
            losses.append(f"damaged entries: {_damaged(cache)}")
        TALLY["search: torn journal lines set aside"] += len(list(out.glob(
            "study.journal.damaged-*")))
        TALLY["losses"] += len(losses)
        assert not losses, (i, kind, k, losses)
        shutil.rmtree(cache)
        shutil.rmtree(out)
    assert TALLY["search faults"] == SEARCH_FAULTS
