"""forward_all: the C++ executor (native) and the pure-PyTorch plan (reference) against the naive
per-task loop, on hypothesis-generated JointNet topologies."""

from __future__ import annotations

import copy
import os
import sys
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2bg.base import native as _ext
from l2bg.base.errors import L2BGError
from l2bg.net import executor as ex
from l2bg.net import plan as plan_mod
from l2bg.net.jointnet import JointNet
from l2bg.net.templates import Layer, SlotSpec, Template, convnet, mlp

REQUIRE_NATIVE = os.environ.get("L2BG_REQUIRE_NATIVE", "") not in ("", "0")
with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    NATIVE = _ext.native_available()
BACKENDS = ["reference", "native"] if NATIVE else ["reference"]
DEVICES = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.float64: {"rtol": 1e-10, "atol": 1e-12}}

TEMPLATES = {
    "mlp": lambda: mlp(input_dim=5, hidden=(4, 3), num_classes=3, shared_head=True),
    "mlp_heads": lambda: mlp(input_dim=5, hidden=(4, 3), num_classes=3, shared_head=False),
    "convnet": lambda: convnet(
        in_channels=1, image_size=12, channels=(3, 4), kernels=(3, 2), fc=(6,)
    ),
}
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a loaded machine every OpenMP
    barrier can wait for a preempted thread: run this module single-threaded, then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@st.composite
def jointnets(draw, template: str | None = None) -> JointNet:
    """A JointNet after a random add/bind/grow sequence over 1–8 tasks (then extra grows)."""
    name = template or draw(st.sampled_from(sorted(TEMPLATES)))
    tpl = TEMPLATES[name]()
    n_slots = len(tpl.slots)
    torch.manual_seed(draw(st.integers(0, 2**16)))
    net = JointNet(tpl)
    n_tasks = draw(st.integers(1, 8))
    slot_sets = st.lists(st.integers(0, n_slots - 1), max_size=n_slots, unique=True)
    for i in range(n_tasks):
        classes = draw(st.integers(1, 4))
        if i == 0 or draw(st.integers(0, 9)) == 0:  # mostly bind + grow, sometimes fresh
            net.add_task(f"t{i}", classes)
        else:
            net.bind(f"t{i}", to=f"t{draw(st.integers(0, i - 1))}", num_classes=classes)
            net.grow(f"t{i}", draw(slot_sets), init=draw(st.sampled_from(["copy", "fresh"])))
    for _ in range(draw(st.integers(0, 2))):
        net.grow(f"t{draw(st.integers(0, n_tasks - 1))}", draw(slot_sets))
    return net


def make_input(net: JointNet, n: int, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    return torch.randn(n, *ex.feature_shape(net), dtype=dtype, device=device)


def distinct_paths(net: JointNet, tasks) -> int:
    routes = net.routes()
    return len({tuple(routes[t][: s + 1]) for t in tasks for s in range(len(routes[t]))})


def nodes_in_use(net: JointNet, tasks) -> int:
    return len({n for t in tasks for n in net.routes()[t]})


def assert_same(a, b, dtype):
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k], dtype)
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            assert_same(u, v, dtype)
    else:
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, **TOL[dtype])


# ------------------------------------------------------------------------------ equality (eval)
@SETTINGS
@given(
    data=st.data(),
    net=jointnets(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    per_task=st.booleans(),
)
def test_backends_equal_loop_in_eval_mode(data, net, dtype, per_task):
    net = net.to(dtype).eval()
    tasks = data.draw(st.lists(st.sampled_from(net.tasks), min_size=1, unique=True) | st.none())
    names = net.tasks if tasks is None else tasks
    capture = data.draw(st.booleans() | st.lists(st.sampled_from(names), unique=True))
    if per_task:
        x = {t: make_input(net, data.draw(st.integers(1, 5)), dtype) for t in names}
        if tasks is None:
            x = {t: x[t] for t in data.draw(st.permutations(names))}
            names = list(x)
    else:
        x = make_input(net, data.draw(st.integers(1, 5)), dtype)
    with torch.no_grad():
        want = net.forward_all(x, tasks=tasks, return_activations=capture, backend="loop")
        for backend in BACKENDS:
            got = net.forward_all(x, tasks=tasks, return_activations=capture, backend=backend)
            assert_same(got, want, dtype)
    plan = ex.get_plan(
        net, names, per_task, names if capture is True else capture if capture else ()
    )
    expected = nodes_in_use(net, names) if per_task else distinct_paths(net, names)
    assert plan.node_evals == expected


@SETTINGS
@given(
    data=st.data(),
    net=jointnets(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    per_task=st.booleans(),
)
def test_gradients_equal_loop_on_training_path(data, net, dtype, per_task):
    net = net.to(dtype).train()  # no batch norm or dropout in these templates
    names = net.tasks
    if per_task:
        x = {t: make_input(net, data.draw(st.integers(1, 4)), dtype) for t in names}
    else:
        x = make_input(net, data.draw(st.integers(1, 4)), dtype)
    weights = {t: data.draw(st.floats(0.5, 2.0)) for t in names}

    def grads(backend):
        net.zero_grad(set_to_none=True)
        logits, acts = net.forward_all(x, return_activations=True, backend=backend)
        loss = sum(weights[t] * (logits[t].square().sum() + acts[t][0].sum()) for t in names)
        loss.backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    want = grads("loop")
    for backend in BACKENDS:
        assert_same(grads(backend), want, dtype)


@pytest.mark.parametrize("template", ["mlp_heads", "convnet"])
@pytest.mark.parametrize("grad", [False, True])
def test_large_batches_match_loop(template, grad):
    """Thousands of rows: the native executor's row-blocked, gather-free linear path (no grad)
    and the concatenating path (grad) against the loop."""
    torch.manual_seed(0)
    net = JointNet(TEMPLATES[template]())
    net.add_task("a", 2)
    net.bind("b", to="a", num_classes=3)
    net.bind("c", to="a", num_classes=3)
    net.grow("c", [len(net.template.slots) - 1])
    net.add_task("d", 2)
    net.eval()
    sizes = (
        {"a": 1500, "b": 7, "c": 300, "d": 0}
        if template == "mlp_heads"
        else ({"a": 600, "b": 7, "c": 300, "d": 0})
    )
    per_task = {t: make_input(net, n, torch.float32) for t, n in sizes.items()}
    shared = make_input(net, 2100 if template == "mlp_heads" else 1100, torch.float32)
    with torch.set_grad_enabled(grad):
        for x in (per_task, shared):
            want = net.forward_all(x, return_activations=True, backend="loop")
            for backend in BACKENDS:
                got = net.forward_all(x, return_activations=True, backend=backend)
                assert_same(got, want, torch.float32)


# ------------------------------------------------------------------------------ plans
@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    data=st.data(),
    n_tasks=st.integers(1, 8),
    n_slots=st.integers(1, 5),
    per_task=st.booleans(),
    head_params=st.sampled_from([0, 2]),
)
def test_native_router_equals_reference_router(data, n_tasks, n_slots, per_task, head_params):
    if not NATIVE:
        pytest.skip("native extension not built")
    width = [data.draw(st.integers(1, n_tasks)) for _ in range(n_slots)]
    raw = [[data.draw(st.integers(0, w - 1)) for w in width] for _ in range(n_tasks)]
    index: dict = {}
    routes = [[index.setdefault((s, k), len(index)) for s, k in enumerate(r)] for r in raw]
    capture = sorted(data.draw(st.sets(st.integers(0, n_tasks - 1))))
    slot_params = [data.draw(st.integers(0, 5)) for _ in range(n_slots)]
    native = torch.ops.l2bg.plan(
        [k for r in routes for k in r], n_slots, slot_params, head_params, per_task, capture
    )
    ref = plan_mod.compile_plan_reference(routes, slot_params, head_params, per_task, capture)
    assert list(native) == ref
    # Every buffer is written once, read only while alive, and released exactly once.
    alive, released = set(range(n_tasks if per_task else 1)), set()
    for step in plan_mod.decode_steps(ref):
        if step[0] == plan_mod.EVAL:
            assert all(seg[0] in alive for seg in step[3])
            alive.add(step[2])
        elif step[0] == plan_mod.RELEASE:
            alive.remove(step[1])
            released.add(step[1])
        else:
            assert step[2] in alive
    assert not alive and len(released) == ref[plan_mod.H_BUFFERS]


def test_plan_is_cached_and_rebuilt_on_topology_change():
    torch.manual_seed(0)
    net = JointNet(TEMPLATES["mlp"]())
    net.add_task("a")
    net.bind("b", to="a")
    net.eval()
    x = make_input(net, 3, torch.float32)
    plan = ex.get_plan(net)
    assert plan.node_evals == 3 and ex.get_plan(net) is plan
    net.forward_all(x)
    assert ex.get_plan(net) is plan
    net.grow("b", [1])
    new = ex.get_plan(net)
    assert new is not plan and new.version == net.version and new.node_evals == 5
    for backend in BACKENDS:
        got = net.forward_all(x, backend=backend)
        assert_same(got, net.forward_all(x, backend="loop"), torch.float32)
    assert ex.get_plan(net, per_task=True).node_evals == 4  # fc1_0, fc2_0, fc2_1, head_0


def test_all_shared_and_none_shared_counts():
    torch.manual_seed(0)
    shared, separate = JointNet(TEMPLATES["convnet"]()), JointNet(TEMPLATES["convnet"]())
    for i in range(5):
        separate.add_task(f"t{i}", 2)
        if i == 0:
            shared.add_task("t0", 2)
        else:
            shared.bind(f"t{i}", to="t0", num_classes=2)
    assert ex.get_plan(shared).node_evals == 3
    assert ex.get_plan(separate).node_evals == 15
    assert ex.get_plan(shared, per_task=True).node_evals == 3


# ------------------------------------------------------------------------------ train-mode
def bn_dropout_template() -> Template:
    slots = (
        SlotSpec(
            "fc1",
            (
                Layer("linear", {"in_features": 6, "out_features": 5}),
                Layer("batch_norm", {"num_features": 5}),
                Layer("relu"),
                Layer("dropout", {"p": 0.3}),
            ),
        ),
        SlotSpec(
            "fc2",
            (
                Layer("linear", {"in_features": 5, "out_features": 4}),
                Layer("batch_norm", {"num_features": 4}),
                Layer("relu"),
            ),
        ),
    )
    return Template("bn", {}, slots, per_task_heads=True, head_in=4)


def bn_net() -> JointNet:
    torch.manual_seed(1)
    net = JointNet(bn_dropout_template())
    net.add_task("a", 3)
    net.bind("b", to="a", num_classes=2)
    net.grow("b", [1])
    net.add_task("c", 2)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    return net


@pytest.mark.parametrize("per_task", [False, True])
def test_batch_norm_and_dropout(per_task):
    net = bn_net()
    x = (
        {t: torch.randn(4 + i, 6) for i, t in enumerate(net.tasks)}
        if per_task
        else (torch.randn(4, 6))
    )
    with torch.no_grad():  # eval: equal to the loop
        net.eval()
        want = net.forward_all(x, return_activations=True, backend="loop")
        for backend in BACKENDS:
            assert_same(
                net.forward_all(x, return_activations=True, backend=backend), want, torch.float32
            )
    # train: a shared node updates its statistics once and draws one mask (native == reference)
    net.train()
    runs = {}
    for backend in BACKENDS:
        copy_ = copy.deepcopy(net)
        torch.manual_seed(7)
        out = copy_.forward_all(x, backend=backend)
        runs[backend] = (out, copy_.state_dict())
    out, state = runs["reference"]
    for backend in BACKENDS:
        assert_same(runs[backend][0], out, torch.float32)
        assert_same(runs[backend][1], state, torch.float32)
    shared_bn = net.nodes[net.routes()["a"][0]][1]
    assert state[f"nodes.{net.routes()['a'][0]}.1.num_batches_tracked"] == (
        shared_bn.num_batches_tracked + 1
    )


# ------------------------------------------------------------------------------ errors
def test_bad_inputs_raise_l2bg_error():
    torch.manual_seed(0)
    net = JointNet(TEMPLATES["convnet"]())
    net.add_task("a", 2)
    net.bind("b", to="a", num_classes=3)
    x = make_input(net, 2, torch.float32)
    for backend in ["loop", *BACKENDS]:
        with pytest.raises(L2BGError, match="unknown task 'zz'"):
            net.forward_all(x, tasks=["a", "zz"], backend=backend)
        with pytest.raises(L2BGError, match=r"miss tasks \['b'\]"):
            net.forward_all({"a": x}, tasks=["a", "b"], backend=backend)
        with pytest.raises(L2BGError, match="not in tasks="):
            net.forward_all({"a": x, "b": x}, tasks=["a"], backend=backend)
        with pytest.raises(L2BGError, match="expects"):
            net.forward_all(torch.randn(2, 1, 11, 12), backend=backend)
        with pytest.raises(L2BGError, match="expects"):
            net.forward_all({"a": x, "b": torch.randn(2, 12, 12)}, backend=backend)
        with pytest.raises(L2BGError, match="float64"):
            net.forward_all(x.double(), backend=backend)
        with pytest.raises(L2BGError, match="twice"):
            net.forward_all(x, tasks=["a", "a"], backend=backend)
        with pytest.raises(L2BGError, match="torch.Tensor"):
            net.forward_all(x.tolist(), backend=backend)
        with pytest.raises(L2BGError, match="not among"):
            net.forward_all(x, tasks=["a"], return_activations=["b"], backend=backend)
    with pytest.raises(L2BGError, match="unknown backend"):
        net.forward_all(x, backend="fast")
    with pytest.raises(L2BGError, match="cuda_graph"):
        net.forward_all(x, cuda_graph=True)
    assert net.forward_all(x, tasks=[]) == {}


def test_default_backend_and_backends_report():
    report = _ext.backends()
    assert report["native"] is NATIVE and report["native_reason"]
    assert report["executor"] == ex.default_backend() == ("native" if NATIVE else "reference")
    assert isinstance(report["triton"], bool) and report["triton_reason"]
    if REQUIRE_NATIVE:
        assert NATIVE, report["native_reason"]


def test_missing_extension_falls_back_or_errors(monkeypatch):
    import l2bg

    loader = _ext.load_extension.__wrapped__
    monkeypatch.setitem(sys.modules, "l2bg._C", None)
    monkeypatch.delattr(l2bg, "_C", raising=False)
    monkeypatch.setenv("L2BG_NO_JIT", "1")
    monkeypatch.setenv("L2BG_REQUIRE_NATIVE", "1")
    with pytest.raises(L2BGError, match="L2BG_REQUIRE_NATIVE=1"):
        loader()
    monkeypatch.setenv("L2BG_REQUIRE_NATIVE", "0")
    with pytest.warns(RuntimeWarning, match="using the pure-PyTorch reference"):
        assert loader() is None


def test_import_stays_light_and_loads_on_first_use():
    """A fresh interpreter: importing l2bg loads no extension; the first use loads it (with
    nothing imported before, so the loader must bring torch's libraries itself)."""
    import subprocess

    code = (
        "import sys, l2bg, l2bg.net.jointnet, l2bg.net.executor; "
        "print(any(m in sys.modules for m in ('l2bg._C', 'l2bg_C_jit'))); "
        "from l2bg.base.native import native_status; print(native_status()[0])"
    )
    env = {**os.environ, "L2BG_NO_JIT": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["False", str(NATIVE)]


# ------------------------------------------------------------------------------ native specifics
@pytest.mark.skipif(not NATIVE, reason="native extension not built")
def test_native_traces_with_fake_tensors():
    from torch.fx.experimental.proxy_tensor import make_fx

    torch.manual_seed(0)
    net = JointNet(TEMPLATES["mlp_heads"]())
    net.add_task("a", 2)
    net.bind("b", to="a", num_classes=3)
    net.grow("b", [1])
    net.eval()
    plan = ex.get_plan(net)

    def run(x, *params):  # parameters as inputs, so tracing sees them as fake tensors too
        return torch.ops.l2bg.run_plan.default(
            plan.program, plan.layers, plan.fargs, [], [x], list(params)
        )

    with torch.no_grad():
        params = [p.detach() for p in plan.params]
        gm = make_fx(run, tracing_mode="fake")(torch.randn(3, 5), *params)
        x = torch.randn(4, 5)
        assert_same(list(gm(x, *params)), ex.run_native(plan, [x]), torch.float32)
    assert "l2bg" not in gm.code and "addmm" in gm.code  # decomposed into ATen ops


@pytest.mark.skipif(not NATIVE, reason="native extension not built")
def test_native_reads_parameters_without_copies():
    torch.manual_seed(0)
    net = JointNet(TEMPLATES["mlp"]())
    net.add_task("a")
    net.bind("b", to="a")
    net.eval()
    x = make_input(net, 2, torch.float32)
    before = net.forward_all(x, backend="native")["a"]
    plan = ex.get_plan(net)
    assert all(any(p is q for q in plan.params) for p in net.parameters())
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2)
        after = net.forward_all(x, backend="native")
    assert not torch.allclose(before, after["a"])
    assert_same(after, net.forward_all(x, backend="loop"), torch.float32)
    # Parameters replaced by new objects (not a topology change) are picked up too.
    state = {k: torch.randn_like(v) for k, v in net.state_dict().items()}
    net.load_state_dict(state, assign=True)
    assert_same(
        net.forward_all(x, backend="native"), net.forward_all(x, backend="loop"), torch.float32
    )


# ------------------------------------------------------------------------------ CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("per_task", [False, True])
def test_cuda_matches_loop_and_cuda_graph_replays(per_task, monkeypatch):
    # TF32 rounds differently for different batch sizes; compare in full float32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    net = JointNet(TEMPLATES["convnet"]())
    net.add_task("a", 2)
    net.bind("b", to="a", num_classes=3)
    net.grow("b", [1, 2])
    net.add_task("c", 4)
    net = net.cuda().eval()

    def inputs():
        if per_task:
            return {t: make_input(net, 3, torch.float32, "cuda") for t in net.tasks}
        return make_input(net, 3, torch.float32, "cuda")

    with torch.no_grad():
        for _ in range(3):  # capture, then replays with new values
            x = inputs()
            want = net.forward_all(x, return_activations=True, backend="loop")
            for backend in BACKENDS:
                assert_same(
                    net.forward_all(x, return_activations=True, backend=backend),
                    want,
                    torch.float32,
                )
                got = net.forward_all(x, return_activations=True, backend=backend, cuda_graph=True)
                assert_same(got, want, torch.float32)
    with pytest.raises(L2BGError, match="no_grad"):
        net.forward_all(inputs(), cuda_graph=True)


def test_executor_reads_only_the_public_view_of_any_template():
    """A template the executor has never heard of runs through forward_all; the view it reads
    cannot be edited."""
    slots = (SlotSpec("a", (Layer("flatten"), Layer("linear", {"in_features": 12,
                                                                "out_features": 5}),
                            Layer("relu"))),
             SlotSpec("b", (Layer("linear", {"in_features": 5, "out_features": 4}),)))
    tpl = Template("my-own", {}, slots, per_task_heads=True, head_in=4, input_shape=(3, 4))
    net = JointNet(tpl)
    net.add_task("x", 2)
    net.bind("y", "x", 3)
    net.grow("y", ["b"])
    view = net.view()
    assert view.input_shape == (3, 4) and view.tasks == ("x", "y") and view.num_slots == 2
    with pytest.raises(TypeError):
        view.routes["x"] = ("a_9", "b_9")  # type: ignore[index]
    x = torch.randn(6, 3, 4)
    for backend in BACKENDS:
        got = net.forward_all(x, backend=backend)
        for t in ("x", "y"):
            torch.testing.assert_close(got[t], net(x, t))
    with pytest.raises(L2BGError, match="my-own expects"):
        net.forward_all(torch.randn(6, 12))
