import json

import pytest
import torch

from l2bg.base.errors import L2BGError
from l2bg.learn.training import TrainConfig, fit
from l2bg.net.jointnet import JointNet, copy_task_net
from l2bg.net.templates import convnet, mlp


def small_mlp(shared_head=True):
    return mlp(input_dim=12, hidden=(7, 5), num_classes=3, shared_head=shared_head)


def linear_params(n_in, n_out):
    return n_in * n_out + n_out


FC1, FC2, HEAD = linear_params(12, 7), linear_params(7, 5), linear_params(5, 3)


def test_routes_and_parameter_counts_after_bind_and_grow():
    torch.manual_seed(0)
    net = JointNet(small_mlp())
    net.add_task("a")
    assert net.num_parameters() == FC1 + FC2 + HEAD
    net.bind("b", to="a")
    assert net.routes()["b"] == net.routes()["a"]
    assert net.num_parameters() == FC1 + FC2 + HEAD  # shared counted once
    net.grow("b", ["fc2", 2])
    ra, rb = net.routes()["a"], net.routes()["b"]
    assert ra[0] == rb[0] and ra[1] != rb[1] and ra[2] != rb[2]
    assert net.num_parameters() == FC1 + 2 * FC2 + 2 * HEAD
    assert net.num_parameters("b") == FC1 + FC2 + HEAD
    assert net.grown_slots("b") == [1, 2] and net.bound_to("b") == "a"
    net.bind("c", to="b")
    net.grow("c", [0])
    assert net.routes()["c"][1:] == rb[1:]
    assert net.num_parameters() == 2 * FC1 + 2 * FC2 + 2 * HEAD


def test_per_task_heads_counted_per_task():
    net = JointNet(small_mlp(shared_head=False))
    net.add_task("a", num_classes=2)
    net.bind("b", to="a", num_classes=4)
    assert net.num_parameters() == FC1 + FC2 + linear_params(5, 2) + linear_params(5, 4)
    with pytest.raises(L2BGError, match="num_classes"):
        net.bind("c", to="a")


def test_grow_leaves_other_tasks_bit_identical():
    torch.manual_seed(1)
    net = JointNet(small_mlp())
    net.add_task("a")
    net.bind("b", to="a")
    x = torch.randn(9, 12)
    before = net(x, "a").clone()
    net.grow("b", [0, 1, 2])
    assert torch.equal(net(x, "a"), before)
    assert torch.equal(net(x, "b"), before)  # grown by copy: same function until trained
    net.grow("b", [1], init="fresh")
    assert torch.equal(net(x, "a"), before)
    assert not torch.equal(net(x, "b"), before)


def test_growing_twice_does_not_leak_parameters():
    net = JointNet(small_mlp())
    net.add_task("a")
    net.bind("b", to="a")
    net.grow("b", [1])
    net.grow("b", [1])
    assert net.num_parameters() == FC1 + 2 * FC2 + HEAD
    assert len(net.nodes) == 4


def test_activations_are_flattened_slot_outputs():
    net = JointNet(convnet(in_channels=1, image_size=12, channels=(3, 4), kernels=(3, 2),
                           fc=(6,)))
    net.add_task("a", num_classes=5)
    logits, acts = net(torch.randn(2, 1, 12, 12), "a", return_activations=True)
    assert logits.shape == (2, 5)
    assert [a.shape for a in acts] == [(2, 3 * 5 * 5), (2, 4 * 2 * 2), (2, 6)]
    assert all(bool((a >= 0).all()) for a in acts)  # post-ReLU


@pytest.mark.parametrize("template", [small_mlp(), small_mlp(False),
                                      convnet(in_channels=2, image_size=10, channels=(3, 4),
                                              kernels=(3, 2), fc=(6, 5))])
def test_save_load_round_trip(tmp_path, template):
    torch.manual_seed(2)
    net = JointNet(template)
    net.add_task("a", 3)
    net.bind("b", "a", 3)
    net.grow("b", [1])
    net.save(tmp_path)
    loaded = JointNet.load(tmp_path)
    assert loaded.routes() == net.routes()
    shape = (4, 12) if template.name == "mlp" else (4, 2, 10, 10)
    x = torch.randn(shape)
    for t in ("a", "b"):
        assert torch.equal(loaded(x, t), net(x, t))
    assert loaded.num_parameters() == net.num_parameters()
    loaded.bind("c", "b", 3)  # node counters survive: a new grow gets a fresh node id
    loaded.grow("c", [1])
    assert len(set(loaded.routes()["c"]) - set(loaded.routes()["b"])) == 1


def test_load_rejects_topology_that_disagrees_with_weights(tmp_path):
    net = JointNet(small_mlp())
    net.add_task("a")
    net.bind("b", "a")
    net.grow("b", [0])
    net.save(tmp_path)
    topo = json.loads((tmp_path / "jointnet.json").read_text())
    topo["nodes"] = [n for n in topo["nodes"] if n["id"] != "fc1_1"]
    topo["tasks"][1]["route"][0] = "fc1_0"
    topo["tasks"][1]["grown_slots"] = []  # a consistent topology, but one node short
    (tmp_path / "jointnet.json").write_text(json.dumps(topo))
    with pytest.raises(L2BGError, match="disagree"):
        JointNet.load(tmp_path)
    topo["template"]["kwargs"]["hidden"] = [7, 6]
    (tmp_path / "jointnet.json").write_text(json.dumps(topo))
    with pytest.raises(L2BGError, match="shape or dtype mismatch"):
        JointNet.load(tmp_path)
    with pytest.raises(L2BGError, match="missing"):
        JointNet.load(tmp_path / "nowhere")


def test_bad_bind_and_grow_arguments():
    net = JointNet(small_mlp())
    net.add_task("a")
    with pytest.raises(L2BGError, match="unknown bind target 'zz'"):
        net.bind("b", to="zz")
    net.bind("b", to="a")
    with pytest.raises(L2BGError, match="unknown task 'q'"):
        net.grow("q", [0])
    with pytest.raises(L2BGError, match="unknown slot 'fc9'"):
        net.grow("b", ["fc9"])
    with pytest.raises(L2BGError, match="out of range"):
        net.grow("b", [3])
    with pytest.raises(L2BGError, match="already"):
        net.add_task("a")
    with pytest.raises(L2BGError, match="letters"):
        net.add_task("a.b")


def test_param_groups_split_own_and_bound():
    net = JointNet(small_mlp(shared_head=False))
    net.add_task("a", 3)
    net.bind("b", "a", 3)
    net.grow("b", [1])
    groups = {g["name"]: g for g in net.param_groups("b", lr=0.5, shared_lr_scale=0.1)}
    own = {id(p) for p in groups["own"]["params"]}
    bound = {id(p) for p in groups["bound"]["params"]}
    assert groups["own"]["lr"] == 0.5 and groups["bound"]["lr"] == pytest.approx(0.05)
    assert own == {id(p) for m in (net.nodes[net.routes()["b"][1]], net.heads["b"])
                   for p in m.parameters()}
    assert bound == {id(p) for p in net.nodes[net.routes()["a"][0]].parameters()}
    assert [g["name"] for g in net.param_groups("b", 0.5, 0.0)] == ["own"]


def test_shared_lr_scale_zero_leaves_earlier_tasks_unchanged():
    torch.manual_seed(3)
    net = JointNet(small_mlp(shared_head=False))
    net.add_task("a", 3)
    net.bind("b", "a", 3)
    net.grow("b", [1])
    x, y = torch.randn(64, 12), torch.randint(0, 3, (64,))
    probe = torch.randn(5, 12)
    before_a = net(probe, "a").detach().clone()
    state_a = {k: v.clone() for k, v in net.state_dict().items() if "heads.b" not in k
               and net.routes()["b"][1] not in k}
    fit(net, "b", x, y, TrainConfig(epochs=3, batch_size=16, shared_lr_scale=0.0))
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state_a.items())
    assert torch.equal(net(probe, "a"), before_a)
    assert not torch.equal(after["heads.b.weight"], torch.zeros_like(after["heads.b.weight"]))
    # with a positive scale the shared first layer moves
    fit(net, "b", x, y, TrainConfig(epochs=1, batch_size=16, shared_lr_scale=0.1))
    shared = f"nodes.{net.routes()['a'][0]}.0.weight"
    assert not torch.equal(net.state_dict()[shared], state_a[shared])


def test_copy_task_net_copies_weights():
    torch.manual_seed(4)
    src = JointNet(small_mlp(False))
    src.add_task("t", 3)
    dst = JointNet(small_mlp(False))
    dst.add_task("other", 3)
    copy_task_net(src, "t", dst)
    x = torch.randn(3, 12)
    assert torch.equal(dst(x, "t"), src(x, "t"))
    assert dst.num_parameters() == 2 * src.num_parameters()
