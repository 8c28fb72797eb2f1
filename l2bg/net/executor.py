"""Run many task-nets of a JointNet in one pass that computes every shared layer once.

``JointNet.forward_all`` lands here. The topology of the chosen tasks is compiled into a *plan*
(:mod:`l2bg.net.plan`) from the JointNet's public view; plans are cached per JointNet and rebuilt
only when ``net.version`` changes (add_task / bind / grow).

Backends: ``native`` runs the plan in C++ (``torch.ops.l2bg.run_plan``, planned by
``torch.ops.l2bg.plan``); ``reference`` is this module's pure-PyTorch copy of the same router and
executor (calling the JointNet's own modules); ``loop`` is the naive per-task ``net(x, task)``
baseline. Default: native when the extension loads, else reference.

Semantics: in eval mode every backend equals the loop (up to float rounding of batched GEMMs).
In train mode a deduplicated node runs once: batch norm normalises over, and updates its running
statistics once from, all rows it sees, and dropout draws one mask for them, whereas the loop
does one update/draw per task. This is by design (it is what sharing the node means).

Overlays (task batch norm, grown channel groups, adapters; :mod:`l2bg.net.overlay`) appear in
the plan as virtual nodes (a node with a stack of overlays, :class:`~l2bg.net.overlay.SlotView`),
deduplicated like nodes: tasks with the same node and stack share one. A plan with virtual nodes
runs step by step (the mixed path) with a per-run memo keyed by (node, input): a node's own output,
its main-layer product and the layers before it are computed once per distinct input for the
node and all its virtual nodes; a virtual node adds one product over its grown rows (scattered
into the node's output) or, with task batch norm, the rest of the slot with the task's statistics.

Edit the topology only through add_task/bind/grow: the cache keys on ``net.version`` and holds
the plan's node modules; parameters are looked up in them on every run (never copied).

CUDA: ``cuda_graph=True`` captures the run in a CUDA graph and replays it while inputs,
topology, parameter storages and inference mode stay the same (``l2bg.net.cuda_graph``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from l2bg.base.errors import L2BGError
from l2bg.base.native import load_extension
from l2bg.net.overlay import SlotView, chain_of, node_stages
from l2bg.net.plan import (
    CAPTURE,
    EVAL,
    H_BUFFERS,
    H_LAYOUTS_AT,
    H_OUTPUTS,
    HEAD,
    RELEASE,
    Plan,
    build_plan,
    compile_plan_reference,
    decode_steps,
)

if TYPE_CHECKING:
    from l2bg.net.jointnet import JointNet

BACKENDS = ("native", "reference", "loop")


class _NetCache:
    """Plans of one JointNet, valid for one topology version."""

    __slots__ = ("version", "plans")

    def __init__(self, version: int) -> None:
        self.version = version
        self.plans: dict[tuple, Plan] = {}


_CACHES: weakref.WeakKeyDictionary[nn.Module, _NetCache] = weakref.WeakKeyDictionary()
_MAX_PLANS = 64


def _net_cache(net: JointNet) -> _NetCache:
    cache = _CACHES.get(net)
    if cache is None or cache.version != net.version:
        cache = _CACHES[net] = _NetCache(net.version)
    return cache


def get_plan(
    net: JointNet,
    tasks: Iterable[str] | None = None,
    per_task: bool = False,
    capture: Iterable[str] = (),
) -> Plan:
    """The cached plan for ``tasks`` (default: all), rebuilt when ``net.version`` changed."""
    tasks = tuple(net.tasks if tasks is None else tasks)
    wanted = set(capture)
    capture = tuple(t for t in tasks if t in wanted)
    cache = _net_cache(net)
    key = (tasks, per_task, capture)
    plan = cache.plans.get(key)
    if plan is None:
        view = net.view()
        unknown = [t for t in tasks if t not in view.routes]
        if unknown:
            raise L2BGError(f"unknown task {unknown[0]!r}; learned tasks: "
                            f"{list(view.tasks) or 'none yet'}")
        if not tasks:
            raise L2BGError("no tasks to plan; add a task or pass tasks=[...]")
        if len(cache.plans) >= _MAX_PLANS:
            cache.plans.clear()
        plan = cache.plans[key] = build_plan(view, tasks, per_task, capture)
        _mark_views(plan)
    return plan


def _mark_views(plan: Plan) -> None:
    """``plan.view_base``: per node, for a virtual node the plan index of its node (-1 when the
    node itself is not in the plan), else None; ``plan.view_bases``: nodes some view reuses."""
    index = {id(m): i for i, m in enumerate(plan.modules)}
    plan.view_base = [index.get(id(m.node), -1) if isinstance(m, SlotView) else None
                      for m in plan.modules]
    plan.view_bases = {b for b in plan.view_base if b is not None and b >= 0}
    seen = {(id(d), name) for d, name in plan.sources}
    for m in plan.modules:  # what views read, for CUDA-graph keys and checks
        if isinstance(m, SlotView):
            for part in (m.node, *m.stack):
                plan.view_modules.append(part)
                for sub in part.modules():
                    for d in (sub._parameters, sub._buffers):
                        for name in d:
                            if (id(d), name) not in seen:
                                seen.add((id(d), name))
                                plan.sources.append((d, name))


# ------------------------------------------------------------------------------------- backends
def _extension():
    return load_extension()


def run_native(plan: Plan, inputs: list[Tensor]) -> list[Tensor]:
    """Run a plan with the C++ executor (``torch.ops.l2bg.run_plan``). A plan with nodes C++
    does not know (any user module) runs its steps here instead: each node once, in C++ when
    C++ knows its layers, else through its own PyTorch module."""
    if plan.native_error is None:
        return torch.ops.l2bg.run_plan.default(
            plan.program, plan.layers, plan.fargs, plan.flags(), inputs, plan.params
        )
    params, flags = plan.params, plan.flags()

    def evaluate(node: int, x: Tensor) -> Tensor:
        layers = plan.node_layers[node]
        if layers is None:
            return plan.modules[node](x)
        first, count = plan.node_params[node]
        return torch.ops.l2bg.run_plan.default(
            _one_node_program(count), layers, plan.node_fargs, flags[node : node + 1] if flags
            else [], [x], params[first : first + count])[0]

    return run_reference(plan, inputs, evaluate)


_ONE_NODE: dict[int, list[int]] = {}


def _one_node_program(slot_params: int) -> list[int]:
    """The plan of one node on one input, no head (its output is the node's output)."""
    if slot_params not in _ONE_NODE:
        _ONE_NODE[slot_params] = compile_plan_reference([[0]], [slot_params], 0, False)
    return _ONE_NODE[slot_params]


def run_reference(plan: Plan, inputs: list[Tensor],
                  evaluate: Callable[[int, Tensor], Tensor] | None = None) -> list[Tensor]:
    """Run a plan in pure PyTorch with the JointNet's own modules (the spec of run_native);
    ``evaluate(node, x)`` replaces how one node runs (default: its module)."""
    if evaluate is None:
        def evaluate(node: int, x: Tensor) -> Tensor:
            return plan.modules[node](x)

    program = plan.program
    n_buffers = program[H_BUFFERS]
    buffers: list[Tensor | None] = [None] * n_buffers
    buffers[: len(inputs)] = inputs
    blocks: list[list[tuple[int, int]]] = []  # per buffer: (start, length) per row block
    if plan.per_task:
        rows = [x.shape[0] for x in inputs]
        i = program[H_LAYOUTS_AT]
        for _ in range(n_buffers):
            n, start, spans = program[i], 0, []
            for t in program[i + 1 : i + 1 + n]:
                spans.append((start, rows[t]))
                start += rows[t]
            blocks.append(spans)
            i += 1 + n

    def view(b: int, first: int, count: int) -> Tensor:
        buf = buffers[b]
        if not plan.per_task or count == 0 or (first == 0 and count == len(blocks[b])):
            return buf
        start = blocks[b][first][0]
        last = blocks[b][first + count - 1]
        return buf.narrow(0, start, last[0] + last[1] - start)

    outputs: list[Tensor | None] = [None] * program[H_OUTPUTS]
    bases = plan.view_base or []
    memo: dict | None = {} if any(b is not None for b in bases) else None
    for step in plan.steps:
        op = step[0]
        if op == EVAL:
            _, node, out, segs = step
            parts = [view(*seg) for seg in segs]
            x = parts[0] if len(parts) == 1 else torch.cat(parts)
            if memo is None:
                buffers[out] = evaluate(node, x)
                continue
            key, module = tuple(segs), plan.modules[node]
            if bases[node] is not None:  # a virtual node: its node's stages from the memo
                buffers[out] = module.run(x, memo, key)
            elif node in plan.view_bases and chain_of(module) is not None:
                buffers[out] = node_stages(module, chain_of(module), x, memo, key)
            else:
                buffers[out] = evaluate(node, x)
        elif op == RELEASE:
            buffers[step[1]] = None
            if memo:
                for k in [k for k in memo if any(seg[0] == step[1] for seg in k[1])]:
                    del memo[k]
        elif op == CAPTURE:
            outputs[step[1]] = view(step[2], step[3], 1).flatten(1)
        elif op == HEAD:
            outputs[step[1]] = plan.heads[step[1]](view(step[2], step[3], 1))
        else:
            outputs[step[1]] = view(step[2], step[3], 1)
    return outputs


def default_backend() -> str:
    """``native`` when the C++ extension loads, else ``reference``."""
    return "native" if _extension() is not None else "reference"


# ------------------------------------------------------------------------------------ front door
def feature_shape(net: JointNet) -> tuple[int, ...] | None:
    """Per-sample input shape the JointNet expects (None when its template does not say)."""
    return net.view().input_shape


def _check_input(
    name: str, x: Any, what: str, shape: tuple[int, ...] | None, ref: Tensor | None
) -> Tensor:
    if not isinstance(x, Tensor):
        raise L2BGError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if shape is not None and tuple(x.shape[1:]) != shape:
        want = ", ".join(str(d) for d in ("batch", *shape))
        raise L2BGError(
            f"{what} has shape {tuple(x.shape)}; {name} expects "
            f"({want}): reshape the input"
        )
    if ref is not None and (x.dtype != ref.dtype or x.device != ref.device):
        raise L2BGError(
            f"{what} is {x.dtype} on {x.device} but the JointNet is {ref.dtype} on "
            f"{ref.device}; convert with x.to(...) or net.to(...)"
        )
    return x


def _resolve_tasks(
    net: JointNet, x: Tensor | Mapping[str, Tensor], tasks: Iterable[str] | None
) -> tuple[str, ...]:
    if tasks is None:
        names = tuple(x) if isinstance(x, Mapping) else tuple(net.tasks)
    elif isinstance(tasks, str):
        names = (tasks,)
    else:
        names = tuple(tasks)
    known = set(net.tasks)
    for t in names:
        if t not in known:
            raise L2BGError(
                f"unknown task {t!r} in tasks=; learned tasks: {net.tasks or 'none yet'}"
            )
    if len(set(names)) != len(names):
        raise L2BGError(f"tasks= names a task twice ({list(names)}); list each task once")
    if isinstance(x, Mapping):
        missing = [t for t in names if t not in x]
        if missing:
            raise L2BGError(
                f"per-task inputs miss tasks {missing}; add x[task] for each or "
                "leave them out of tasks="
            )
        extra = [t for t in x if t not in set(names)]
        if extra:
            raise L2BGError(
                f"per-task inputs for {extra} which are not in tasks=; drop them or "
                "add them to tasks="
            )
    return names


def forward_all(
    net: JointNet,
    x: Tensor | Mapping[str, Tensor],
    tasks: Iterable[str] | None = None,
    return_activations: bool | Iterable[str] = False,
    backend: str | None = None,
    cuda_graph: bool = False,
):
    """See :meth:`l2bg.net.jointnet.JointNet.forward_all`."""
    per_task = isinstance(x, Mapping)
    names = _resolve_tasks(net, x, tasks)
    if return_activations is True:
        capture = names
    elif return_activations is False or return_activations is None:
        capture = ()
    else:
        wanted = (
            [return_activations]
            if isinstance(return_activations, str)
            else list(return_activations)
        )
        for t in wanted:
            if t not in names:
                raise L2BGError(
                    f"return_activations names {t!r}, which is not among the tasks "
                    f"run {list(names)}; add it to tasks="
                )
        capture = tuple(t for t in names if t in set(wanted))
    if backend is None:
        backend = default_backend()
    if backend not in BACKENDS:
        raise L2BGError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")

    if not names:
        return ({}, {}) if return_activations is not False else {}
    if backend == "loop":
        plan = None
        ref = next(iter(net.parameters()), None)
    else:
        if backend == "native" and _extension() is None:
            from l2bg.base.native import native_status

            raise L2BGError(
                f"backend='native' is unavailable ({native_status()[1]}); build it with "
                "pip install --no-build-isolation -e . or use backend='reference'"
            )
        plan = get_plan(net, names, per_task, capture)
        ref = plan.ref
    view = net.view()
    shape = view.input_shape
    if per_task:
        inputs = [_check_input(view.name, x[t], f"input of task {t!r}", shape, ref)
                  for t in names]
    else:
        inputs = [_check_input(view.name, x, "input", shape, ref)]

    if plan is None:
        if cuda_graph:
            raise L2BGError("cuda_graph=True needs backend='native' or 'reference'")
        logits, acts = {}, {}
        for i, t in enumerate(names):
            xt = inputs[i] if per_task else inputs[0]
            if t in capture:
                logits[t], acts[t] = net(xt, t, return_activations=True)
            else:
                logits[t] = net(xt, t)
        return (logits, acts) if return_activations is not False else logits

    runner = run_native if backend == "native" else run_reference
    if cuda_graph:
        from l2bg.net import cuda_graph as graphs

        outs = graphs.replay(net, plan, backend, lambda xs: runner(plan, xs), inputs)
    else:
        outs = runner(plan, inputs)
    n, s = len(names), plan.num_slots
    logits = dict(zip(names, outs[:n], strict=True))
    if return_activations is False:
        return logits
    acts = {t: list(outs[n + r * s : n + (r + 1) * s]) for r, t in enumerate(capture)}
    return logits, acts


__all__ = [
    "BACKENDS",
    "Plan",
    "compile_plan_reference",
    "decode_steps",
    "default_backend",
    "feature_shape",
    "forward_all",
    "get_plan",
    "run_native",
    "run_reference",
]
