"""Run many task-nets of a JointNet in one pass that computes every shared layer once.

``JointNet.forward_all`` lands here. The topology of the chosen tasks is compiled into a *plan*
(a flat int program; format in ``csrc/l2bg.h``):

- shared input (one tensor for every task): the routes form a prefix tree, and a node reached by
  the same upstream path is evaluated once for all tasks below it;
- per-task inputs ({task: x_t}): every node in use runs once on the concatenated rows of all the
  tasks routed through it.

Buffers are released after their last consumer. Plans are cached per JointNet and rebuilt only
when ``net.version`` changes (add_task / bind / grow).

Backends: ``native`` runs the plan in C++ (``torch.ops.l2bg.run_plan``, planned by
``torch.ops.l2bg.plan``); ``reference`` is this module's pure-PyTorch copy of the same router and
executor (calling the JointNet's own modules); ``loop`` is the naive per-task ``net(x, task)``
baseline. Default: native when the extension loads, else reference.

Semantics: in eval mode every backend equals the loop (up to float rounding of batched GEMMs).
In train mode a deduplicated node runs once: batch norm normalises over, and updates its running
statistics once from, all rows it sees, and dropout draws one mask for them, whereas the loop
does one update/draw per task. This is by design (it is what sharing the node means).

Edit the topology only through add_task/bind/grow: the cache keys on ``net.version`` and holds
the plan's node modules; parameters are looked up in them on every run (never copied).

CUDA: ``cuda_graph=True`` captures the run in a CUDA graph and replays it while inputs,
topology, parameter storages and inference mode stay the same (``l2bg.cuda_graph``).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from l2bg._ext import load_extension
from l2bg.errors import L2BGError

if TYPE_CHECKING:
    from l2bg.jointnet import GraphView, JointNet

BACKENDS = ("native", "reference", "loop")

# Plan format (keep in sync with csrc/l2bg.h).
MAGIC = 0x6C326267
FORMAT = 1
(
    H_MAGIC,
    H_FORMAT,
    H_PER_TASK,
    H_TASKS,
    H_SLOTS,
    H_NODES,
    H_BUFFERS,
    H_OUTPUTS,
    H_EVALS,
    H_PEAK_LIVE,
    H_STEPS,
    H_NODES_AT,
    H_HEADS_AT,
    H_LAYOUTS_AT,
    H_STEPS_AT,
    HEADER_SIZE,
) = range(16)
EVAL, RELEASE, CAPTURE, HEAD, OUTPUT = 1, 2, 3, 4, 5

# Layer kinds of a slot program (csrc/l2bg.h) and the parameter entries each reads.
LINEAR, CONV2D, RELU, MAX_POOL2D, FLATTEN, BATCH_NORM, DROPOUT = range(7)
_PARAMS = {
    LINEAR: ("weight", "bias"),
    CONV2D: ("weight", "bias"),
    BATCH_NORM: ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"),
}


# --------------------------------------------------------------------------------------- router
def compile_plan_reference(
    routes: Sequence[Sequence[int]],
    slot_params: Sequence[int],
    head_params: int,
    per_task: bool,
    capture: Sequence[int] = (),
) -> list[int]:
    """Pure-Python router: the same program as ``torch.ops.l2bg.plan`` (see csrc/plan.cpp)."""
    n_tasks, n_slots = len(routes), len(slot_params)
    if n_tasks < 1 or any(len(r) != n_slots for r in routes):
        raise L2BGError(f"routes must be {n_slots} node indices per task, for >= 1 task")
    n_nodes = 1 + max(max(r) for r in routes)
    node_slot = [-1] * n_nodes
    for r in routes:
        for s, k in enumerate(r):
            if k < 0 or node_slot[k] not in (-1, s):
                raise L2BGError(f"node {k} is negative or appears at two slots; renumber nodes")
            node_slot[k] = s
    if -1 in node_slot:
        raise L2BGError("node indices must be dense from 0; renumber nodes")
    if list(capture) != sorted(set(capture)) or any(not 0 <= t < n_tasks for t in capture):
        raise L2BGError("capture must list ascending task indices below the number of tasks")
    rank = {t: i for i, t in enumerate(capture)}
    layouts: list[list[int]] = []
    steps: list[int] = []
    stats = {"live": 0, "peak": 0, "evals": 0, "steps": 0}

    def new_buffer(layout: list[int]) -> int:
        layouts.append(layout)
        stats["live"] += 1
        stats["peak"] = max(stats["peak"], stats["live"])
        return len(layouts) - 1

    def emit(*op: int) -> None:
        steps.extend(op)
        stats["steps"] += 1

    def release(b: int) -> None:
        emit(RELEASE, b)
        stats["live"] -= 1

    def evaluate(node: int, out: int, segments: list[list[int]]) -> None:
        emit(EVAL, node, out, len(segments), *(v for seg in segments for v in seg))
        stats["evals"] += 1

    def emit_outputs(s: int, out: int, tasks: list[int]) -> None:
        for j, t in enumerate(tasks):
            if t in rank:
                emit(CAPTURE, n_tasks + rank[t] * n_slots + s, out, j if per_task else 0)
        if s == n_slots - 1:
            for j, t in enumerate(tasks):
                emit(HEAD if head_params > 0 else OUTPUT, t, out, j if per_task else 0)

    def group(tasks: list[int], s: int) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for t in tasks:
            groups.setdefault(routes[t][s], []).append(t)
        return groups

    def visit(buffer: int, s: int, tasks: list[int]) -> None:
        children = group(tasks, s)
        outs = []
        for node, sub in children.items():
            out = new_buffer([])
            evaluate(node, out, [[buffer, 0, 0]])
            emit_outputs(s, out, sub)
            if s == n_slots - 1:
                release(out)
            outs.append(out)
        release(buffer)
        if s < n_slots - 1:
            for out, sub in zip(outs, children.values(), strict=True):
                visit(out, s + 1, sub)

    if not per_task:
        visit(new_buffer([]), 0, list(range(n_tasks)))
    else:
        cur = [(new_buffer([t]), 0) for t in range(n_tasks)]
        for s in range(n_slots):
            groups = list(group(list(range(n_tasks)), s).items())
            last_use = {}
            for i, (_, members) in enumerate(groups):
                for t in members:
                    last_use[cur[t][0]] = i
            nxt = list(cur)
            for i, (node, members) in enumerate(groups):
                members.sort(key=lambda t, s=s: (routes[t][s + 1 :], cur[t]))
                out = new_buffer(list(members))
                segments: list[list[int]] = []
                for t in members:
                    b, blk = cur[t]
                    if segments and segments[-1][0] == b and sum(segments[-1][1:]) == blk:
                        segments[-1][2] += 1
                    else:
                        segments.append([b, blk, 1])
                evaluate(node, out, segments)
                for j, t in enumerate(members):
                    nxt[t] = (out, j)
                emit_outputs(s, out, members)
                for b in sorted(b for b, last in last_use.items() if last == i):
                    release(b)
                if s == n_slots - 1:
                    release(out)
            cur = nxt

    program = [0] * HEADER_SIZE
    program[H_MAGIC:H_NODES_AT] = [
        MAGIC,
        FORMAT,
        int(per_task),
        n_tasks,
        n_slots,
        n_nodes,
        len(layouts),
        n_tasks + len(capture) * n_slots,
        stats["evals"],
        stats["peak"],
        stats["steps"],
    ]
    program[H_NODES_AT] = len(program)
    offset = 0
    for k in range(n_nodes):
        program += [node_slot[k], offset]
        offset += slot_params[node_slot[k]]
    program[H_HEADS_AT] = len(program)
    program += [offset + t * head_params if head_params > 0 else -1 for t in range(n_tasks)]
    program[H_LAYOUTS_AT] = len(program)
    for layout in layouts:
        program += [len(layout), *layout]
    program[H_STEPS_AT] = len(program)
    return program + steps


def decode_steps(program: Sequence[int]) -> list[tuple]:
    """The steps of a program as tuples: (EVAL, node, out, [(buffer, first, count)...]),
    (RELEASE, buffer), (CAPTURE|HEAD|OUTPUT, index, buffer, block)."""
    i, steps = program[H_STEPS_AT], []
    for _ in range(program[H_STEPS]):
        op = program[i]
        if op == EVAL:
            n = program[i + 3]
            segs = [tuple(program[i + 4 + 3 * j : i + 7 + 3 * j]) for j in range(n)]
            steps.append((EVAL, program[i + 1], program[i + 2], segs))
            i += 4 + 3 * n
        elif op == RELEASE:
            steps.append((RELEASE, program[i + 1]))
            i += 2
        else:
            steps.append(tuple(program[i : i + 4]))
            i += 4
    return steps


# ----------------------------------------------------------------------------------------- plan
@dataclass(eq=False)
class Plan:
    """A compiled plan of one JointNet topology (``version``) for ``tasks``, with everything a
    backend needs to run it: the node modules and their parameters (references, not copies)."""

    program: list[int]
    version: int
    tasks: tuple[str, ...]
    per_task: bool
    capture: tuple[str, ...]
    node_ids: list[str]
    planner: str
    layers: list[int] = field(default_factory=list)
    fargs: list[float] = field(default_factory=list)
    sources: list[tuple[dict, str]] = field(default_factory=list)
    modules: list[nn.Module] = field(default_factory=list)
    heads: list[nn.Module | None] = field(default_factory=list)
    stateful: list[list[nn.Module]] = field(default_factory=list)
    steps: list[tuple] = field(default_factory=list)
    native_error: str | None = None

    @property
    def node_evals(self) -> int:
        """Node evaluations one run performs (heads not counted)."""
        return self.program[H_EVALS]

    @property
    def num_buffers(self) -> int:
        return self.program[H_BUFFERS]

    @property
    def peak_live_buffers(self) -> int:
        """Most buffers (inputs included) alive at once."""
        return self.program[H_PEAK_LIVE]

    @property
    def num_slots(self) -> int:
        return self.program[H_SLOTS]

    def __repr__(self) -> str:
        mode = "per-task" if self.per_task else "shared"
        return (
            f"Plan({mode}, tasks={len(self.tasks)}, node_evals={self.node_evals}, "
            f"buffers={self.num_buffers}, peak_live={self.peak_live_buffers}, "
            f"version={self.version}, planner={self.planner})"
        )

    @property
    def params(self) -> list[Tensor | None]:
        """The parameters and buffers the executor reads, looked up now in the modules' own
        ``_parameters``/``_buffers`` dicts: reassigned parameters are never stale, nothing is
        copied."""
        return [d.get(name) for d, name in self.sources]

    @property
    def ref(self) -> Tensor | None:
        """A parameter: the dtype and device inputs must have."""
        return next((p for d, name in self.sources if (p := d.get(name)) is not None), None)

    def flags(self) -> list[int]:
        """Training flags of the stateful layers (batch norm, dropout) per node, read now."""
        if not any(self.stateful):
            return []
        return [sum(int(m.training) << j for j, m in enumerate(mods)) for mods in self.stateful]


def _layer_kind(m: nn.Module) -> int | None:
    if type(m) is nn.Linear:
        return LINEAR
    if type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str):
        return CONV2D
    if type(m) is nn.ReLU:
        return RELU
    if type(m) is nn.MaxPool2d and not m.return_indices:
        return MAX_POOL2D
    if type(m) is nn.Flatten:
        return FLATTEN
    if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
        return BATCH_NORM
    if type(m) is nn.Dropout:
        return DROPOUT
    return None


def _pair(v: int | Sequence[int]) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(v[0]), int(v[1])]


def _encode_slot(node: nn.Module, fargs: list[float]) -> list[int]:
    """The slot program of one node (kinds and int args); floats go to ``fargs``."""
    layers = list(node) if isinstance(node, nn.Sequential) else [node]
    out = [len(layers)]
    for m in layers:
        kind = _layer_kind(m)
        if kind is None:
            raise L2BGError(f"the native executor cannot run layer {m!r}; use backend='reference'")
        out.append(kind)
        if kind == CONV2D:
            out += [*_pair(m.stride), *_pair(m.padding), *_pair(m.dilation), m.groups]
        elif kind == MAX_POOL2D:
            stride = m.stride if m.stride is not None else m.kernel_size
            out += [
                *_pair(m.kernel_size),
                *_pair(stride),
                *_pair(m.padding),
                *_pair(m.dilation),
                int(m.ceil_mode),
            ]
        elif kind == FLATTEN:
            out += [m.start_dim, m.end_dim]
        elif kind == BATCH_NORM:
            out.append(len(fargs))
            fargs += [float(m.eps), -1.0 if m.momentum is None else float(m.momentum)]
        elif kind == DROPOUT:
            out.append(len(fargs))
            fargs.append(float(m.p))
    return out


def _node_signature(node: nn.Module) -> list[int]:
    layers = list(node) if isinstance(node, nn.Sequential) else [node]
    return [_layer_kind(m) if _layer_kind(m) is not None else -1 for m in layers]


def _build_plan(
    net: GraphView, tasks: tuple[str, ...], per_task: bool, capture: tuple[str, ...]
) -> Plan:
    routes_by_id = net.routes
    node_ids: list[str] = []
    index: dict[str, int] = {}
    routes = []
    for t in tasks:
        row = []
        for n in routes_by_id[t]:
            if n not in index:
                index[n] = len(node_ids)
                node_ids.append(n)
            row.append(index[n])
        routes.append(row)
    n_slots = net.num_slots
    modules = [net.nodes[n] for n in node_ids]
    heads: list[nn.Module | None] = (
        [net.heads[t] for t in tasks] if net.heads is not None else [None] * len(tasks)
    )
    capture_idx = sorted(tasks.index(t) for t in capture)

    # Slot programs from the first node at each slot; every node of a slot must match it.
    fargs: list[float] = []
    layers: list[int] = [n_slots]
    slot_params = []
    native_error = None
    first_at = {net.node_slot[n]: i for i, n in reversed(list(enumerate(node_ids)))}
    for s in range(n_slots):
        node = modules[first_at[s]]
        try:
            layers += _encode_slot(node, fargs)
        except L2BGError as exc:
            native_error = str(exc)
        sig = _node_signature(node)
        slot_params.append(sum(len(_PARAMS.get(k, ())) for k in sig))
    for n, m in zip(node_ids, modules, strict=True):
        if _node_signature(m) != _node_signature(modules[first_at[net.node_slot[n]]]):
            native_error = f"node {n!r} differs from the other nodes of its slot"
    head_params = 2 if net.heads is not None else 0

    ext = _extension()
    if ext is not None:
        program = list(
            torch.ops.l2bg.plan(
                [k for r in routes for k in r],
                n_slots,
                slot_params,
                head_params,
                per_task,
                capture_idx,
            )
        )
        planner = "native"
    else:
        program = compile_plan_reference(routes, slot_params, head_params, per_task, capture_idx)
        planner = "reference"

    sources: list[tuple[dict, str]] = []
    stateful: list[list[nn.Module]] = []
    for m in [*modules, *(h for h in heads if h is not None)]:
        sub = list(m) if isinstance(m, nn.Sequential) else [m]
        for layer in sub:
            for a in _PARAMS.get(_layer_kind(layer), ()):
                sources.append((layer._buffers if a in layer._buffers else layer._parameters, a))
        if m not in heads:
            stateful.append([x for x in sub if _layer_kind(x) in (BATCH_NORM, DROPOUT)])
    return Plan(
        program=program,
        version=net.version,
        tasks=tasks,
        per_task=per_task,
        capture=capture,
        node_ids=node_ids,
        planner=planner,
        layers=layers,
        fargs=fargs,
        sources=sources,
        modules=modules,
        heads=heads,
        stateful=stateful,
        steps=decode_steps(program),
        native_error=native_error,
    )


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
        plan = cache.plans[key] = _build_plan(view, tasks, per_task, capture)
    return plan


# ------------------------------------------------------------------------------------- backends
def _extension():
    return load_extension()


def run_native(plan: Plan, inputs: list[Tensor]) -> list[Tensor]:
    """Run a plan with the C++ executor (``torch.ops.l2bg.run_plan``)."""
    if plan.native_error is not None:
        raise L2BGError(plan.native_error)
    return torch.ops.l2bg.run_plan.default(
        plan.program, plan.layers, plan.fargs, plan.flags(), inputs, plan.params
    )


def run_reference(plan: Plan, inputs: list[Tensor]) -> list[Tensor]:
    """Run a plan in pure PyTorch with the JointNet's own modules (the spec of run_native)."""
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
    for step in plan.steps:
        op = step[0]
        if op == EVAL:
            _, node, out, segs = step
            parts = [view(*seg) for seg in segs]
            x = parts[0] if len(parts) == 1 else torch.cat(parts)
            buffers[out] = plan.modules[node](x)
        elif op == RELEASE:
            buffers[step[1]] = None
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
    """See :meth:`l2bg.jointnet.JointNet.forward_all`."""
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
            from l2bg._ext import native_status

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

    if cuda_graph:
        from l2bg import cuda_graph as graphs

        runner = run_native if backend == "native" else run_reference
        outs = graphs.replay(net, plan, backend, lambda xs: runner(plan, xs), inputs)
    elif backend == "native":
        outs = run_native(plan, inputs)
    else:
        outs = run_reference(plan, inputs)
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
