"""The run configuration: one check of settings, strategy and δ before any work; δ becomes grow
steps in one place; errors name parameters, and the command line shows them as flags."""

from __future__ import annotations

import pickle

import pytest

from l2bg.base.errors import L2BGError, ParamError
from l2bg.cli.flags import FLAGS, message
from l2bg.learn.runconfig import RunConfig, grow_steps
from l2bg.learn.settings import Settings
from l2bg.learn.step import GrowStep


def test_a_param_error_names_the_parameter_and_renders_the_flag():
    exc = ParamError("{num_tasks} must be >= 1, got 0; pass {num_tasks} >= 1", "num_tasks")
    assert str(exc) == "num_tasks must be >= 1, got 0; pass num_tasks >= 1"
    assert exc.param == "num_tasks" and isinstance(exc, L2BGError)
    assert message(exc) == "--tasks must be >= 1, got 0; pass --tasks >= 1"
    back = pickle.loads(pickle.dumps(exc))  # a worker process hands it over whole
    assert (back.template, back.params, str(back)) == (exc.template, exc.params, str(exc))


def test_only_named_parameters_are_replaced():
    """A value that merely looks like a placeholder stays as the user wrote it."""
    exc = ParamError("task '{seed}' in {seed_list}: {lr} is bad", "lr")
    assert message(exc) == "task '{seed}' in {seed_list}: --lr is bad"


@pytest.mark.parametrize("kwargs, param, words", [
    ({"delta": 1.5}, "delta", "grow coefficient delta must be in [0, 1], got 1.5"),
    ({"delta": float("nan")}, "delta", "delta must be in [0, 1]"),
    ({"deltas": [0.5, 2.0]}, "deltas", "grow coefficient deltas must be in [0, 1], got 2.0"),
    ({"delta": 0.5, "deltas": [0.5]}, "delta", "give either delta or deltas, not both"),
    ({}, "strategy", "strategy l2bg needs a grow coefficient: delta D or deltas"),
    ({"strategy": "shared", "delta": 0.5}, "delta", "delta/deltas apply to strategies that take"),
    ({"strategy": "random", "grow_rule": "released"}, "grow_rule",
     "grow_rule applies to strategies that use the conflict model"),
    ({"bind_rule": "most", "delta": 0.5}, "bind_rule", "unknown bind rule 'most' for bind_rule"),
    ({"epochs": 0, "delta": 0.5}, "epochs", "epochs must be >= 1, got 0"),
    ({"cache_dir": " ", "delta": 0.5}, "cache_dir", "cache_dir is empty"),
])
def test_check_refuses_bad_input_naming_the_parameter(kwargs, param, words, no_training):
    kwargs = dict(kwargs)
    run = {k: kwargs.pop(k) for k in ("strategy", "delta", "deltas") if k in kwargs}
    config = RunConfig(Settings("pmnist", **kwargs), **run)
    with pytest.raises(ParamError, match=None) as info:
        config.check()
    assert info.value.param == param and words in str(info.value), str(info.value)
    assert "--" not in str(info.value)  # the core speaks parameters
    assert FLAGS[param] in message(info.value)


def test_check_passes_a_good_configuration_and_returns_the_configured_strategy(no_training):
    strategy = RunConfig(Settings("pmnist", grow_rule="released"), "l2bg", delta=0.5).check()
    assert strategy.name == "l2bg" and strategy.grow_rule == "released"
    assert RunConfig(Settings("pmnist"), "shared").check().name == "shared"
    assert RunConfig(Settings("pmnist"), "l2bg").check(searched=True).name == "l2bg"


@pytest.mark.parametrize("T, delta, deltas, want", [
    (3, 0.5, None, [0.5, 0.5]),
    (3, None, [0.25, 1.0], [0.25, 1.0]),
    (1, 0.5, None, []),
    (2, None, None, [None]),
])
def test_grow_steps_make_one_step_per_task_after_the_first(T, delta, deltas, want):
    steps = grow_steps(T, delta, deltas)
    assert all(isinstance(s, GrowStep) for s in steps)
    assert [s.delta for s in steps] == want


def test_grow_steps_refuse_the_wrong_number_of_deltas():
    with pytest.raises(ParamError) as info:
        grow_steps(4, deltas=[0.5, 0.5])
    assert info.value.param == "deltas"
    assert message(info.value) == ("--deltas has 2 values; 4 tasks need 3 (one per task after "
                                   "the first)")


@pytest.mark.parametrize("bad", [-0.1, 1.01, float("inf"), float("nan"), True, "0.5"])
def test_a_grow_step_checks_its_delta_once_by_the_one_rule(bad):
    from l2bg.conflict import check_delta

    with pytest.raises(ParamError) as info:
        GrowStep(delta=bad)
    with pytest.raises(ParamError) as same:
        check_delta(bad)
    assert str(info.value) == str(same.value)


def test_learner_delta_uses_the_same_steps(no_training):
    """``Learner.run(delta=…)`` turns δ into grow steps through grow_steps: its checks and its
    messages are the run configuration's."""
    from l2bg.data import build_benchmark
    from l2bg.learn.learner import Learner
    from l2bg.learn.training import default_config
    from l2bg.net.catalog import template_for

    bench = build_benchmark("pmnist", num_tasks=3)
    learner = Learner(bench.tasks, template_for(bench), default_config("mlp"), cache=False,
                      quiet=True)
    _, steps, _ = learner.prepare("l2bg", delta=0.25)
    assert steps == grow_steps(3, 0.25)
    with pytest.raises(ParamError, match="delta must be in"):
        learner.prepare("l2bg", delta=3.0)
    with pytest.raises(ParamError, match="needs a grow coefficient"):
        learner.prepare("l2bg")


def test_run_config_run_gives_the_record_l2bg_run_writes(tiny_mnist, tmp_path, capsys):
    """The Python run of a configuration and ``l2bg run`` with the same flags record the same
    decisions, numbers and config block (times aside)."""
    import json

    from l2bg.cli import main

    cache, out = tmp_path / "cache", tmp_path / "out"
    assert main(["run", "--benchmark", "pmnist", "--data-root", str(tiny_mnist), "--tasks", "3",
                 "--epochs", "1", "--rsa-samples", "10", "--strategy", "l2bg", "--deltas",
                 "0.5,0.25", "--grow-rule", "released", "--cache-dir", str(cache), "--out",
                 str(out), "--quiet"]) == 0
    cli = json.loads((out / "results.json").read_text())
    settings = Settings("pmnist", data_root=str(tiny_mnist), tasks=3, epochs=1, rsa_samples=10,
                        grow_rule="released", cache_dir=str(cache))
    api = RunConfig(settings, "l2bg", deltas=[0.5, 0.25]).run(quiet=True).record
    api = json.loads(json.dumps(api.to_json()))
    for record in (api, cli):
        for task in record["tasks"]:
            task.pop("independent_cached")  # trained by the CLI, read from the cache here
    volatile = {"timings", "wall_time_s", "cache"}
    assert [k for k in api] == [k for k in cli]
    assert {k: v for k, v in api.items() if k not in volatile} == {
        k: v for k, v in cli.items() if k not in volatile}
    assert api["cache"]["misses"] == 0 < api["cache"]["hits"]  # the CLI's nets, reused
