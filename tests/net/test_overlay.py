"""Overlays: task batch norm, grown channel groups and adapters. Random bind/grow sequences run
by every executor backend against the per-task forward; growth leaves other tasks' outputs
bit-identical; parameter counts against an arithmetic count of the grown rows; training with
shared_lr_scale 0 and task batch norm; the executor's dedup (files: test_overlay_io.py)."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from overlay_nets import TEMPLATES, bn_chain, inputs, outputs, perturb, with_block
from torch import nn

from l2bg.base import native as _ext
from l2bg.base.errors import L2BGError
from l2bg.learn.training import TrainConfig, fit
from l2bg.net.blocks import BasicBlock
from l2bg.net.jointnet import JointNet
from l2bg.net.modules import module_template
from l2bg.net.templates import mlp
from l2bg.net.units import channel_groups

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    NATIVE = _ext.native_available()
BACKENDS = ["reference", "loop", *(["native"] if NATIVE else [])]
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def grown(draw, template: str | None = None, templates: dict | None = None):
    """A JointNet after a random add/bind/grow sequence mixing whole slots, channel groups and
    adapters (G from 1 to C, some or all groups), with or without task batch norm; the template
    drawn from ``templates`` (default: overlay_nets.TEMPLATES)."""
    templates = TEMPLATES if templates is None else templates
    name = template or draw(st.sampled_from(sorted(templates)))
    tpl = templates[name]()
    net = JointNet(tpl, task_bn=draw(st.booleans()))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    nc = None if not tpl.per_task_heads else 3
    net.add_task("t0", nc)
    cut = [s for s in tpl.expandable_slots if net.unit_channels(s) is not None]
    x = inputs(net)
    for i in range(1, draw(st.integers(2, 4))):
        t = f"t{i}"
        net.bind(t, draw(st.sampled_from(net.tasks)), nc)
        for _ in range(draw(st.integers(1, 2))):
            before = outputs(net, x)
            kind = draw(st.sampled_from(["none", "whole", "groups"]))
            mode = draw(st.sampled_from(["copy", "adapt"]))
            slots = draw(st.lists(st.sampled_from(cut if kind == "groups" or mode == "adapt"
                                                  else tpl.expandable_slots),
                                  unique=True, max_size=2))
            kw = {}
            if kind == "groups" and slots:
                top = min(net.unit_channels(s) for s in slots)
                g = draw(st.integers(1, top))
                every = draw(st.booleans())
                kw = {"groups": {s: list(range(g)) if every else draw(
                    st.lists(st.integers(0, g - 1), min_size=1, max_size=g)) for s in slots},
                    "num_groups": g}
                slots = []
            elif kind == "none":
                slots = []
            try:
                net.grow(t, slots, mode=mode, rank=draw(st.integers(1, 3)), **kw)
            except L2BGError as exc:  # a slot grown before in the other mode, or G changed
                assert "one mode" in str(exc) or "same way" in str(exc) or "owns" in str(exc)
            after = outputs(net, x)
            for other in before:  # growth of t never changes another task
                if other != t:
                    assert torch.equal(before[other], after[other]), other
    perturb(net, draw(st.integers(0, 2**16)))
    return net


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(grown(), st.booleans())
def test_forward_all_equals_per_task_forward(net, per_task):
    """Every backend, shared or per-task input, equals the per-task forward, activations too."""
    x = inputs(net, 6, seed=2)
    want = outputs(net, x)
    with torch.no_grad():
        acts = net(x, net.tasks[0], return_activations=True)[1]
    feed = {t: x for t in net.tasks} if per_task else x
    with torch.no_grad():
        for backend in BACKENDS:
            logits, got_acts = net.forward_all(feed, backend=backend,
                                               return_activations=net.tasks[:1])
            for t in net.tasks:
                close(logits[t], want[t])
            for a, b in zip(got_acts[net.tasks[0]], acts, strict=True):
                close(a, b)


def main_and_bns(module: nn.Module) -> tuple[nn.Module, int]:
    """The layer a slot is cut at and the number of batch norms after it: conv2 and bn2 of a
    residual block, else the last linear/conv2d and every batch norm of the chain."""
    if isinstance(module, nn.Sequential) and isinstance(module[0], BasicBlock):
        return module[0].conv2, 1
    main = [m for m in module if isinstance(m, nn.Linear | nn.Conv2d)][-1]
    return main, sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module)


def arithmetic_count(net: JointNet, task: str) -> int:
    """Parameters task's forward reads, counted from the topology's numbers alone: the nodes'
    shapes, each overlay's grown rows, adapter ranks and batch norms."""
    topo = net.topology()
    info = next(t for t in topo["tasks"] if t["name"] == task)
    overlays = {(o["slot"], o["owner"]): o for o in topo["overlays"]}
    total = sum(p.numel() for p in net.heads[task].parameters()) if len(net.heads) else 0
    for s, node in enumerate(info["route"]):
        module = net.nodes[node]
        stack = [overlays[(s, owner)] for owner in info["stack"][s]]
        total += sum(p.numel() for p in module.parameters())  # own batch norms: same count
        for o in stack:
            c = net.unit_channels(s)
            main, bns = main_and_bns(module) if c else (None, 0)
            row = main.weight[0].numel() + (main.bias is not None) if main is not None else 0
            if o["rows"]:
                n = sum(b - a for k in o["rows"]["groups"]
                        for a, b in [channel_groups(c, o["rows"]["num_groups"])[k]])
                total += n * (row + (0 if net.task_bn else 2 * bns))
            if o["adapter"]:
                u = o["adapter"]
                sizes = [c] if u["num_groups"] is None else [
                    b - a for a, b in (channel_groups(c, u["num_groups"])[k]
                                       for k in u["groups"])]
                c_in = main.weight.shape[1]
                for size in sizes:
                    if isinstance(main, nn.Conv2d):
                        total += size * c_in
                    else:
                        cost = size * (c_in + 1 + (0 if net.task_bn else 2 * bns))
                        r = min(o["rank"], cost // (c_in + size), c_in, size)
                        total += r * (c_in + size)
    return total


@SETTINGS
@given(grown())
def test_parameter_counts_are_the_rows_each_route_reads(net):
    """num_parameters(task) is the arithmetic count of what its route reads; the JointNet's is
    the distinct tensors over all routes; an adapter never outweighs a copy of its unit."""
    check_counts(net)


def check_counts(net):
    """The counts of :func:`test_parameter_counts_are_the_rows_each_route_reads`, for any
    grown JointNet (test_overlay_blocks uses it on resnets)."""
    for t in net.tasks:
        assert net.num_parameters(t) == arithmetic_count(net, t)
    reached = {id(p): p.numel() for t in net.tasks for p in net.task_parameters(t)}
    assert net.num_parameters() == sum(reached.values())
    for o in [o for o in net.overlays.values() if len(o.adapters)]:
        node = next(net.nodes[n] for n in net.nodes if net.node_slot(n) == o.slot)
        main, bns = main_and_bns(node)
        c = net.unit_channels(o.slot)
        for key, ad in o.adapters.items():
            a, b = (0, c) if key == "all" else channel_groups(c, o.adapt_units[0])[int(key)]
            copy_cost = (b - a) * (main.weight[0].numel() + (main.bias is not None)
                                   + (0 if net.task_bn else 2 * bns))
            assert sum(p.numel() for p in ad.parameters()) <= copy_cost


def test_unit_channels():
    """C of the main layer; None for a slot that is not a cuttable chain."""
    assert [JointNet(mlp(12, (6, 5), 4)).unit_channels(s) for s in range(3)] == [6, 5, 4]
    assert JointNet(TEMPLATES["convnet"]()).unit_channels("conv2") == 4
    net = JointNet(with_block())
    assert [net.unit_channels(s) for s in ("stem", "block", "fc")] == [3, None, 4]


@pytest.mark.parametrize("template", ["bnchain", "blocky"])
@pytest.mark.parametrize("how", ["bind", "groups", "adapt", "whole"])
def test_task_bn_keeps_other_tasks_bit_identical_when_training(template, how):
    """shared_lr_scale 0: training t leaves b's eval outputs bit-identical with task batch norm;
    without it the shared running statistics move and b changes."""
    x = inputs(JointNet(TEMPLATES[template]()), 32, seed=3)
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(4))
    changed = {}
    for task_bn in (False, True):
        torch.manual_seed(0)
        net = JointNet(TEMPLATES[template](), task_bn=task_bn)
        net.add_task("b", 3)
        fit(net, "b", x, y, TrainConfig(epochs=1, batch_size=8))
        net.bind("t", "b", 3)
        if how == "groups":
            net.grow("t", groups={"fc": [0]}, num_groups=2)
        elif how == "adapt":
            net.grow("t", ["fc"], mode="adapt", rank=2)
        elif how == "whole":
            net.grow("t", ["fc"])
        before = outputs(net, x)["b"]
        fit(net, "t", x, y, TrainConfig(epochs=2, batch_size=8, shared_lr_scale=0.0))
        after = outputs(net, x)["b"]
        changed[task_bn] = not torch.equal(before, after)
    assert changed == {False: True, True: False}


def test_task_bn_running_statistics_update_in_the_tasks_own_copy():
    """In train mode t's forward moves t's own statistics, none of the shared node's."""
    net = JointNet(bn_chain(), task_bn=True)
    net.add_task("b", 3)
    net.bind("t", "b", 3)
    node = net.nodes[net.routes()["b"][0]]
    own = net.overlays["c1~t"].bn["bn0"]
    shared0, own0 = node[2].running_mean.clone(), own.running_mean.clone()
    net.train()
    net(inputs(net, 8), "t")
    assert torch.equal(node[2].running_mean, shared0)
    assert not torch.equal(own.running_mean, own0)
    assert int(own.num_batches_tracked) == 1


def test_param_groups_split_own_units_from_shared_nodes():
    """Grown rows, adapters and t's batch norms at lr; shared nodes at lr * scale; the node's
    batch norms t replaced are not among them."""
    net = JointNet(bn_chain(), task_bn=True)
    net.add_task("b", 3)
    net.bind("t", "b", 3)
    net.grow("t", groups={"c1": [1]}, num_groups=2)
    net.grow("t", ["fc"], mode="adapt")
    groups = {g["name"]: g for g in net.param_groups("t", 0.1, 0.5)}
    own = {id(p) for p in groups["own"]["params"]}
    mine = [*net.overlays["c1~t"].parameters(), *net.overlays["fc~t"].parameters(),
            *net.overlays["c2~t"].parameters(), *net.heads["t"].parameters()]
    assert own == {id(p) for p in mine}
    bound = {id(p) for p in groups["bound"]["params"]}
    node = net.nodes[net.routes()["t"][0]]
    assert id(node[0].weight) in bound and id(node[2].weight) not in bound | own
    assert groups["bound"]["lr"] == pytest.approx(0.05)
    assert [g["name"] for g in net.param_groups("t", 0.1, 0.0)] == ["own"]


def test_grown_units_and_modes():
    net = JointNet(TEMPLATES["mlp"]())
    net.add_task("a")
    net.bind("b", "a")
    assert net.grow("b", ["fc1"], groups={"head": [0, 2]}, num_groups=3) == [0, 2]
    net.grow("b", groups={"head": [1]}, num_groups=3)
    assert net.grown_units("b") == [(0, None), (2, 0), (2, 1), (2, 2)]
    assert [net.grow_mode("b", s) for s in range(3)] == ["copy", None, "copy"]
    net.bind("c", "b")
    net.grow("c", ["fc2"], mode="adapt")
    assert net.grown_units("c") == [(1, None)] and net.grow_mode("c", "fc2") == "adapt"
    assert net.grown_units("a") == [] and net.grow_mode("a", 0) is None


@pytest.mark.parametrize("call, match", [
    (lambda n: n.grow("b", ["fc1"], groups={"fc1": [0]}, num_groups=2), "named twice"),
    (lambda n: n.grow("b", groups={"fc1": [0]}, num_groups=7), "1 <= G <= 6"),
    (lambda n: n.grow("b", groups={"fc1": [2]}, num_groups=2), "indices 0..1"),
    (lambda n: n.grow("b", groups={"fc1": [0]}), "num_groups=G"),
    (lambda n: n.grow("b", num_groups=2), "needs groups"),
    (lambda n: n.grow("b", ["fc1"], mode="lora"), "mode must be"),
    (lambda n: n.grow("b", ["fc1"], mode="adapt", rank=0), "rank must be"),
    (lambda n: n.grow("b", groups={"fc1": [0]}, num_groups=2, init="fresh"), "init='fresh'"),
    (lambda n: n.grow("a", ["fc1"], mode="adapt"), "owns its node"),
    (lambda n: (n.grow("b", ["fc1"], mode="adapt"),
                n.grow("b", groups={"fc1": [0]}, num_groups=2)), "one mode"),
    (lambda n: (n.grow("b", groups={"fc1": [0]}, num_groups=2),
                n.grow("b", groups={"fc1": [1]}, num_groups=3)), "num_groups=2"),
])
def test_grow_errors_name_the_fault_and_change_nothing(call, match):
    net = JointNet(TEMPLATES["mlp"]())
    net.add_task("a")
    net.bind("b", "a")
    with pytest.raises(L2BGError, match=match):
        call(net)


def test_grow_refuses_groups_on_a_slot_that_cannot_be_cut():
    net = JointNet(with_block())
    net.add_task("a", 2)
    net.bind("b", "a", 2)
    with pytest.raises(L2BGError, match="cannot be cut"):
        net.grow("b", groups={"block": [0]}, num_groups=1)
    with pytest.raises(L2BGError, match="cannot take an adapter"):
        net.grow("b", ["block"], mode="adapt")


@pytest.mark.parametrize("template", ["mlp", "bnchain"])
def test_degenerate_growth(template):
    """Nothing grown (delta 0) leaves t equal to b; every group of every slot grown (delta 1,
    G = C: units of one channel; G = 1) computes b's function with t's own rows, and a whole
    copy after groups keeps t's function."""
    net = JointNet(TEMPLATES[template](), task_bn=template == "bnchain")
    nc = 3 if net.template.per_task_heads else None
    net.add_task("b", nc)
    x = inputs(net, 6)
    perturb(net, 0)
    for t, g in (("none", None), ("all_c", "C"), ("all_1", 1)):
        net.bind(t, "b", nc)
        if nc:
            net.heads[t].load_state_dict(net.heads["b"].state_dict())
        if g is not None:
            cut = [s for s in net.template.expandable_slots if net.unit_channels(s)]
            for s in cut:
                n = net.unit_channels(s) if g == "C" else g
                net.grow(t, groups={s: list(range(n))}, num_groups=n)
        else:
            net.grow(t, [])
        out = outputs(net, x)
        close(out[t], out["b"])
    net.grow("all_c", net.template.expandable_slots)
    close(outputs(net, x)["all_c"], outputs(net, x)["b"])
    assert net.grown_units("none") == []


@pytest.mark.parametrize("task_bn", [False, True])
def test_executor_keeps_the_dedup_with_overlays(task_bn):
    """Shared input: the node a virtual node overlays runs once for all its tasks (reference
    backend: counted at its main layer), where the loop runs it per task."""
    net = JointNet(bn_chain(), task_bn=task_bn)
    net.add_task("b", 3)
    for t in ("t1", "t2", "t3"):
        net.bind(t, "b", 3)
    net.grow("t1", groups={"c1": [0]}, num_groups=2)
    net.grow("t2", ["c1"], mode="adapt")
    main = net.nodes[net.routes()["b"][0]][0]
    calls = []
    main.register_forward_hook(lambda *a: calls.append(1))
    x = inputs(net, 4)
    net.eval()
    with torch.no_grad():
        net.forward_all(x, backend="reference")
        assert len(calls) == 1
        calls.clear()
        net.forward_all(x, backend="loop")
        assert len(calls) == 4


def test_cuda_graph_key_sees_overlay_tensors():
    """A virtual node's tensors are in the plan's sources: moving one forces a new capture."""
    from l2bg.net.cuda_graph import graph_key
    from l2bg.net.executor import get_plan

    net = JointNet(TEMPLATES["mlp"]())
    net.add_task("a")
    net.bind("b", "a")
    net.grow("b", groups={"fc1": [1]}, num_groups=2)
    plan = get_plan(net)
    x = [inputs(net)]
    rows = net.overlays["fc1~b"].rows
    before = graph_key(plan, "reference", x)
    assert graph_key(plan, "reference", x) == before
    rows.weight = nn.Parameter(rows.weight.detach().clone())
    assert graph_key(plan, "reference", x) != before


def test_deep_copy_runs_its_own_overlays():
    """A deep copy (how the search memo keeps nets) computes with its own overlays."""
    import copy

    net = JointNet(TEMPLATES["mlp"]())
    net.add_task("a")
    net.bind("b", "a")
    net.grow("b", groups={"fc1": [1]}, num_groups=2)
    x = inputs(net)
    before = outputs(net, x)["b"]
    twin = copy.deepcopy(net)
    with torch.no_grad():
        twin.overlays["fc1~b"].rows.weight.add_(1.0)
    assert torch.equal(outputs(net, x)["b"], before)
    assert not torch.equal(outputs(twin, x)["b"], before)


def test_a_unit_too_small_for_an_adapter_is_refused_before_anything_changes():
    """A one-channel group of a bias-free linear: any adapter outweighs its copy."""
    tpl = module_template([nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU()),
                           nn.Sequential(nn.Linear(3, 2))], name="nobias", input_shape=(4,))
    net = JointNet(tpl)
    net.add_task("a")
    net.bind("b", "a")
    version = net.version
    with pytest.raises(L2BGError, match="smaller than any adapter"):
        net.grow("b", ["slot1"], groups={"slot0": [0, 2]}, num_groups=3, mode="adapt")
    assert net.version == version and net.grown_units("b") == []
    net.grow("b", groups={"slot0": [0]}, num_groups=1, mode="adapt")  # 3 channels: fits
    assert sum(p.numel() for p in net.overlays["slot0~b"].parameters()) <= 3 * 4


@pytest.mark.parametrize("groups", [[1, 3], [0, 1, 2, 3]])
def test_grown_groups_cost_one_product_over_their_rows(groups):
    """Shared input, b grew some of 4 head groups (2 rows each): the reference plan costs a's
    forward plus one product of the input with just those rows (FLOPs counted by torch)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = JointNet(mlp(input_dim=12, hidden=(6, 5), num_classes=8)).eval()
    net.add_task("a")
    net.bind("b", "a")
    net.grow("b", groups={"head": groups}, num_groups=4)
    x = inputs(net, 7)

    def flops(fn) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    rows = 2 * len(groups)
    assert flops(lambda: net.forward_all(x, backend="reference")) == (
        flops(lambda: net(x, "a")) + 2 * 7 * 5 * rows)
