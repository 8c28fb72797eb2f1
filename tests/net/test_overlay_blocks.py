"""Overlays on residual-block slots: a BasicBlock is cut at conv2 (channel groups own conv2 rows
and bn2 entries; adapters are parallel 1x1 convs on conv2's input). Random grows on small
resnets run by every backend against the per-task forward, other tasks bit-identical, exact
parameter counts, the block formula computed by hand, degenerate groups and save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from overlay_nets import inputs, outputs, perturb
from test_overlay import (
    BACKENDS,
    SETTINGS,
    check_counts,
    close,
    grown,
)
from test_resnets import SMALL
from torch import nn

from l2bg.base.errors import L2BGError
from l2bg.net.blocks import BasicBlock, GlobalAvgPool2d
from l2bg.net.growth import slot_module
from l2bg.net.jointnet import JointNet
from l2bg.net.modules import module_template
from l2bg.net.units import channel_groups


def block_slots(net: JointNet) -> list[int]:
    return [s for s in net.template.expandable_slots
            if [la.kind for la in net.template.slots[s].layers] == ["basic_block"]]


def bound(name: str, task_bn: bool) -> JointNet:
    torch.manual_seed(0)
    net = JointNet(SMALL[name](), task_bn=task_bn)
    net.add_task("b", 3)
    net.bind("t", "b", 3)
    net.heads["t"].load_state_dict(net.heads["b"].state_dict())
    return net


@pytest.mark.parametrize("name", sorted(SMALL))
def test_unit_channels_of_a_block_are_conv2_out_channels(name):
    net = JointNet(SMALL[name]())
    slots = block_slots(net)
    assert slots
    for s in slots:
        assert net.unit_channels(s) == net.template.slots[s].build()[0].conv2.out_channels


@SETTINGS
@given(grown(templates=SMALL), st.booleans())
def test_forward_all_equals_per_task_forward_on_resnets(net, per_task):
    """Random group/adapt/whole grows on block slots (other tasks bit-identical after each grow,
    checked while drawing): every backend equals the per-task forward."""
    x = inputs(net, 4, seed=2)
    want = outputs(net, x)
    feed = {t: x for t in net.tasks} if per_task else x
    with torch.no_grad():
        for backend in BACKENDS:
            logits = net.forward_all(feed, backend=backend)
            for t in net.tasks:
                close(logits[t], want[t])


@SETTINGS
@given(grown(templates=SMALL))
def test_parameter_counts_on_resnets(net):
    """Each task's count is the arithmetic count of conv2 rows (and bn2 entries without task
    batch norm) and adapters; the JointNet's the distinct tensors; an adapter never outweighs a
    copy of its unit."""
    check_counts(net)


def by_hand(node: nn.Module, overlay, x: torch.Tensor, task_bn: bool) -> torch.Tensor:
    """relu(bn2'(conv2'(h) + adapters(h)) + shortcut(x)) with conv2'/bn2' the node's with the
    overlay's rows written in, h = relu(bn1'(conv1(x))); bn' the task's own with task_bn."""
    node = node[0] if isinstance(node, nn.Sequential) else node
    bn1, bn2 = node.bn1, node.bn2
    if task_bn:
        bn1, bn2 = overlay.bn["bn0"], overlay.bn["bn1"]
    w = node.conv2.weight.clone()
    stats = [t.clone() for t in (bn2.running_mean, bn2.running_var, bn2.weight, bn2.bias)]
    if overlay.rows is not None:
        for a, b in overlay.rows.ranges:
            p = overlay.rows.position(a)
            w[a:b] = overlay.rows.weight[p:p + b - a]
            if not task_bn:
                m = overlay.rows.bn["bn2"]
                for t, src in zip(stats, (m.running_mean, m.running_var, m.weight, m.bias),
                                  strict=True):
                    t[a:b] = src[p:p + b - a]
    h = F.relu(F.batch_norm(node.conv1(x), bn1.running_mean, bn1.running_var, bn1.weight,
                            bn1.bias, False, 0.0, bn1.eps))
    z = F.conv2d(h, w, None, 1, 1)
    c = z.shape[1]
    for key, ad in overlay.adapters.items():
        a, b = (0, c) if key == "all" else channel_groups(c, overlay.adapt_units[0])[int(key)]
        z[:, a:b] += F.conv2d(h, ad.weight)
    y = F.batch_norm(z, stats[0], stats[1], stats[2], stats[3], False, 0.0, bn2.eps)
    return F.relu(y + node.shortcut(x))


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("task_bn", [False, True])
@pytest.mark.parametrize("mode", ["copy", "adapt"])
def test_a_grown_block_computes_the_block_formula(name, task_bn, mode):
    """The task's view of a block slot equals the block computed by hand, and only the grown
    groups' channels differ from the shared node's output (without task batch norm)."""
    net = bound(name, task_bn)
    s = block_slots(net)[-1]
    c = net.unit_channels(s)
    g = min(3, c)
    net.grow("t", groups={s: [0, g - 1]}, num_groups=g, mode=mode)
    perturb(net, 3)
    net.eval()
    node = net.nodes[net.routes()["b"][s]]
    x = torch.randn(3, node[0].conv1.in_channels, 8, 8)
    _, view = slot_module(net, "t", s)
    with torch.no_grad():
        got = view(x)
        close(got, by_hand(node, net.overlays[f"{net.template.slots[s].name}~t"], x, task_bn))
        if not task_bn:
            mine = torch.zeros(c, dtype=torch.bool)
            for k in (0, g - 1):
                a, b = channel_groups(c, g)[k]
                mine[a:b] = True
            shared = node(x)
            assert torch.equal(got[:, ~mine], shared[:, ~mine])
            assert not torch.equal(got[:, mine], shared[:, mine])


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("task_bn", [False, True])
def test_degenerate_groups_on_blocks(name, task_bn):
    """Every group of every cuttable slot grown (G = C and G = 1) and zero adapters on every
    block compute b's function; a whole copy after groups keeps t's function."""
    net = bound(name, task_bn)
    perturb(net, 0)
    x = inputs(net, 4)
    for t, g in (("all_c", "C"), ("all_1", 1), ("adapt", "A")):
        net.bind(t, "b", 3)
        net.heads[t].load_state_dict(net.heads["b"].state_dict())
        cut = [s for s in net.template.expandable_slots if net.unit_channels(s)]
        for s in cut:
            if g == "A":
                if s in block_slots(net):
                    net.grow(t, [s], mode="adapt")
                continue
            n = net.unit_channels(s) if g == "C" else g
            net.grow(t, groups={s: list(range(n))}, num_groups=n)
        out = outputs(net, x)
        close(out[t], out["b"])
    before = outputs(net, x)["all_c"]
    net.grow("all_c", block_slots(net))
    close(outputs(net, x)["all_c"], before)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("task_bn", [False, True])
@pytest.mark.parametrize("mode", ["copy", "adapt"])
def test_block_overlays_save_and_load(tmp_path, name, task_bn, mode):
    net = bound(name, task_bn)
    blocks = block_slots(net)
    net.grow("t", groups={blocks[0]: [1]}, num_groups=2, mode=mode)
    if mode == "adapt":
        net.grow("t", [blocks[-1]], mode=mode)
    else:
        net.grow("t", groups={blocks[-1]: [0, 2]}, num_groups=3)
    net.bind("u", "t", 3)
    perturb(net, 5)
    net.save(tmp_path)
    loaded = JointNet.load(tmp_path)
    assert loaded.topology() == net.topology()
    x = inputs(net)
    want, got = outputs(net, x), outputs(loaded, x)
    assert all(torch.equal(want[t], got[t]) for t in want)
    assert loaded.num_parameters() == net.num_parameters()


def test_a_block_unit_too_many_groups_is_refused():
    net = bound("resnet18", False)
    s = block_slots(net)[0]
    c = net.unit_channels(s)
    with pytest.raises(L2BGError, match=f"1 <= G <= {c}"):
        net.grow("t", groups={s: [0]}, num_groups=c + 1)


@pytest.mark.parametrize("mode", ["copy", "adapt"])
def test_training_a_grown_block_leaves_the_bound_task_bit_identical(mode):
    """Task batch norm and shared_lr_scale 0: training t (groups or adapters on every block, in
    train mode, so batch statistics and running updates go through the block views) leaves b's
    eval outputs bit-identical, and t's own conv2 rows or adapters move."""
    from l2bg.learn.training import TrainConfig, fit

    net = bound("resnet18", True)
    blocks = block_slots(net)
    net.grow("t", groups={s: [1] for s in blocks}, num_groups=2, mode=mode)
    x = inputs(net, 16, seed=3)
    y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(4))
    before = outputs(net, x)["b"]
    def grown_params():
        mine = [net.overlays[f"{net.template.slots[s].name}~t"] for s in blocks]
        return [o.rows.weight if mode == "copy" else o.adapters["1"].weight for o in mine]

    own = [p.detach().clone() for p in grown_params()]
    fit(net, "t", x, y, TrainConfig(epochs=2, batch_size=8, shared_lr_scale=0.0))
    assert torch.equal(outputs(net, x)["b"], before)
    assert all(not torch.equal(a, b) for a, b in zip(own, grown_params(), strict=True))


class SubBlock(BasicBlock):
    """Not the exact BasicBlock: the executors run it as a user module, so it is not cut."""


def user_template(block: nn.Module):
    torch.manual_seed(0)
    return module_template([nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU()), block,
                            nn.Sequential(GlobalAvgPool2d(), nn.Flatten())],
                           head=lambda c: nn.Linear(5, c), input_shape=(2, 6, 6))


@pytest.mark.parametrize("task_bn", [False, True])
@pytest.mark.parametrize("mode", ["copy", "adapt"])
def test_a_bare_block_slot_of_a_user_template_is_cut(task_bn, mode):
    """A user template's slot that is itself a BasicBlock is cut at its conv2 like a template's
    block slot: the block formula by hand, every backend equal to the per-task forward; a
    subclass or a block with another shortcut is one whole unit."""
    net = JointNet(user_template(BasicBlock(4, 5, stride=2)), task_bn=task_bn)
    assert net.unit_channels(1) == 5
    net.add_task("b", 2)
    net.bind("t", "b", 2)
    net.grow("t", groups={1: [1, 2]}, num_groups=3, mode=mode)
    perturb(net, 1)
    net.eval()
    x = inputs(net, 3)
    with torch.no_grad():
        h = net.nodes[net.routes()["b"][0]](x)
        _, view = slot_module(net, "t", 1)
        close(view(h), by_hand(view.node, view.stack[-1], h, task_bn))
        want = outputs(net, x)
        for backend in BACKENDS:
            got = net.forward_all(x, backend=backend)
            for t in net.tasks:
                close(got[t], want[t])
    assert JointNet(user_template(SubBlock(4, 5))).unit_channels(1) is None
    other = BasicBlock(4, 5)
    other.shortcut = nn.Conv2d(4, 5, 1)
    assert JointNet(user_template(other)).unit_channels(1) is None
