"""Loading a JointNet: one schema check of the topology (issue 14, item 3) and node ids that
cannot collide with the nodes present."""

import json

import pytest
import torch

from l2bg.base.errors import L2BGError
from l2bg.net.jointnet import JointNet
from l2bg.net.templates import mlp


def small_net(per_task_heads=False):
    torch.manual_seed(0)
    net = JointNet(mlp(input_dim=6, hidden=(5, 4), num_classes=3,
                       shared_head=not per_task_heads))
    nc = 3 if per_task_heads else None
    net.add_task("a", nc)
    net.bind("b", "a", nc)
    net.grow("b", [1])
    net.bind("c", "b", nc)
    net.grow("c", [0] if per_task_heads else [0, 2])
    return net


def saved(tmp_path, net=None):
    (net or small_net()).save(tmp_path)
    return json.loads((tmp_path / "jointnet.json").read_text())


def write(tmp_path, topo):
    (tmp_path / "jointnet.json").write_text(json.dumps(topo))


@pytest.mark.parametrize("counter", ["absent", "low"])
def test_reloaded_net_never_reuses_a_node_id(tmp_path, counter):
    """The issue's repro: without next_node (or with one too low), the next grow reused an id
    and overwrote another task's weights."""
    net = small_net()
    topo = saved(tmp_path, net)
    if counter == "absent":
        del topo["next_node"]
    else:
        topo["next_node"] = [0, 0, 0]
    write(tmp_path, topo)
    loaded = JointNet.load(tmp_path)
    assert loaded.topology()["next_node"] == [2, 2, 2]  # one past the ids present
    x = torch.randn(4, 6)
    before = {t: loaded(x, t).detach().clone() for t in loaded.tasks}
    old_ids = set(loaded.nodes)
    loaded.bind("d", "c")
    loaded.grow("d", [0, 1, 2])
    with torch.no_grad():
        for n in loaded.routes()["d"]:
            for p in loaded.nodes[n].parameters():
                p.add_(3.0)
    assert not set(loaded.routes()["d"]) & old_ids  # d's nodes got new ids
    for t, y in before.items():
        assert torch.equal(loaded(x, t), y), t


def _mutations():
    """(name, edit of the saved topology, words the one-line error must contain)."""
    def route_swap(t):
        t["tasks"][0]["route"][0], t["tasks"][0]["route"][1] = (t["tasks"][0]["route"][1],
                                                              t["tasks"][0]["route"][0])

    def node(i, **kw):
        return lambda t: t["nodes"][i].update(kw)

    def task(i, **kw):
        return lambda t: t["tasks"][i].update(kw)

    def drop(key):
        return lambda t: t.pop(key)

    def drop_task_key(key):
        return lambda t: t["tasks"][1].pop(key)

    return [
        ("version 99", lambda t: t.update(format_version=99), "newer l2bg"),
        ("version text", lambda t: t.update(format_version="1"), "format_version"),
        ("version missing", drop("format_version"), "format_version"),
        ("format", lambda t: t.update(format="other"), "not an l2bg"),
        ("no tasks", drop("tasks"), "missing keys"),
        ("no nodes", drop("nodes"), "missing keys"),
        ("extra key", lambda t: t.update(extra=1), "unknown keys"),
        ("task key missing", drop_task_key("bound_to"), "exactly the keys"),
        ("unknown bound_to", task(1, bound_to="zz"), "not a task learned before"),
        ("bound to later task", task(1, bound_to="c"), "not a task learned before"),
        ("grown out of range", task(1, grown_slots=[7]), "grown_slots"),
        ("grown unsorted", task(2, grown_slots=[2, 0]), "grown_slots"),
        ("grown as text", task(1, grown_slots=["1"]), "grown_slots"),
        ("grown disagrees", task(1, grown_slots=[0, 1]), "owns the nodes"),
        ("wrong node slot", node(0, slot=1), "named 'fc2_<k>'"),
        ("slot out of range", node(0, slot=9), "slots 0..2"),
        ("slot as text", node(0, slot="0"), "names slot"),
        ("bad id", node(0, id="fc1_x"), "has id"),
        ("leading zero id", node(0, id="fc1_00"), "has id"),
        ("duplicate id", lambda t: t["nodes"].append(dict(t["nodes"][0])), "appears twice"),
        ("owner unknown", node(0, owner="zz"), "must own every node"),
        ("unused node", lambda t: t["nodes"].append({"id": "fc1_9", "slot": 0, "owner": "a"}),
         "on no task's route"),
        ("swapped route slots", route_swap, "a node of slot"),
        ("route to missing node", task(0, route=["fc1_0", "fc2_0", "nope_3"]), "not a node"),
        ("short route", task(0, route=["fc1_0"]), "one per slot"),
        ("num_classes text", task(0, num_classes="3"), "num_classes"),
        ("num_classes float", task(0, num_classes=2.5), "num_classes"),
        ("num_classes bool", task(0, num_classes=True), "num_classes"),
        ("num_classes zero", task(0, num_classes=0), "num_classes"),
        ("duplicate task", task(1, name="a"), "names are unique"),
        ("bad task name", task(1, name="a b"), "names are unique"),
        ("next_node short", lambda t: t.update(next_node=[1]), "next_node"),
        ("next_node negative", lambda t: t.update(next_node=[-1, 0, 0]), "next_node"),
        ("template name", lambda t: t["template"].update(name="nope"), "unknown template"),
        ("template kwarg", lambda t: t["template"]["kwargs"].update(bogus=1), "kwargs"),
        ("template float", lambda t: t["template"]["kwargs"].update(input_dim=6.0), "form"),
        ("template type", lambda t: t["template"]["kwargs"].update(hidden="ab"),
         "mlp: hidden must be a list of integers"),
        ("not an object", lambda t: t.clear() or t.update(format="l2bg.jointnet",
                                                             format_version=1), "template"),
    ]


@pytest.mark.parametrize("name, edit, words", _mutations(), ids=[m[0] for m in _mutations()])
def test_every_hand_edit_fault_is_one_line(tmp_path, name, edit, words):
    topo = saved(tmp_path)
    edit(topo)
    write(tmp_path, topo)
    with pytest.raises(L2BGError) as exc:
        JointNet.load(tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg and str(tmp_path) in msg
    if words:
        assert words in msg, msg


def test_per_task_heads_need_integer_classes(tmp_path):
    topo = saved(tmp_path, small_net(per_task_heads=True))
    assert JointNet.load(tmp_path).num_classes("b") == 3
    topo["tasks"][1]["num_classes"] = None
    write(tmp_path, topo)
    with pytest.raises(L2BGError, match="needs num_classes"):
        JointNet.load(tmp_path)


def test_a_huge_hand_edited_size_allocates_nothing(tmp_path):
    topo = saved(tmp_path, small_net(per_task_heads=True))
    topo["tasks"][0]["num_classes"] = 10**12  # a 4-TB head if it were built
    write(tmp_path, topo)
    with pytest.raises(L2BGError, match=r"jointnet\.json: task '\w+': .*a head of "
                                        r"1000000000000 classes .*above the limit"):
        JointNet.load(tmp_path)


def test_unreadable_files_are_one_line(tmp_path):
    saved(tmp_path)
    (tmp_path / "jointnet.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(L2BGError, match="not valid JSON"):
        JointNet.load(tmp_path)
    saved(tmp_path)
    weights = tmp_path / "jointnet.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(L2BGError, match="not a readable safetensors"):
        JointNet.load(tmp_path)


def test_weights_of_another_dtype_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    net = small_net()
    saved(tmp_path, net)
    state = load_file(str(tmp_path / "jointnet.safetensors"))
    save_file({k: v.double() for k, v in state.items()}, str(tmp_path / "jointnet.safetensors"))
    with pytest.raises(L2BGError, match="dtype"):
        JointNet.load(tmp_path)


def test_a_valid_topology_round_trips(tmp_path):
    net = small_net()
    topo = saved(tmp_path, net)
    loaded = JointNet.load(tmp_path)
    assert loaded.topology() == topo
    x = torch.randn(3, 6)
    for t in net.tasks:
        assert torch.equal(loaded(x, t), net(x, t))
