"""``--template NAME`` on ``l2bg run`` and ``l2bg search``: the help lists every registered
template (built-ins and yours), an unknown name is one line naming the flag, and a registered
template runs end to end on an MNIST benchmark whose digits are fitted to its input."""

from __future__ import annotations

import json
import math

import pytest
from torch import nn

from l2bg.cli import main
from l2bg.learn.training import TrainConfig
from l2bg.net.catalog import TEMPLATES, register_template
from l2bg.net.modules import module_template


def _fit(shape, num_classes, shared_head):
    return module_template(
        [nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()),
         nn.Sequential(nn.Flatten(), nn.Linear(4 * 3 * 3, 8), nn.ReLU())],
        name="tinycnn", head=lambda c: nn.Linear(8, c), input_shape=(3, 5, 5))


@pytest.fixture
def tinycnn():
    register_template("tinycnn", _fit, help="a test cnn on 3x5x5 inputs",
                      train=TrainConfig(optimizer="adam", lr=1e-2, epochs=1, batch_size=32))
    yield "tinycnn"
    TEMPLATES.unregister("tinycnn")


@pytest.mark.parametrize("command", ["run", "search"])
def test_help_lists_every_registered_template(command, tinycnn, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--template NAME" in out
    for name in ("mlp", "convnet", "resnet26", "resnet18", "tinycnn"):
        assert f"{name}:" in out, name


@pytest.mark.parametrize("command", ["run", "search"])
def test_unknown_template_is_one_line_naming_the_flag(command, tmp_path, capsys):
    tail = (["--strategy", "shared", "--no-cache"] if command == "run" else ["--trials", "1"])
    argv = [command, "--benchmark", "pmnist", "--template", "resnet50", *tail, "--out",
            str(tmp_path / "o")]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "--template" in err and "'resnet50'" in err and "resnet26" in err
    assert not (tmp_path / "o").exists()


def test_registered_template_runs_on_mnist_and_is_recorded(tinycnn, tiny_mnist, tmp_path,
                                                          capsys):
    """The 4×4 flat digits become 3×5×5 images (one channel replicated, one pixel of zero
    padding); results.json records the template and how the inputs were fitted."""
    out = tmp_path / "out"
    code = main(["run", "--benchmark", "split-mnist", "--data-root", str(tiny_mnist),
                 "--template", "tinycnn", "--tasks", "2", "--strategy", "l2bg", "--delta", "1",
                 "--out", str(out), "--no-cache", "--quiet"])
    assert code == 0, capsys.readouterr().err
    r = json.loads((out / "results.json").read_text())
    assert r["config"]["template"]["name"] == "tinycnn"
    assert r["config"]["train"]["lr"] == 1e-2  # the registered recipe
    assert r["config"]["data"]["input_fit"]["from"] == [16]
    assert r["config"]["data"]["input_fit"]["to"] == [3, 5, 5]
    per_task = (3 * 9 + 1) * 4 + (36 + 1) * 8 + 9 * 2
    assert r["tasks"][0]["params"] == per_task
    assert math.isclose(r["params"], 2 * per_task)  # δ = 1 grows every slot


def test_config_block_keeps_its_keys_and_order(tiny_mnist):
    """``Settings.template`` adds no key to results.json's ``config``: ``template`` is the
    resolved template (name and kwargs) at its old place, after the per-task RSA sample counts,
    whether the template was named or the benchmark's default."""
    from l2bg.learn.independent import IndependentCache
    from l2bg.learn.runconfig import RunConfig
    from l2bg.learn.settings import Settings

    blocks = []
    for template in (None, "mlp"):
        config = RunConfig(Settings("split-mnist", data_root=str(tiny_mnist), tasks=2,
                                    template=template), "shared")
        blocks.append(config.record(config.settings.build(), IndependentCache(None)))
    keys = list(blocks[0])
    assert keys == list(blocks[1]) and keys.count("template") == 1
    assert keys.index("template") == keys.index("rsa_samples_effective") + 1
    assert blocks[0]["template"] == blocks[1]["template"]
    assert blocks[0]["template"]["name"] == "mlp"


def test_a_search_names_its_template_in_the_default_study_name(tiny_mnist):
    """Searches of one benchmark on two templates get two default studies (and --out
    directories), not a "created for a different search" refusal."""
    from l2bg.learn.settings import Settings
    from l2bg.search.config import SearchConfig
    from l2bg.search.study import _setup

    names = [_setup(SearchConfig(Settings("split-mnist", data_root=str(tiny_mnist), tasks=2,
                                          template=t), trials=1)).study_name
             for t in (None, "mlp")]
    assert names[0] != names[1] and "-mlp-" in names[1] and "-mlp-" not in names[0]
