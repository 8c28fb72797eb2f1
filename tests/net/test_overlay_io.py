"""Overlays on disk: save/load round trips of every kind (grown rows, adapters, task batch norm,
user templates), version-1 files, and hand-edited overlays refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from overlay_nets import TEMPLATES, bn_chain, inputs, outputs, perturb

from l2bg.base.errors import L2BGError
from l2bg.net.jointnet import JointNet


def kinds() -> list[tuple[str, bool, object]]:
    return [
        ("mlp", False, lambda n: n.grow("t", groups={"fc1": [0, 2]}, num_groups=3)),
        ("mlp", False, lambda n: n.grow("t", ["fc2"], mode="adapt", rank=2)),
        ("convnet", False, lambda n: n.grow("t", groups={"conv2": [1]}, num_groups=2,
                                            mode="adapt")),
        ("bnchain", True, lambda n: n.grow("t", groups={"c2": [0]}, num_groups=3)),
        ("bnchain", False, lambda n: n.grow("t", groups={"fc": [1]}, num_groups=2)),
        ("blocky", True, lambda n: n.grow("t", ["fc"], mode="adapt")),
    ]


@pytest.mark.parametrize("template, task_bn, grow", kinds())
def test_save_load_round_trip(tmp_path, template, task_bn, grow):
    net = JointNet(TEMPLATES[template](), task_bn=task_bn)
    nc = 3 if net.template.per_task_heads else None
    net.add_task("b", nc)
    net.bind("t", "b", nc)
    grow(net)
    net.bind("u", "t", nc)
    perturb(net, 5)
    net.save(tmp_path)
    loaded = JointNet.load(tmp_path, template=TEMPLATES[template] if
                           net.template.is_user else None)
    assert loaded.topology() == net.topology()
    assert loaded.task_bn == task_bn
    x = inputs(net)
    want, got = outputs(net, x), outputs(loaded, x)
    assert all(torch.equal(want[t], got[t]) for t in want)
    assert loaded.num_parameters() == net.num_parameters()


def test_version_1_files_still_load(tmp_path):
    net = JointNet(TEMPLATES["mlp"]())
    net.add_task("a")
    net.bind("b", "a")
    net.grow("b", ["fc1"])
    net.save(tmp_path)
    topo = json.loads((tmp_path / "jointnet.json").read_text())
    assert topo["format_version"] == 2
    topo["format_version"] = 1
    for key in ("task_bn", "overlays"):
        del topo[key]
    for t in topo["tasks"]:
        del t["stack"]
    (tmp_path / "jointnet.json").write_text(json.dumps(topo))
    loaded = JointNet.load(tmp_path)
    x = inputs(net)
    assert all(torch.equal(outputs(net, x)[t], outputs(loaded, x)[t]) for t in net.tasks)
    assert not loaded.task_bn


def _edit(path, fn):
    topo = json.loads(path.read_text())
    fn(topo)
    path.write_text(json.dumps(topo))


def _ov(topo):
    return topo["overlays"][0]


@pytest.mark.parametrize("edit, match", [
    (lambda t: _ov(t).update(slot=9), "names slot 9"),
    (lambda t: _ov(t).update(owner="zz"), "not a task"),
    (lambda t: _ov(t).update(rows={"num_groups": 2, "groups": [3]}), "sorted distinct"),
    (lambda t: _ov(t).update(rows={"num_groups": 2, "groups": [1, 0]}), "sorted distinct"),
    (lambda t: _ov(t).update(rows={"num_groups": 99, "groups": [0]}), "1 <= G <= 6"),
    (lambda t: _ov(t).update(rows={"num_groups": None, "groups": []}), "whole-slot copy"),
    (lambda t: _ov(t).update(adapter={"num_groups": None, "groups": []}), "both rows"),
    (lambda t: _ov(t).update(rows=None), "holds nothing"),
    (lambda t: _ov(t).update(bn=["0"]), "task_bn is false"),
    (lambda t: _ov(t).update(rank=3), "rank must be"),
    (lambda t: _ov(t).pop("rank"), "exactly the keys"),
    (lambda t: t["tasks"][1]["stack"][0].append("a"), "not in overlays"),
    (lambda t: t["tasks"][1]["stack"][0].clear(), "on no task's stack"),
    (lambda t: t["tasks"][1].pop("stack"), "exactly the keys"),
    (lambda t: t.update(task_bn="yes"), "task_bn must be"),
    (lambda t: t.pop("overlays"), "missing keys"),
])
def test_hand_edited_overlays_get_one_line_errors(tmp_path, edit, match):
    net = JointNet(TEMPLATES["mlp"]())
    net.add_task("a")
    net.bind("b", "a")
    net.grow("b", groups={"fc1": [0]}, num_groups=2)
    net.save(tmp_path)
    _edit(tmp_path / "jointnet.json", edit)
    with pytest.raises(L2BGError, match=match) as err:
        JointNet.load(tmp_path)
    assert "\n" not in str(err.value)


def test_overlay_batch_norms_must_match_the_slot(tmp_path):
    net = JointNet(bn_chain(), task_bn=True)
    net.add_task("a", 3)
    net.bind("b", "a", 3)
    net.save(tmp_path)
    _edit(tmp_path / "jointnet.json", lambda t: _ov(t).update(bn=["1"]))
    with pytest.raises(L2BGError, match="are not the slot's"):
        JointNet.load(tmp_path, template=bn_chain)
