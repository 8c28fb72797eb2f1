"""``l2bg run`` on a small resnet18 with channel-group units and adapters: the basic-block slots
are cut into groups (conflict units over every group, grown groups recorded) and take adapters."""

from __future__ import annotations

import json

import pytest

from l2bg.cli import main
from l2bg.learn.training import TrainConfig
from l2bg.net.catalog import TEMPLATES, register_template
from l2bg.net.jointnet import JointNet
from l2bg.net.resnets import resnet18


@pytest.fixture(scope="module")
def tinyres():
    register_template("tinyres", lambda shape, num_classes, shared_head: resnet18(
        in_channels=1, image_size=8, stem=4, widths=(4, 4, 6, 8), blocks=(1, 1, 1, 1)),
        help="a small resnet18 on 1x8x8 inputs",
        train=TrainConfig(optimizer="adam", lr=1e-2, epochs=1, batch_size=32))
    yield "tinyres"
    TEMPLATES.unregister("tinyres")


def run(tmp_path, tiny_mnist, *extra, strategy=("--strategy", "l2bg", "--delta", "0.5")):
    out = tmp_path / "out"
    code = main(["run", "--benchmark", "split-mnist", "--data-root", str(tiny_mnist),
                 "--template", "tinyres", "--tasks", "2", *strategy, "--rsa-samples", "6",
                 "--out", str(out), "--no-cache", "--quiet", *extra])
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


def test_block_slots_are_cut_into_groups(tinyres, tiny_mnist, tmp_path):
    out, r = run(tmp_path, tiny_mnist, "--granularity", "group:2")
    net = JointNet.load(out)
    assert net.num_parameters() == r["params"]
    slots = net.template.expandable_slots
    blocks = [s for s in slots if net.template.slots[s].layers[0].kind == "basic_block"]
    assert len(blocks) == 4 and all(net.unit_channels(s) for s in slots)
    units = r["tasks"][1]["conflict"]["split-mnist-0"]["units"]
    assert units == [[s, g] for s in slots for g in range(2)]
    t = r["tasks"][1]
    want = sorted((r["slots"].index(s), g) for s, gs in (t.get("grown_groups") or {}).items()
                  for g in gs)
    assert net.grown_units(t["name"]) == want and not t["grown_slots"]


def test_blocks_take_adapters(tinyres, tiny_mnist, tmp_path):
    _, copy = run(tmp_path / "c", tiny_mnist, strategy=("--strategy", "full"))
    out, adapt = run(tmp_path / "a", tiny_mnist, "--grow-mode", "adapt",
                     strategy=("--strategy", "full"))
    net = JointNet.load(out)
    t = adapt["tasks"][1]["name"]
    blocks = [s for s in net.template.expandable_slots
              if net.template.slots[s].layers[0].kind == "basic_block"]
    assert all(net.grow_mode(t, s) == "adapt" for s in blocks)
    assert not net.grown_slots(t)
    assert adapt["params"] < copy["params"]
