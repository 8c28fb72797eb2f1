"""Plans: the compiled form of a JointNet's topology that the executors run.

The routes of the chosen tasks become a flat int program (format in ``csrc/l2bg.h``, mirrored by
the constants below): shared input (one tensor for every task) makes the routes a prefix tree in
which a node reached by the same upstream path is evaluated once; per-task inputs ({task: x_t})
run every node once on the concatenated rows of all tasks routed through it. Buffers are
released after their last consumer. The C++ planner (``torch.ops.l2bg.plan``) and
:func:`compile_plan_reference` (its pure-PyTorch spec) produce the same program; a plan is built
from the JointNet's public read-only view (:meth:`l2bg.net.jointnet.JointNet.view`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from l2bg.base.errors import L2BGError
from l2bg.base.native import load_extension
from l2bg.net.kinds import (
    _PARAMS,
    _encode_slot,
    _node_signature,
    _sources,
    _stateful,
)

if TYPE_CHECKING:
    from l2bg.net.graph import GraphView

__all__ = ["EVAL", "H_BUFFERS", "RELEASE", "Plan", "build_plan", "compile_plan_reference",
           "decode_steps"]

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
    node_layers: list[list[int] | None] = field(default_factory=list)
    """With ``native_error`` (a slot the one-shot C++ program cannot run): per node, its own
    one-slot program (``[1, *slot program]``) when C++ knows its layers, else None (it runs its
    PyTorch module); the plan's steps stay the same (:func:`l2bg.net.executor.run_native`)."""
    node_fargs: list[float] = field(default_factory=list)
    node_params: list[tuple[int, int]] = field(default_factory=list)
    """Per node: (offset, count) of its entries in :attr:`params`."""
    view_base: list[int | None] | None = None
    """Per node: for a virtual node (a node with overlays) the index of its node in the plan
    (-1: not in it), else None (set by :func:`l2bg.net.executor.get_plan`)."""
    view_bases: set[int] = field(default_factory=set)
    view_modules: list[nn.Module] = field(default_factory=list)
    """The nodes and overlays the virtual nodes read (their tensors are appended to
    :attr:`sources`, after every node's and head's)."""

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


def build_plan(
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
    node_fargs: list[float] = []
    node_layers: list[list[int] | None] = []
    if native_error is not None:  # mixed: C++ per node where it knows the layers, else PyTorch
        for m in modules:
            try:
                node_layers.append([1, *_encode_slot(m, node_fargs)])
            except L2BGError:
                node_layers.append(None)

    ext = load_extension()
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
    node_params: list[tuple[int, int]] = []
    for k, m in enumerate([*modules, *(h for h in heads if h is not None)]):
        sub = list(m) if isinstance(m, nn.Sequential) else [m]
        first = len(sources)
        for layer in sub:
            sources += _sources(layer)
        if k < len(modules):
            stateful.append([x for layer in sub for x in _stateful(layer)])
            node_params.append((first, len(sources) - first))
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
        node_layers=node_layers,
        node_fargs=node_fargs,
        node_params=node_params,
    )
