"""Plugins of the one loop over tasks: a plugin that counts tasks and records decisions sees the
same calls under ``Learner.run``, ``l2bg run`` and ``l2bg search`` (where the memo restores
tasks instead of training them: memo hits, a full hit and a prefix resume); a restored task is
not trained; the entry-point group ``l2bg.plugins`` and the former name ``Hook`` work."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from l2bg.base.errors import L2BGError
from l2bg.learn import plugins
from l2bg.learn.independent import IndependentCache
from l2bg.learn.learner import Hook, Learner, LogLines
from l2bg.learn.plugins import Plugin
from l2bg.learn.settings import Settings
from l2bg.learn.step import TaskRecord

#: the recording plugin, as another package would ship it
RECORDER = '''
from l2bg.learn.plugins import Plugin

EVENTS = []  # one list per run


class Recorder(Plugin):
    """Counts tasks and records every decision and outcome it is shown."""

    def before_run(self, run):
        self.tasks = 0
        EVENTS.append([("run", run.strategy.name, run.strategy.options(), tuple(run.steps),
                        tuple(run.order))])

    def before_task(self, ctx):
        EVENTS[-1].append(("before", ctx.position, ctx.task, tuple(ctx.learned)))

    def after_task(self, ctx, record, elapsed_s):
        self.tasks += 1
        d = record.decision
        EVENTS[-1].append(("after", ctx.position, d.key, d.delta, d.reason, record.val_row,
                           record.test_row, record.params, record.train_loss))

    def after_run(self, run, result):
        EVENTS[-1].append(("end", self.tasks, result is not None and len(result.records)))
'''


@pytest.fixture
def recorder(tmp_path, monkeypatch):
    """The module ``recplugin`` declared in the entry-point group ``l2bg.plugins``; its
    ``EVENTS`` collect what every learner's Recorder saw."""
    pkg = tmp_path / "plugin"
    pkg.mkdir()
    (pkg / "recplugin.py").write_text(textwrap.dedent(RECORDER))
    dist = pkg / "recplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: recplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[l2bg.plugins]\nrecorder = recplugin:Recorder\n")
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setattr(plugins, "_ENTRY_POINTS_LOADED", False)
    import recplugin

    yield recplugin
    if "recorder" in plugins.names():
        plugins.unregister("recorder")
    monkeypatch.delitem(__import__("sys").modules, "recplugin")


def _settings(tiny_mnist, cache):
    return Settings("pmnist", data_root=str(tiny_mnist), tasks=3, epochs=1, batch_size=32,
                    rsa_samples=10, cache_dir=str(cache))


def _replay(settings, rec, run_event):
    """The events of the same run through a plain ``Learner.run`` (no memo, fresh cache)."""
    _, name, options, steps, order = run_event
    learner = settings.learner(settings.build(), IndependentCache(None),
                               hooks=(rec.Recorder(),))
    learner.run(settings.strategy(name).configured(**options), list(steps), order=order)
    return rec.EVENTS.pop()


@pytest.mark.slow
def test_a_plugin_sees_the_same_calls_under_learner_run_l2bg_run_and_l2bg_search(
        recorder, tiny_mnist, tmp_path):
    from l2bg.cli import main

    torch.set_num_threads(1)
    settings = _settings(tiny_mnist, tmp_path / "cache")
    common = ["--benchmark", "pmnist", "--data-root", str(tiny_mnist), "--tasks", "3",
              "--epochs", "1", "--batch-size", "32", "--rsa-samples", "10", "--cache-dir",
              str(tmp_path / "cache"), "--quiet"]
    assert plugins.names() == ["recorder"]

    # l2bg run: the entry point's plugin fires as a plugin given to Learner.run does
    assert main(["run", *common, "--strategy", "l2bg", "--delta", "0.5",
                 "--out", str(tmp_path / "run")]) == 0
    [cli] = recorder.EVENTS
    recorder.EVENTS.clear()
    assert cli[0][:2] == ("run", "l2bg") and cli[-1] == ("end", 3, 3)
    assert [e[0] for e in cli] == ["run"] + ["before", "after"] * 3 + ["end"]
    assert cli == _replay(settings, recorder, cli[0])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [e[2] for e in cli if e[0] == "after"] == [
        [t["name"], t["bind_to"], [results["slots"].index(s) for s in t["grown_slots"]]]
        for t in results["tasks"]]

    # l2bg search, 2 trials (bind to the previous task; grow nothing, then everything) and the
    # shared baseline: the second trial restores the first task and resumes from its JointNet,
    # the baseline restores every task (the first trial's decisions)
    out = tmp_path / "search"
    assert main(["search", *common, "--trials", "2", "--space", "bind", "--sampler", "random",
                 "--enqueue-baselines", "--threads", "1", "--out", str(out)]) == 0
    runs = list(recorder.EVENTS)
    recorder.EVENTS.clear()
    assert [r[0][1] for r in runs] == ["l2bg", "l2bg", "shared"]
    import optuna

    meta = json.loads((out / "search.json").read_text())
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    study = optuna.load_study(study_name=meta["study_name"], storage=storage)
    attrs = [t.user_attrs for t in study.trials]
    assert [a["memo_hits"] for a in attrs] == [0, 1]
    assert attrs[1]["memo_prefix_len"] == 1 and attrs[1]["memo_node_loads"] == 1  # resumed
    for events in runs:
        assert [e[0] for e in events] == ["run"] + ["before", "after"] * 3 + ["end"]
        assert events[-1] == ("end", 3, 3)
        assert events == _replay(settings, recorder, events[0])
    # the baseline's decisions are the first trial's: it was restored, nothing trained
    assert [e[2] for e in runs[2] if e[0] == "after"] == [e[2] for e in runs[0]
                                                           if e[0] == "after"]


def test_a_restored_task_is_not_trained_and_the_loop_is_the_same(tiny_mnist, tmp_path,
                                                                 request):
    """A plugin that restores every decision from a first run's records: the second run
    trains nothing, gives the same record, and loads no JointNet until its net is read."""
    torch.set_num_threads(1)
    settings = _settings(tiny_mnist, tmp_path / "cache")
    built = settings.build()
    first = settings.learner(built, IndependentCache(None)).run("full")
    stored = {r.decision.task: r for r in first.records}
    loads = []

    class Replay(Plugin):
        def restore(self, prefix, decision):
            record = stored[decision.task]
            assert isinstance(record, TaskRecord) and record.decision == decision
            assert [d.task for d in prefix] == list(stored)[:len(prefix)]
            return plugins.Restored(record, lambda: loads.append(1) or first.net)

    request.getfixturevalue("no_training")  # from here any training fails the test
    again = settings.learner(built, IndependentCache(None), hooks=(Replay(),)).run("full")
    volatile = {"timings", "wall_time_s", "cache"}
    assert {k: v for k, v in again.record.items() if k not in volatile} == {
        k: v for k, v in first.record.items() if k not in volatile}
    assert loads == []
    assert again.net is first.net and loads == [1]


def test_hook_is_the_former_name_and_bad_plugins_are_refused(recorder, tmp_path):
    assert Hook is Plugin and issubclass(LogLines, Plugin)
    assert [type(p).__name__ for p in plugins.registered()] == ["Recorder"]
    plugins.register(LogLines, name="log", replace=False)
    try:
        with pytest.raises(L2BGError, match="already registered"):
            plugins.register(LogLines, name="log")
    finally:
        plugins.unregister("log")
    plugins.register(lambda: object(), name="liar")
    try:
        with pytest.raises(L2BGError, match="plugin 'liar' gave a object, not an"):
            plugins.registered()
    finally:
        plugins.unregister("liar")
    with pytest.raises(L2BGError, match="callable"):
        plugins.register(42, name="num")


def test_a_broken_entry_point_plugin_is_skipped_with_one_warning(tmp_path, monkeypatch):
    pkg = tmp_path / "broken"
    dist = pkg / "brokenplug-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[l2bg.plugins]\nbroken = no_such_module:X\n")
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setattr(plugins, "_ENTRY_POINTS_LOADED", False)
    with pytest.warns(RuntimeWarning, match="plugin entry point broken .* failed to load"):
        assert "broken" not in plugins.names()


def test_a_memo_refuses_another_learners_experiment(tiny_mnist, tmp_path):
    from l2bg.search.memo import Memo

    settings = _settings(tiny_mnist, tmp_path / "cache")
    built = settings.build()
    a = settings.learner(built, IndependentCache(None))
    b: Learner = settings.learner(built, IndependentCache(None))
    b.plugins.append(Memo(a.experiment))
    with pytest.raises(L2BGError, match="another experiment"):
        b.run("shared")


def test_a_failing_after_run_never_hides_the_run_error_nor_skips_other_plugins(
        tiny_mnist, tmp_path, monkeypatch):
    """After a failed run a plugin whose ``after_run`` fails is a warning and the run's error
    is raised; after a good run its error is raised, and every plugin still got the call."""
    settings = _settings(tiny_mnist, tmp_path / "cache")
    built = settings.build()
    seen = []

    class Broken(Plugin):
        def after_run(self, run, result):
            seen.append(("broken", result is None))
            raise RuntimeError("plugin fault")

    class Counting(Plugin):
        def after_run(self, run, result):
            seen.append(("counting", result is None))

    def learner():
        return settings.learner(built, IndependentCache(None), hooks=(Broken(), Counting()))

    from l2bg.learn import step as step_module

    def fail(*args, **kwargs):
        raise L2BGError("the run's own fault")

    with monkeypatch.context() as m:
        m.setattr(step_module.BindGrowStep, "apply", fail)
        with pytest.warns(RuntimeWarning, match="Broken: after_run failed after the run "
                          "failed .*plugin fault"), pytest.raises(L2BGError, match="own fault"):
            learner().run("full")
    assert seen == [("broken", True), ("counting", True)]
    seen.clear()
    with pytest.raises(RuntimeError, match="plugin fault"):
        learner().run("full")
    assert seen == [("broken", False), ("counting", False)]
