"""User templates (module_template): random bind/grow sequences over user modules, run by the
dedup executor (native: C++ for the layers it knows, PyTorch for the rest; reference) against
the per-task forward; grow copies; parameter counts; save/load with the template factory."""

from __future__ import annotations

import warnings

import pytest
import torch
from activations import Block
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from l2bg.base import native as _ext
from l2bg.base.errors import L2BGError
from l2bg.net.jointnet import JointNet
from l2bg.net.modules import module_template

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    NATIVE = _ext.native_available()
BACKENDS = ["reference", "native"] if NATIVE else ["reference"]
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def factory(shared_head: bool = False):
    """The template under test: known layers (conv+bn+relu, linear) and a residual block."""
    torch.manual_seed(0)
    slots = nn.Sequential()
    slots.add_module("stem", nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3),
                                           nn.ReLU()))
    slots.add_module("block", Block(3))
    slots.add_module("pool", nn.Sequential(nn.MaxPool2d(2), nn.Flatten()))
    slots.add_module("fc", nn.Sequential(nn.Linear(12, 5), nn.ReLU()))
    if shared_head:
        slots.add_module("head", nn.Linear(5, 3))
        return module_template(slots, name="tiny", expandable=["stem", "block", "fc", "head"],
                               input_shape=(1, 4, 4))
    return module_template(slots, name="tiny", expandable=["stem", "block", "fc"],
                           head=lambda n: nn.Linear(5, n), input_shape=(1, 4, 4))


@st.composite
def jointnets(draw, shared_head: bool | None = None) -> JointNet:
    """A JointNet of the user template after a random add/bind/grow sequence (2-5 tasks), with
    perturbed batch-norm statistics so buffers matter."""
    shared = draw(st.booleans()) if shared_head is None else shared_head
    tpl = factory(shared)
    net = JointNet(tpl)
    torch.manual_seed(draw(st.integers(0, 2**16)))
    net.add_task("t0", 3)
    for i in range(1, draw(st.integers(2, 5))):
        name = f"t{i}"
        if draw(st.booleans()):
            net.bind(name, draw(st.sampled_from(net.tasks)), 3)
            grow = draw(st.lists(st.sampled_from(tpl.expandable_slots), max_size=3))
            net.grow(name, grow)
        else:
            net.add_task(name, 3)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


@SETTINGS
@given(net=jointnets(), per_task=st.booleans(), rows=st.integers(0, 4))
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_all_equals_per_task_forward(backend, net, per_task, rows):
    """Every task's logits and slot activations from the dedup plan equal its own forward
    (empty batches included)."""
    g = torch.Generator().manual_seed(rows)
    if per_task:
        x = {t: torch.randn(rows + i, 1, 4, 4, generator=g) for i, t in enumerate(net.tasks)}
    else:
        x = torch.randn(rows, 1, 4, 4, generator=g)
    with torch.no_grad():
        logits, acts = net.forward_all(x, return_activations=True, backend=backend)
        for t in net.tasks:
            want, want_acts = net(x[t] if per_task else x, t, return_activations=True)
            torch.testing.assert_close(logits[t], want, rtol=1e-5, atol=1e-6)
            for a, b in zip(acts[t], want_acts, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_task", [False, True])
def test_plan_runs_each_shared_node_once(backend, per_task, monkeypatch):
    """The plan of a user template dedups like a built-in one: a bound task adds no node
    evaluations for the slots it shares, and the PyTorch module of a shared block runs once;
    the native plan runs the block in PyTorch and the rest in C++."""
    from l2bg.net.executor import get_plan

    net = JointNet(factory()).eval()
    net.add_task("a", 3)
    net.bind("b", "a", 3)
    net.bind("c", "a", 3)
    net.grow("b", ["fc"])
    plan = get_plan(net, per_task=per_task)
    assert plan.node_evals == 5  # stem, block, pool shared; fc twice
    assert [layers is None for layers in plan.node_layers] == [
        n.startswith("block") for n in plan.node_ids]
    calls = []
    block = net.nodes[net.routes()["a"][1]]
    block.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    from l2bg.net import executor

    native_evals = []
    one_node = executor._one_node_program
    monkeypatch.setattr(executor, "_one_node_program",
                        lambda n: native_evals.append(n) or one_node(n))
    x = {t: torch.randn(2, 1, 4, 4) for t in net.tasks} if per_task else torch.randn(2, 1, 4, 4)
    with torch.no_grad():
        net.forward_all(x, backend=backend)
    assert calls == [6 if per_task else 2]
    assert len(native_evals) == (4 if backend == "native" else 0)  # stem, pool, fc twice in C++


@SETTINGS
@given(net=jointnets(), data=st.data())
def test_grow_copies_are_independent(net, data):
    """Grow deep-copies the bound task's node (weights and batch-norm buffers): the copy starts
    equal, and a training step of the grown task (its own nodes in train mode, so their batch
    norm statistics move too; nodes it shares stay in eval mode and at lr 0) leaves every other
    task's outputs bit-identical."""
    src = data.draw(st.sampled_from(net.tasks))
    net.bind("new", src, 3)
    slots = data.draw(st.lists(st.sampled_from(net.template.expandable_slots), min_size=1,
                               max_size=3))
    net.grow("new", slots)
    for s in set(slots):
        a, b = net.nodes[net.routes()["new"][s]], net.nodes[net.routes()[src][s]]
        assert a is not b
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(),
                                      strict=True):
            assert ka == kb and torch.equal(va, vb)
    x = torch.randn(3, 1, 4, 4)
    with torch.no_grad():
        before = {t: net(x, t) for t in net.tasks if t != "new"}
    for n in set(net.routes()["new"]):
        if net.node_owner(n) == "new":
            net.nodes[n].train()
    opt = torch.optim.SGD(net.param_groups("new", lr=0.5, shared_lr_scale=0), lr=0.5)
    loss = net(x, "new").square().sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    net.eval()
    with torch.no_grad():
        for t, want in before.items():
            assert torch.equal(net(x, t), want)


@SETTINGS
@given(net=jointnets())
def test_parameter_counts_are_distinct_tensors_per_route(net):
    """num_parameters counts every distinct parameter tensor reachable from some route or head
    once, and a task's count those reachable from its route and head."""
    def distinct(tasks):
        seen = {}
        for t in tasks:
            mods = [net.nodes[n] for n in net.routes()[t]]
            if net.template.per_task_heads:
                mods.append(net.heads[t])
            for m in mods:
                for p in m.parameters():
                    seen[id(p)] = p.numel()
        return sum(seen.values())

    assert net.num_parameters() == distinct(net.tasks)
    for t in net.tasks:
        assert net.num_parameters(t) == distinct([t])


def test_fresh_tasks_are_reinitialised():
    """add_task gives a fresh node, not the prototype's weights: two independent tasks differ."""
    net = JointNet(factory())
    net.add_task("a", 3)
    net.add_task("b", 3)
    wa = net.nodes[net.routes()["a"][0]][0].weight
    wb = net.nodes[net.routes()["b"][0]][0].weight
    assert not torch.equal(wa, wb)


@pytest.mark.parametrize("shared_head", [False, True])
def test_save_load_round_trip_with_factory(tmp_path, shared_head):
    """A user-template JointNet loads with its factory (or the template) passed in: same
    topology, same outputs."""
    net = JointNet(factory(shared_head))
    net.add_task("a", 3)
    net.bind("b", "a", 3)
    net.grow("b", ["block"])
    net.eval()
    net.save(tmp_path)
    x = torch.randn(2, 1, 4, 4)
    for given_template in (lambda: factory(shared_head), factory(shared_head)):
        back = JointNet.load(tmp_path, template=given_template).eval()
        assert back.topology() == net.topology()
        with torch.no_grad():
            for t in net.tasks:
                assert torch.equal(back(x, t), net(x, t))


def test_load_without_factory_is_one_line_error(tmp_path):
    """Loading a user-template JointNet without its factory is a one-line error that names the
    fix; a different template is refused too, never a silent mismatch."""
    net = JointNet(factory())
    net.add_task("a", 3)
    net.save(tmp_path)
    with pytest.raises(L2BGError, match=r"template=") as info:
        JointNet.load(tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(L2BGError, match="does not match") as info:
        JointNet.load(tmp_path, template=lambda: factory(shared_head=True))
    assert "\n" not in str(info.value)
    other = module_template([nn.Flatten(), nn.Linear(16, 5)], name="tiny",
                            head=lambda n: nn.Linear(5, n))
    with pytest.raises(L2BGError, match="does not match"):
        JointNet.load(tmp_path, template=other)


@pytest.mark.parametrize("bad, match", [
    ([], "at least one slot"),
    ([nn.Linear(2, 2), "relu"], "not an nn.Module"),
    ({"a.b": nn.Linear(2, 2)}, "slot name"),
    (7, "slots must be"),
])
def test_bad_slots_are_one_line_errors(bad, match):
    """Malformed slot lists are refused with a one-line error naming the problem."""
    with pytest.raises(L2BGError, match=match):
        module_template(bad)


def test_shared_tensor_and_bad_expandable_are_refused():
    """A tensor shared by two slots (grow could not copy it apart) and an unknown expandable
    slot are errors."""
    lin = nn.Linear(2, 2)
    with pytest.raises(L2BGError, match="share a tensor"):
        module_template([lin, nn.Sequential(lin)])
    with pytest.raises(L2BGError, match="not a slot"):
        module_template([nn.Linear(2, 2)], expandable=["nope"])
    tpl = module_template([nn.Linear(2, 2), nn.Linear(2, 2)], expandable=[0])
    net = JointNet(tpl)
    net.add_task("a")
    net.bind("b", "a")
    with pytest.raises(L2BGError, match="not expandable"):
        net.grow("b", [1])


@pytest.mark.skipif(not NATIVE, reason="needs the native extension")
def test_mixed_native_equals_reference_in_train_mode_with_gradients():
    """In train mode the mixed native plan and the reference run the same plan: equal logits,
    equal batch-norm running statistics afterwards and equal gradients."""
    import copy

    torch.manual_seed(1)
    net = JointNet(factory())
    net.add_task("a", 3)
    net.bind("b", "a", 3)
    net.grow("b", ["stem", "fc"])
    net.train()
    twin = copy.deepcopy(net)
    x = {"a": torch.randn(3, 1, 4, 4), "b": torch.randn(2, 1, 4, 4)}
    out = {}
    for backend, n in (("native", net), ("reference", twin)):
        logits = n.forward_all(x, backend=backend)
        sum(v.square().sum() for v in logits.values()).backward()
        out[backend] = logits
    for t in x:
        torch.testing.assert_close(out["native"][t], out["reference"][t], rtol=1e-5, atol=1e-6)
    for (k, v), (k2, v2) in zip(net.state_dict().items(), twin.state_dict().items(), strict=True):
        assert k == k2
        torch.testing.assert_close(v, v2, rtol=1e-5, atol=1e-6)
    for (k, p), (_, p2) in zip(net.named_parameters(), twin.named_parameters(), strict=True):
        assert p.grad is not None, k
        torch.testing.assert_close(p.grad, p2.grad, rtol=1e-4, atol=1e-5)

