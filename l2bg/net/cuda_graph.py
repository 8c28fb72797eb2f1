"""CUDA-graph replay of a forward_all plan (``JointNet.forward_all(..., cuda_graph=True)``).

A graph records the kernels of one run with the addresses it read and wrote, and a replay
launches them again on the same memory. So a graph is valid only while everything it read stays
where it was; ``graph_key`` names all of it, and a call whose key differs captures anew:

- the plan (topology version, tasks, per-task or shared input, captured activations), the
  executor backend, and the inputs' shapes, strides, dtypes and devices;
- the storage of every parameter and buffer the plan reads (address, shape, strides, dtype):
  ``load_state_dict(assign=True)``, ``module.weight = nn.Parameter(...)`` or ``net.to(...)``
  put them elsewhere, and a replay of the old graph would read freed memory. In-place updates
  (an optimizer step, batch-norm statistics) keep the storage: the replay reads the new values,
  so they do not force a new capture;
- whether inference mode was on: a graph captured under ``torch.inference_mode()`` holds
  inference tensors, which a later call under ``torch.no_grad()`` may not copy into.

One graph is kept per JointNet (a new capture frees the previous one's memory pool). Outputs
are the graph's static tensors, overwritten by the next replay: clone what you keep.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from l2bg.base.errors import L2BGError

if TYPE_CHECKING:
    from l2bg.net.plan import Plan

Runner = Callable[[list[Tensor]], list[Tensor]]


def _layout(t: Tensor | None) -> tuple | None:
    if t is None:
        return None
    return (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t.device)


def graph_key(plan: Plan, backend: str, inputs: Sequence[Tensor]) -> tuple:
    """Everything a captured graph depends on (see the module doc); equal keys replay."""
    return (
        plan.version,
        plan.tasks,
        plan.per_task,
        plan.capture,
        backend,
        tuple((tuple(x.shape), x.stride(), x.dtype, x.device) for x in inputs),
        tuple(_layout(p) for p in plan.params),
        torch.is_inference_mode_enabled(),
    )


class CudaGraph:
    """One CUDA graph of a plan run for fixed input shapes; replayed while its key holds."""

    def __init__(self, key: tuple, fn: Runner, inputs: Sequence[Tensor]) -> None:
        self.key = key
        self.static_inputs = [x.clone() for x in inputs]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up allocator, cuBLAS/cuDNN handles outside the capture
                fn(self.static_inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_outputs = fn(self.static_inputs)

    def __call__(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        for dst, src in zip(self.static_inputs, inputs, strict=True):
            dst.copy_(src)
        self.graph.replay()
        return self.static_outputs


_GRAPHS: weakref.WeakKeyDictionary[nn.Module, CudaGraph] = weakref.WeakKeyDictionary()


def check(plan: Plan, inputs: Sequence[Tensor]) -> None:
    """Refuse what a graph cannot replay faithfully, each with its fix."""
    if not torch.cuda.is_available() or any(x.device.type != "cuda" for x in inputs):
        raise L2BGError(
            "cuda_graph=True needs CUDA inputs and parameters; move them with "
            ".to('cuda') or drop cuda_graph"
        )
    if torch.is_grad_enabled():
        raise L2BGError(
            "cuda_graph=True records no autograd graph; call it under "
            "torch.no_grad() or torch.inference_mode()"
        )
    if any(plan.flags()) or any(
            m.training for v in plan.view_modules for m in v.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.Dropout)):
        raise L2BGError(
            "cuda_graph=True replays eval-mode networks only (batch norm and dropout "
            "in train mode would update/draw at capture); call net.eval()"
        )


def replay(net: nn.Module, plan: Plan, backend: str, fn: Runner, inputs: list[Tensor]
           ) -> list[Tensor]:  # fmt: skip
    """Run ``fn(inputs)`` (the plan on ``backend``) through the net's CUDA graph, capturing it
    first when there is none or its key changed."""
    check(plan, inputs)
    key = graph_key(plan, backend, inputs)
    graph = _GRAPHS.get(net)
    if graph is None or graph.key != key:
        _GRAPHS.pop(net, None)  # free the previous graph's memory pool before capturing anew
        graph = _GRAPHS[net] = CudaGraph(key, fn, inputs)
    return graph(inputs)
