"""Residual templates: the basic block and global average pooling in both executors (C++ and the
pure-PyTorch plan) against the per-task forward on random grow sequences, the block's structure
and shortcut, parameter counts, save/load, and the template registry."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_executor import assert_same
from torch import nn

from l2bg.base import native as _ext
from l2bg.base.errors import L2BGError, ParamError
from l2bg.net import executor as ex
from l2bg.net import kinds
from l2bg.net.blocks import BasicBlock, GlobalAvgPool2d, PadShortcut
from l2bg.net.catalog import TEMPLATES, make_template, register_template
from l2bg.net.jointnet import JointNet
from l2bg.net.modules import module_template
from l2bg.net.resnets import resnet18, resnet26

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    NATIVE = _ext.native_available()
BACKENDS = ["reference", "native"] if NATIVE else ["reference"]
needs_native = pytest.mark.skipif(not NATIVE, reason="the C++ extension is not built")
SMALL = {
    "resnet26": lambda: resnet26(in_channels=2, image_size=8, stem=3, widths=(3, 5, 6),
                                 blocks=(1, 2, 1)),
    "resnet18": lambda: resnet18(in_channels=1, image_size=8, stem=4, widths=(4, 4, 6, 8),
                                 blocks=(2, 1, 1, 1)),
}
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomise_bn(net: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial batch-norm statistics and affine parameters (fresh ones are 0/1)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen))


@st.composite
def resnet_nets(draw) -> JointNet:
    """A small residual JointNet after a random add/bind/grow sequence; each grow takes no slot
    (δ = 0), every expandable slot (δ = 1) or a random subset."""
    tpl = SMALL[draw(st.sampled_from(sorted(SMALL)))]()
    grow_all = tpl.expandable_slots
    torch.manual_seed(draw(st.integers(0, 2**16)))
    net = JointNet(tpl)
    n_tasks = draw(st.integers(1, 5))
    subsets = (st.just([]) | st.just(grow_all)
               | st.lists(st.sampled_from(grow_all), max_size=len(grow_all), unique=True))
    for i in range(n_tasks):
        if i == 0 or draw(st.integers(0, 7)) == 0:
            net.add_task(f"t{i}", draw(st.integers(1, 4)))
        else:
            net.bind(f"t{i}", to=f"t{draw(st.integers(0, i - 1))}",
                     num_classes=draw(st.integers(1, 4)))
            net.grow(f"t{i}", draw(subsets), init=draw(st.sampled_from(["copy", "fresh"])))
    _randomise_bn(net, torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
    return net


@SETTINGS
@given(data=st.data(), net=resnet_nets(), dtype=st.sampled_from([torch.float32, torch.float64]),
       per_task=st.booleans())
def test_forward_all_equals_per_task_forward_in_eval_mode(data, net, dtype, per_task):
    """native == reference == each task's own forward, logits and every slot's activations,
    with the native program running every slot in C++ (no PyTorch fallback)."""
    net = net.to(dtype).eval()
    shape = net.template.input_shape
    if per_task:
        x = {t: torch.randn(data.draw(st.integers(0, 3)), *shape, dtype=dtype)
             for t in net.tasks}
    else:
        x = torch.randn(data.draw(st.integers(1, 3)), *shape, dtype=dtype)
    with torch.no_grad():
        want = {}, {}
        for t in net.tasks:
            xt = x[t] if per_task else x
            want[0][t], want[1][t] = net(xt, t, return_activations=True)
        for backend in BACKENDS:
            got = net.forward_all(x, return_activations=True, backend=backend)
            assert_same(got, want, dtype)
    assert ex.get_plan(net, per_task=per_task).native_error is None


@needs_native
@SETTINGS
@given(net=resnet_nets(), flags=st.lists(st.booleans(), min_size=2, max_size=2))
def test_train_mode_native_equals_reference(net, flags):
    """In train mode (batch statistics, running statistics updated once per shared node) the C++
    block reads bn1's and bn2's training flags each: native == reference, outputs and the
    statistics they leave, also with one of the two batch norms in eval mode."""
    net = net.double().train()
    for m in net.modules():
        if isinstance(m, BasicBlock):
            m.bn1.train(flags[0])
            m.bn2.train(flags[1])
    other = copy.deepcopy(net)
    x = torch.randn(4, *net.template.input_shape, dtype=torch.float64)
    got = net.forward_all(x, backend="native")
    want = other.forward_all(x, backend="reference")
    assert_same(got, want, torch.float64)
    for (k, a), (_, b) in zip(net.state_dict().items(), other.state_dict().items(), strict=True):
        assert torch.allclose(a.double(), b.double(), rtol=1e-10, atol=1e-12), k


@pytest.mark.parametrize("name", sorted(SMALL))
def test_gradients_through_blocks_equal_the_loop(name):
    """The executors' training path: gradients of every parameter equal the per-task loop's
    (batch norms in eval mode, so both see the same statistics)."""
    torch.manual_seed(1)
    net = JointNet(SMALL[name]())
    net.add_task("a", 3)
    net.bind("b", to="a", num_classes=2)
    net.grow("b", [1, len(net.template.slots) - 2])
    net.double().eval()
    x = torch.randn(3, *net.template.input_shape, dtype=torch.float64)

    def grads(backend):
        net.zero_grad(set_to_none=True)
        logits = net.forward_all(x, backend=backend)
        sum(v.square().sum() for v in logits.values()).backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    want = grads("loop")
    for backend in BACKENDS:
        assert_same(grads(backend), want, torch.float64)


def test_block_structure_and_shortcuts():
    """conv1-bn1-relu-conv2-bn2, plus the identity or the residual-adapters shortcut (average
    pool, zero channels appended), then relu; computed here from the named layers."""
    torch.manual_seed(0)
    same, wide = BasicBlock(4, 4), BasicBlock(4, 8, stride=2)
    assert isinstance(same.shortcut, nn.Identity) and isinstance(wide.shortcut, PadShortcut)
    assert wide.conv1.stride == (2, 2) and wide.conv1.bias is None
    for block in (same, wide):
        _randomise_bn(block, torch.Generator().manual_seed(2))
        block.eval()
        x = torch.randn(2, 4, 6, 6)
        y = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        s = x if block is same else torch.cat([nn.functional.avg_pool2d(x, 2),
                                               torch.zeros(2, 4, 3, 3)], 1)
        assert torch.allclose(block(x), torch.relu(y + s), atol=1e-6)
    with pytest.raises(L2BGError, match="out_channels >= in_channels"):
        PadShortcut(8, 4, 1)


@pytest.mark.parametrize("pool", [GlobalAvgPool2d(), nn.AdaptiveAvgPool2d(1),
                                  nn.AdaptiveAvgPool2d((1, 1))])
@pytest.mark.parametrize("backend", BACKENDS)
def test_user_modules_of_the_new_kinds_run_natively(pool, backend):
    """A user template of our BasicBlock and a global pool (ours, or torch's adaptive pool to
    1×1) runs in the one-shot C++ program, equal to the per-task forward."""
    torch.manual_seed(0)
    tpl = module_template([nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU()),
                           BasicBlock(4, 6, stride=2), nn.Sequential(pool, nn.Flatten())],
                          head=lambda c: nn.Linear(6, c), input_shape=(2, 6, 6))
    net = JointNet(tpl)
    net.add_task("a", 2)
    net.bind("b", to="a", num_classes=3)
    net.grow("b", [1])
    net.eval()
    x = torch.randn(3, 2, 6, 6)
    with torch.no_grad():
        got = net.forward_all(x, backend=backend)
        for t in net.tasks:
            torch.testing.assert_close(got[t], net(x, t), rtol=1e-5, atol=1e-6)
    plan = ex.get_plan(net)
    assert plan.native_error is None
    new = [k for k in plan.layers if k in (kinds.BASIC_BLOCK, kinds.GLOBAL_AVG_POOL)]
    assert new  # the program names the new kinds


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_block_with_another_shortcut_runs_through_pytorch(backend):
    """A BasicBlock whose shortcut C++ does not know (a 1×1 projection) is run by its module,
    each node once, still equal to the per-task forward."""
    torch.manual_seed(0)
    block = BasicBlock(2, 4)
    block.shortcut = nn.Conv2d(2, 4, 1, bias=False)
    tpl = module_template([block, GlobalAvgPool2d()], head=lambda c: nn.Linear(4, c),
                          input_shape=(2, 4, 4))
    net = JointNet(tpl)
    net.add_task("a", 2)
    net.bind("b", to="a", num_classes=2)
    net.eval()
    x = torch.randn(3, 2, 4, 4)
    with torch.no_grad():
        got = net.forward_all(x, backend=backend)
        for t in net.tasks:
            torch.testing.assert_close(got[t], net(x, t))
    plan = ex.get_plan(net)
    assert plan.native_error is not None and plan.node_layers[0] is None


@needs_native
def test_opcheck_run_plan_on_a_residual_plan():
    """torch.library.opcheck on the C++ op with a resnet plan (schema, autograd registration,
    fake tensors), eval-mode flags so that no statistics are written."""
    torch.manual_seed(0)
    net = JointNet(SMALL["resnet26"]())
    net.add_task("a", 2)
    net.bind("b", to="a", num_classes=3)
    net.grow("b", [2])
    net.double().eval()
    plan = ex.get_plan(net)
    x = torch.randn(2, *net.template.input_shape, dtype=torch.float64)
    torch.library.opcheck(torch.ops.l2bg.run_plan.default,
                          (plan.program, plan.layers, plan.fargs, plan.flags(), [x], plan.params),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


def _block_params(c_in: int, c_out: int) -> int:
    return 9 * c_in * c_out + 9 * c_out * c_out + 4 * c_out  # two convs, two batch norms


@pytest.mark.parametrize("name", ["resnet26", "resnet18"])
def test_parameter_counts(name):
    """The full-size templates: the count of the architecture (stem, blocks, pool's batch norm,
    a head per task), and after a grow the distinct tensors reachable from the routes."""
    tpl = make_template(name)
    if name == "resnet26":
        stem, widths, blocks, end = 32, (64, 128, 256), (4, 4, 4), 2 * 256
        assert len(tpl.slots) == 14 and tpl.expandable_slots == list(range(14))
    else:
        stem, widths, blocks, end = 64, (64, 128, 256, 512), (2, 2, 2, 2), 0
        assert len(tpl.slots) == 10 and tpl.expandable_slots == list(range(9))
    count, c_in = 9 * 3 * stem + 2 * stem + end, stem
    for w, n in zip(widths, blocks, strict=True):
        count += _block_params(c_in, w) + (n - 1) * _block_params(w, w)
        c_in = w
    net = JointNet(tpl)
    net.add_task("a", 10)
    assert net.num_parameters() == count + (widths[-1] + 1) * 10
    net.bind("b", to="a", num_classes=5)
    net.grow("b", ["s1b2", "stem"])
    grown = 9 * 3 * stem + 2 * stem + _block_params(widths[0], widths[0])
    assert net.num_parameters() == count + (widths[-1] + 1) * 15 + grown


@pytest.mark.parametrize("name", sorted(SMALL))
def test_save_load_round_trip(tmp_path, name):
    """A grown resnet JointNet saves itself fully (built-in template) and loads without the
    template: the same routes, parameters and eval-mode outputs, batch-norm statistics too."""
    torch.manual_seed(0)
    net = JointNet(SMALL[name]())
    net.add_task("a", 2)
    net.bind("b", to="a", num_classes=3)
    net.grow("b", [0, 2])
    _randomise_bn(net, torch.Generator().manual_seed(3))
    net.save(tmp_path)
    loaded = JointNet.load(tmp_path).eval()
    net.eval()
    assert loaded.routes() == net.routes()
    assert loaded.num_parameters() == net.num_parameters()
    x = torch.randn(2, *net.template.input_shape)
    for t in net.tasks:
        assert torch.equal(loaded(x, t), net(x, t))


@pytest.mark.parametrize("kwargs, message", [
    ({"image_size": 60}, "multiple of 8"),
    ({"widths": (64, 32, 128)}, "never fall"),
    ({"widths": (64, 128)}, "one block count per stage"),
    ({"stem": 0}, "stem must be an integer"),
])
def test_bad_resnet_kwargs_are_one_line(kwargs, message):
    with pytest.raises(L2BGError, match=message) as info:
        resnet26(**kwargs)
    assert "\n" not in str(info.value)


def test_registry_lists_builtins_and_registered_templates():
    """Built-ins first (mlp, convnet, resnet26, resnet18); a registered template is fitted to
    the data; a name twice needs replace=True; unknown names are a ParamError naming it."""
    assert TEMPLATES.names()[:4] == ["mlp", "convnet", "resnet26", "resnet18"]

    def fit(shape, num_classes, shared_head):
        return module_template([nn.Flatten(), nn.Linear(math.prod(shape), 4)], name="tiny",
                               head=lambda c: nn.Linear(4, c), input_shape=shape)

    register_template("tiny-test", fit, help="a test template")
    try:
        assert "tiny-test" in TEMPLATES.names() and "a test template" in TEMPLATES.help()
        with pytest.raises(L2BGError, match="already registered"):
            register_template("tiny-test", fit)
        with pytest.raises(L2BGError, match="built-ins"):
            from l2bg.learn.training import default_config
            default_config("tiny-test")
    finally:
        TEMPLATES.unregister("tiny-test")
    with pytest.raises(ParamError, match="unknown template 'nope'") as info:
        TEMPLATES.get("nope")
    assert info.value.param == "template"
