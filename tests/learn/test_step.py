"""Strategies through the one loop: a strategy registered from outside the package runs through
``Learner.run``, the search and the CLI; configured rules and similarity measures are recorded,
and the memo keeps conflict scores per measure while sharing nodes across rules."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from l2bg.base.errors import L2BGError
from l2bg.data import build_benchmark
from l2bg.learn import strategies
from l2bg.learn.independent import IndependentCache
from l2bg.learn.learner import GrowStep, Learner
from l2bg.learn.step import Decision, StepContext
from l2bg.learn.training import default_config
from l2bg.net.templates import mlp
from l2bg.search import Memo

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tasks():
    return build_benchmark("pmnist", num_tasks=3, seed=0).tasks


def _learner(tasks, cache_root=None):
    template = mlp(input_dim=784, hidden=(32, 32), num_classes=10, shared_head=True)
    config = default_config("mlp", epochs=1)
    return Learner(tasks, template, config, benchmark="test", seed=0, rsa_samples=60,
                   cache=IndependentCache(cache_root))


# --------------------------------------------------------------------------- a user's strategy


class GrowFirst(strategies.Strategy):
    """Bind to the previous task and grow the first round(δ·L) expandable slots."""

    name = "grow-first"
    help = "test strategy: grow the first slots"
    takes_delta = True

    def decide(self, ctx: StepContext) -> Decision:
        k = round(ctx.spec.delta * len(ctx.expandable))
        return Decision(ctx.task, ctx.previous, tuple(ctx.expandable[:k]), ctx.spec.delta,
                        reason="first slots")


@pytest.fixture
def grow_first():
    strat = strategies.register(GrowFirst())
    yield strat
    strategies.unregister(strat.name)


@pytest.mark.slow
def test_registered_strategy_runs_in_learner_and_search(grow_first, tasks, tmp_path):
    torch.set_num_threads(1)
    assert "grow-first" in strategies.names()
    r = _learner(tasks).run("grow-first", delta=0.67).record
    assert [t["grown_slots"] for t in r["tasks"]] == [[], ["fc1", "fc2"], ["fc1", "fc2"]]
    assert r["strategy"] == "grow-first"

    from l2bg.learn.settings import Settings
    from l2bg.search.study import SearchConfig, run_search

    settings = Settings("pmnist", tasks=3, epochs=1, rsa_samples=60,
                        cache_dir=str(tmp_path / "c"))
    summary = run_search(SearchConfig(settings, trials=2, strategy="grow-first",
                                      sampler="random", out=str(tmp_path / "s"), quiet=True,
                                      baselines=False, threads=1))
    assert summary["trials"]["complete"] == 2
    rows = (tmp_path / "s" / "trials.csv").read_text().splitlines()
    assert len(rows) == 3


def test_bad_strategies_are_refused(tasks, grow_first):
    with pytest.raises(L2BGError, match="unknown strategy"):
        strategies.get("nope")
    with pytest.raises(L2BGError, match="already registered"):
        strategies.register(GrowFirst())
    with pytest.raises(L2BGError, match="takes an l2bg.learn.strategies.Strategy"):
        strategies.register(object())

    class Liar(strategies.Strategy):
        name = "liar"

        def decide(self, ctx):
            return Decision(ctx.task, "not-a-task", ())

    with pytest.raises(L2BGError, match="not a learned task"):
        _learner(tasks).run(Liar())


@pytest.mark.slow
def test_entry_point_strategy_through_the_cli(tmp_path):
    """A package that declares ``l2bg.strategies`` in its metadata is found by name."""
    (tmp_path / "myplugin.py").write_text(textwrap.dedent('''
        from l2bg.learn.step import Decision
        from l2bg.learn.strategies import Strategy

        class HeadOnly(Strategy):
            name = "head-only"
            help = "grow only the head slot"

            def decide(self, ctx):
                return Decision(ctx.task, ctx.previous, (ctx.expandable[-1],),
                                reason="head only")
    '''))
    dist = tmp_path / "myplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[l2bg.strategies]\nhead-only = myplugin:HeadOnly\n")
    out = tmp_path / "out"
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "l2bg", "run", "--benchmark", "pmnist", "--tasks", "2",
         "--epochs", "1", "--strategy", "head-only", "--out", str(out), "--no-cache",
         "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((out / "results.json").read_text())
    assert r["strategy"] == "head-only" and r["tasks"][1]["grown_slots"] == ["head"]


# --------------------------------------------------------------------------- rules and measures


@pytest.mark.slow
def test_configured_rules_and_measures_in_learner_and_memo(tasks, tmp_path):
    """A run with other rules and another measure records them; the memo keeps scores per
    measure (never mixed) and shares nodes across rules."""
    torch.set_num_threads(1)
    base = strategies.get("l2bg")
    cka = base.configured(grow_rule="released", bind_rule="released", similarity="linear-cka")
    seq = [GrowStep(delta=0.5), GrowStep(delta=0.5)]
    learner = _learner(tasks, tmp_path / "c")
    memo = Memo.attach(learner, memo_dir=tmp_path / "c")

    def trial(steps, strategy):
        return memo.outcome(learner.run(strategy, steps))

    rsa = trial(seq, base)
    got = trial(seq, cka)
    assert got.stats["scores_misses"] == 2  # the RSA scores of the same nodes are not reused
    want = got.record
    assert want["strategy_options"] == {"grow_rule": "released", "bind_rule": "released",
                                        "similarity": "linear-cka"}
    assert want["tasks"][1]["rules"] == {"bind": "released", "grow": "released",
                                         "similarity": "linear-cka"}
    assert rsa.record["tasks"][1]["rules"] == {"bind": "least-conflict", "grow": "conflict",
                                               "similarity": "rsa-spearman"}
    c_rsa = rsa.record["tasks"][1]["conflict"]["pmnist-0"]["layers"]
    c_cka = got.record["tasks"][1]["conflict"]["pmnist-0"]["layers"]
    assert c_rsa != c_cka and all(0 <= c <= 1 for c in c_cka)
    # forced parts are recorded as forced: no rule decided them
    forced = _learner(tasks).run(base, sequence=[GrowStep(delta=0.5, bind_to="pmnist-0"),
                                                 GrowStep(slots=["head"])]).record
    assert forced["tasks"][1]["rules"] == {"bind": None, "grow": "conflict",
                                           "similarity": "rsa-spearman"}
    assert forced["tasks"][2]["rules"]["grow"] is None
    # the same decisions under another grow rule are the same nodes: nothing is retrained
    every = [GrowStep(delta=1.0), GrowStep(delta=1.0)]
    first = trial(every, base)
    again = trial(every, base.configured(grow_rule="similar-first"))
    assert [d.key for d in again.decisions] == [d.key for d in first.decisions]
    assert again.stats["full_hit"] and again.stats["scores_misses"] == 0


def test_random_draw_seed_draws_apart_from_the_data_seed(tasks):
    learner = _learner(tasks)
    steps = [GrowStep(), GrowStep()]

    def decisions(strategy):
        import random as _random

        rng = _random.Random(strategy.rng_seed(learner.seed))
        ctxs = [learner.step.context([0, 1, 2], p, steps[0], rng, None) for p in (1, 2)]
        return [strategy.decide(c).key for c in ctxs]

    plain = strategies.get("random")
    assert decisions(plain) == decisions(plain.configured(draw_seed=0))
    draws = {str(decisions(plain.configured(draw_seed=s))) for s in range(8)}
    assert len(draws) > 1
    assert plain.configured(draw_seed=5).options() == {"draw_seed": 5}
