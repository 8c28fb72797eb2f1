"""CUDA-graph replay of forward_all (l2bg.cuda_graph): what the replay key covers, the capture
cache (on the CPU with a stand-in graph), and real replays where a GPU is present."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from l2bg.net import cuda_graph
from l2bg.net import executor as ex
from l2bg.net.jointnet import JointNet
from l2bg.net.templates import convnet

CUDA = torch.cuda.is_available()


def small_net(device: str = "cpu") -> JointNet:
    torch.manual_seed(0)
    net = JointNet(convnet(in_channels=1, image_size=12, channels=(3, 4), kernels=(3, 2), fc=(6,)))
    net.add_task("a", 2)
    net.bind("b", to="a", num_classes=3)
    net.grow("b", [1, 2])
    return net.to(device).eval()


def inputs(net: JointNet, device: str = "cpu") -> list[torch.Tensor]:
    return [torch.randn(3, 1, 12, 12, device=device)]


def key(net: JointNet, xs: list[torch.Tensor]) -> tuple:
    return cuda_graph.graph_key(ex.get_plan(net), "reference", xs)


def test_key_follows_parameter_storage_not_values():
    net = small_net()
    xs = inputs(net)
    k0 = key(net, xs)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2.0)  # in place: same storage, a replay reads the new values
    assert key(net, xs) == k0
    net.load_state_dict({k: v.clone() for k, v in net.state_dict().items()}, assign=True)
    k1 = key(net, xs)
    assert k1 != k0
    layer = next(m for m in net.modules() if isinstance(m, nn.Linear))
    layer.weight = nn.Parameter(layer.weight.detach().clone())
    assert key(net, xs) != k1


def test_key_follows_inference_mode_and_input_layout():
    net = small_net()
    xs = inputs(net)
    with torch.no_grad():
        k_nograd = key(net, xs)
    with torch.inference_mode():
        assert key(net, xs) != k_nograd
    assert key(net, [xs[0][:2]]) != k_nograd
    assert key(net, [xs[0].to(memory_format=torch.channels_last)]) != k_nograd


class FakeGraph:
    """CudaGraph stand-in for the CPU: counts captures, replays by calling the plan."""

    captures = 0

    def __init__(self, key, fn, inputs):
        FakeGraph.captures += 1
        self.key, self.fn = key, fn

    def __call__(self, inputs):
        return self.fn(inputs)


def test_replay_recaptures_exactly_when_the_key_changes(monkeypatch):
    monkeypatch.setattr(cuda_graph, "CudaGraph", FakeGraph)
    monkeypatch.setattr(cuda_graph, "check", lambda plan, xs: None)
    FakeGraph.captures = 0
    net = small_net()
    xs = inputs(net)
    plan = ex.get_plan(net)

    def run():
        return cuda_graph.replay(net, plan, "reference", lambda v: ex.run_reference(plan, v), xs)

    with torch.no_grad():
        run()
        run()
        assert FakeGraph.captures == 1
        net.load_state_dict({k: v.clone() for k, v in net.state_dict().items()}, assign=True)
        out = run()
        assert FakeGraph.captures == 2
        torch.testing.assert_close(out[0], net(xs[0], "a"))
    with torch.inference_mode():
        run()
        assert FakeGraph.captures == 3


# ------------------------------------------------------------------------------ CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["reference", "native"])
def test_replay_after_new_parameters_and_mode_switch_cuda(backend, monkeypatch):
    if backend == "native" and ex.default_backend() != "native":
        pytest.skip("native extension not built")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    net = small_net("cuda")
    xs = inputs(net, "cuda")

    def check_against_loop():
        got = net.forward_all(xs[0], backend=backend, cuda_graph=True)
        want = net.forward_all(xs[0], backend="loop")
        for t in want:
            torch.testing.assert_close(got[t], want[t], rtol=1e-5, atol=1e-6)

    with torch.inference_mode():  # capture with inference tensors ...
        check_against_loop()
    with torch.no_grad():  # ... then a no_grad call must capture anew, not copy_ into them
        check_against_loop()
        graph = cuda_graph._GRAPHS[net]
        for p in net.parameters():
            p.mul_(0.5)  # in place: replayed without a new capture, new values read
        check_against_loop()
        assert cuda_graph._GRAPHS[net] is graph
        fresh = {k: torch.randn_like(v) if v.is_floating_point() else v.clone()
                 for k, v in net.state_dict().items()}  # fmt: skip
        net.load_state_dict(fresh, assign=True)  # old storages freed
        torch.cuda.empty_cache()
        check_against_loop()
        assert cuda_graph._GRAPHS[net] is not graph
