"""JointNet: one shared multi-task network holding a task-net for every learned task.

Nodes are copies of a template's slots. Each task has a route (one node per slot) and, for
templates with per-task heads, its own head. ``bind`` makes a new task share another task's route;
``grow`` gives the task new nodes at chosen slots (copies of the bound task's nodes, or fresh) and
leaves every other task's route untouched. Shared nodes are stored once.

Finer growth and task batch norm live in per-(task, slot) overlays (:mod:`l2bg.net.overlay`): a
task's *stack* at a slot lists the overlays applied over its node (a bound task shares its
target's, as it shares nodes). ``grow(groups=..., mode=...)`` and ``task_bn`` create them.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from l2bg.base.errors import L2BGError, ParamError, one_line
from l2bg.base.fileio import atomic_write, write_json
from l2bg.net import growth
from l2bg.net.graph import GraphView
from l2bg.net.overlay import is_bn
from l2bg.net.templates import Template
from l2bg.net.topology import (
    _TASK_NAME,
    FORMAT,
    FORMAT_VERSION,
    TOPOLOGY_FILE,
    WEIGHTS_FILE,
    _build_template,
    _node_index,
    check_topology,
)


class JointNet(nn.Module):
    """A DAG of layer nodes shared between task-nets; see the module docstring."""

    def __init__(self, template: Template, *, task_bn: bool = False) -> None:
        super().__init__()
        if not isinstance(task_bn, bool):
            raise L2BGError(f"task_bn must be True or False, got {task_bn!r}")
        self.template = template
        self.task_bn = task_bn
        self.nodes = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.overlays = nn.ModuleDict()
        self._stack: dict[str, list[list[str]]] = {}
        self._views: dict[str, Any] = {}
        self._node_slot: dict[str, int] = {}
        self._node_owner: dict[str, str] = {}
        self._routes: dict[str, list[str]] = {}
        self._num_classes: dict[str, int | None] = {}
        self._bound_to: dict[str, str | None] = {}
        self._grown: dict[str, list[int]] = {}
        self._next_node = [0] * len(template.slots)
        self.version = 0

    # ----------------------------------------------------------------- topology
    @property
    def tasks(self) -> list[str]:
        """Learned tasks in the order they were added."""
        return list(self._routes)

    def view(self) -> GraphView:
        """A read-only :class:`GraphView` of the current topology. A task whose stack at a slot
        is not empty runs a *virtual node* there (id ``<node>+<overlay>+...``, module a
        :class:`~l2bg.net.overlay.SlotView`); tasks with the same node and stack share it, so
        the plan deduplicates them as it does nodes."""
        heads = dict(self.heads.items()) if self.template.per_task_heads else None
        nodes, node_slot = dict(self.nodes.items()), dict(self._node_slot)
        routes = {}
        for t in self._routes:
            row = []
            for s in range(len(self.template.slots)):
                nid, module = growth.slot_module(self, t, s)
                nodes[nid], node_slot[nid] = module, s
                row.append(nid)
            routes[t] = tuple(row)
        return GraphView(
            version=self.version, tasks=tuple(self._routes),
            routes=MappingProxyType(routes),
            nodes=MappingProxyType(nodes),
            node_slot=MappingProxyType(node_slot),
            heads=None if heads is None else MappingProxyType(heads),
            num_slots=len(self.template.slots), input_shape=self.template.input_shape,
            name=self.template.name)

    def routes(self) -> dict[str, list[str]]:
        """Task → node id per slot (a copy; edit the topology through bind/grow)."""
        return {t: list(r) for t, r in self._routes.items()}

    def node_slot(self, node: str) -> int:
        return self._node_slot[node]

    def node_owner(self, node: str) -> str:
        """The task a node was created for; other tasks routed through it are bound to it."""
        return self._node_owner[node]

    def bound_to(self, task: str) -> str | None:
        return self._bound_to[self._check_task(task)]

    def grown_slots(self, task: str) -> list[int]:
        """Slots where ``task`` grew a whole node of its own (mode copy)."""
        return list(self._grown[self._check_task(task)])

    def unit_channels(self, slot: int | str) -> int | None:
        """C, the output channels of the slot's main layer (the last linear/conv2d of a
        primitive chain whose later layers are all channel-wise, or conv2 of a basic block);
        None when the slot cannot be cut (it is then one whole unit)."""
        chain = growth.slot_chain(self, self.template.slot_index(slot))
        return None if chain is None else chain.channels

    def grown_units(self, task: str) -> list[tuple[int, int | None]]:
        """Units ``task`` grew itself, as (slot, group); group None is the whole slot."""
        out = [(s, None) for s in self._grown[self._check_task(task)]]
        for s in range(len(self.template.slots)):
            key = growth.overlay_key(self, s, task)
            if key in self._stack[task][s]:
                out += [(s, g) for g in self.overlays[key].units()]
        return sorted(out, key=lambda u: (u[0], -1 if u[1] is None else u[1]))

    def grow_mode(self, task: str, slot: int | str) -> str | None:
        """How ``task`` grew ``slot``: 'copy' (own node or own rows), 'adapt', or None."""
        s = self.template.slot_index(slot)
        if s in self._grown[self._check_task(task)]:
            return "copy"
        key = growth.overlay_key(self, s, task)
        return self.overlays[key].mode() if key in self._stack[task][s] else None

    def num_classes(self, task: str) -> int | None:
        return self._num_classes[self._check_task(task)]

    def add_task(self, task: str, num_classes: int | None = None) -> None:
        """Add a task with fresh nodes at every slot (its own independent task-net)."""
        self._new_task(task, num_classes)
        self._routes[task] = [self._new_node(s, task) for s in range(len(self.template.slots))]
        self._bound_to[task] = None
        self._grown[task] = []
        self._stack[task] = [[] for _ in self.template.slots]
        self._touch()

    def bind(self, task: str, to: str, num_classes: int | None = None) -> None:
        """Add ``task`` sharing the whole route of learned task ``to`` (fresh per-task head)."""
        self._check_task(to, what="bind target")
        self._new_task(task, num_classes)
        self._routes[task] = list(self._routes[to])
        self._bound_to[task] = to
        self._grown[task] = []
        self._stack[task] = [list(k) for k in self._stack[to]]
        growth.bind_bn(self, task)
        self._touch()

    def grow(self, task: str, slots: Iterable[int | str] = (), init: str = "copy", *,
             groups: dict[int | str, Iterable[int]] | None = None,
             num_groups: int | None = None, mode: str = "copy", rank: int = 8) -> list[int]:
        """Give ``task`` its own units; returns the slot indices touched.

        ``slots`` grows whole slots: ``mode='copy'`` gives new nodes, copies of what the task
        runs there (forward transfer from the bound task) or fresh ones (``init``);
        ``mode='adapt'`` keeps the node shared and adds a zero-initialised adapter (1x1 conv /
        rank-``rank`` linear) on its main layer. ``groups={slot: [g, ...]}`` with
        ``num_groups=G`` grows only those channel groups (``channel_groups(unit_channels(slot),
        G)``): own copies of their rows (copy) or adapters on just those channels (adapt). A slot
        is named in ``slots`` or ``groups``, not both; it grows in one mode per task. An adapter
        never has more parameters than a copy of its unit (``rank`` is lowered to fit)."""
        return growth.grow(self, task, slots, init, groups, num_groups, mode, rank)

    def _new_task(self, task: str, num_classes: int | None) -> None:
        if not isinstance(task, str) or not _TASK_NAME.match(task):
            raise L2BGError(f"task name {task!r} must use only letters, digits, '_' and '-'")
        if task in self._routes:
            raise L2BGError(f"task {task!r} is already in the JointNet; choose a new name")
        if self.template.per_task_heads:
            if num_classes is None or int(num_classes) < 1:
                raise L2BGError(f"task {task!r} needs num_classes >= 1 for its per-task head")
            self.heads[task] = self.template.build_head(int(num_classes))
        self._num_classes[task] = None if num_classes is None else int(num_classes)

    def _first_free(self, slot: int, floor: int) -> int:
        """The next node index at ``slot``: one past the highest index present, with ``floor``
        (a counter) only as a lower bound, so an id in use is never handed out again."""
        present = [_node_index(n) for n in self.nodes if self._node_slot[n] == slot]
        return max(floor, 1 + max(present, default=-1))

    def _new_node(self, slot: int, owner: str, source: nn.Module | None = None) -> str:
        k = self._first_free(slot, self._next_node[slot])
        node_id = f"{self.template.slots[slot].name}_{k}"
        self._next_node[slot] = k + 1
        module = copy.deepcopy(source) if source is not None else self.template.slots[slot].build()
        if source is not None:
            module.train(source.training)
        ref = next(iter(self.parameters()), None)
        if ref is not None and source is None:
            module = module.to(ref.device)
        self.nodes[node_id] = module
        self._node_slot[node_id] = slot
        self._node_owner[node_id] = owner
        return node_id

    def _prune(self) -> None:
        used = {n for r in self._routes.values() for n in r}
        for n in [n for n in self.nodes if n not in used]:
            del self.nodes[n]
            del self._node_slot[n]
            del self._node_owner[n]
        stacked = {k for st in self._stack.values() for keys in st for k in keys}
        for k in [k for k in self.overlays if k not in stacked]:
            del self.overlays[k]

    def _touch(self) -> None:
        self.version += 1

    def _check_task(self, task: str, what: str = "task") -> str:
        if task not in self._routes:
            raise L2BGError(f"unknown {what} {task!r}; learned tasks: {self.tasks or 'none yet'}")
        return task

    # ----------------------------------------------------------------- compute
    def forward(self, x: Tensor, task: str, return_activations: bool = False):
        """Logits of ``task`` on ``x``; with ``return_activations`` also the output of every slot
        (post-activation, flattened per sample, in slot order)."""
        self._check_task(task)
        acts = []
        for s in range(len(self.template.slots)):
            x = growth.slot_module(self, task, s)[1](x)
            if return_activations:
                acts.append(x.flatten(1))
        if self.template.per_task_heads:
            x = self.heads[task](x)
        return (x, acts) if return_activations else x

    def forward_all(self, x: Tensor | dict[str, Tensor], tasks: Iterable[str] | None = None,
                    return_activations: bool | Iterable[str] = False,
                    backend: str | None = None, cuda_graph: bool = False):
        """Logits of many tasks in one pass that computes each shared node once.

        ``x`` is one tensor fed to every task (a node reached by the same upstream path runs
        once) or ``{task: x_t}`` (each node runs once on the rows of all tasks routed through
        it). ``tasks`` defaults to every task (shared input) or the dict's keys. Returns
        ``{task: logits}``; with ``return_activations`` (True, or the tasks to capture) also
        ``{task: [activation per slot]}`` as :meth:`forward` gives them. ``backend``: 'native'
        (C++, the default when built), 'reference' (pure PyTorch, same plan) or 'loop' (one
        :meth:`forward` per task). ``cuda_graph`` replays a CUDA graph while shapes and topology
        stay the same (CUDA, no grad, eval mode; outputs are overwritten by the next replay).
        Equal to the loop in eval mode; in train mode a shared node's batch-norm statistics and
        dropout mask are updated/drawn once for all its rows (see :mod:`l2bg.net.executor`)."""
        from l2bg.net.executor import forward_all

        return forward_all(self, x, tasks=tasks, return_activations=return_activations,
                           backend=backend, cuda_graph=cuda_graph)

    # ----------------------------------------------------------------- parameters
    def num_parameters(self, task: str | None = None) -> int:
        """Unique parameters of the whole JointNet (shared nodes once, heads included), or of one
        task-net."""
        if task is not None:
            return sum(p.numel() for p in self.task_parameters(task))
        reached = {id(p): p for t in self._routes for p in self.task_parameters(t)}
        return sum(p.numel() for p in reached.values())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters ``task``'s forward reads, each once: its route's nodes (less their batch
        norms where its stack has its own), the overlays of its stacks, its head. A grown group
        adds its rows; the node's rows it replaces stay (other tasks read them)."""
        route = self._routes[self._check_task(task)]
        out: dict[int, nn.Parameter] = {}
        for s, n in enumerate(route):
            stack = growth.stack_of(self, task, s)
            bn = [o for o in stack if o.bn_paths]
            skip = set()
            if bn:  # the last batch norms of the stack replace the node's and earlier ones
                skip = {id(p) for m in [*self.nodes[n].modules(), *(o.bn for o in bn[:-1])]
                        if is_bn(m) or isinstance(m, nn.ModuleDict) for p in m.parameters()}
            for m in [self.nodes[n], *stack]:
                out.update((id(p), p) for p in m.parameters() if id(p) not in skip)
        if self.template.per_task_heads:
            out.update((id(p), p) for p in self.heads[task].parameters())
        return list(out.values())

    def param_groups(self, task: str, lr: float, shared_lr_scale: float = 0.1
                     ) -> list[dict[str, Any]]:
        """Optimizer groups for training ``task``: its own (new or grown) nodes and head at ``lr``,
        nodes bound from earlier tasks at ``lr * shared_lr_scale``; scale 0 leaves them out, so
        they stay exactly as they are."""
        if shared_lr_scale < 0:
            raise ParamError(f"{{shared_lr_scale}} must be >= 0, got {shared_lr_scale}",
                             "shared_lr_scale")
        route = self._routes[self._check_task(task)]
        mine = {id(p) for n in route if self._node_owner[n] == task
                for p in self.nodes[n].parameters()}
        mine |= {id(p) for k in self.overlays if self.overlays[k].owner == task
                 for p in self.overlays[k].parameters()}
        if self.template.per_task_heads:
            mine |= {id(p) for p in self.heads[task].parameters()}
        own, bound = [], []
        for p in self.task_parameters(task):
            (own if id(p) in mine else bound).append(p)
        groups = []
        if own:
            groups.append({"params": own, "lr": lr, "name": "own"})
        if bound and shared_lr_scale > 0:
            groups.append({"params": bound, "lr": lr * shared_lr_scale, "name": "bound"})
        return groups

    # ----------------------------------------------------------------- save / load
    def topology(self) -> dict[str, Any]:
        """The JSON-serialisable graph: template, nodes, and every task's route and decisions."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "template": self.template.to_dict(),
            "task_bn": self.task_bn,
            "nodes": [{"id": n, "slot": self._node_slot[n], "owner": self._node_owner[n]}
                      for n in self.nodes],
            "next_node": list(self._next_node),
            "tasks": [{"name": t, "route": self._routes[t], "num_classes": self._num_classes[t],
                       "bound_to": self._bound_to[t], "grown_slots": self._grown[t],
                       "stack": [[self.overlays[k].owner for k in keys]
                                 for keys in self._stack[t]]}
                      for t in self._routes],
            "overlays": [o.spec() for o in self.overlays.values()],
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``jointnet.safetensors`` (weights) and ``jointnet.json`` (topology); no pickle."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(state, str(p)))
        write_json(directory / TOPOLOGY_FILE, self.topology())
        return directory

    @classmethod
    def from_topology(cls, topo: Any, where: str = "topology", template: Any = None
                      ) -> JointNet:
        """An untrained JointNet with the given topology (weights freshly initialised), checked
        against the schema of its ``format_version`` (:func:`check_topology`); ``where`` names
        the source in errors. ``template``: the user template (or its factory) a topology saved
        from user modules needs; it must match the saved one."""
        template = _build_template(topo, where, template)
        spec = check_topology(topo, template, where)
        net = cls(template, task_bn=spec.get("task_bn", False))
        for node in spec["nodes"]:
            nid, s = node["id"], node["slot"]
            net.nodes[nid] = net.template.slots[s].build()
            net._node_slot[nid] = s
            net._node_owner[nid] = node["owner"]
        for t in spec["tasks"]:
            name = t["name"]
            try:
                net._new_task(name, t["num_classes"])
            except L2BGError as exc:  # a head beyond the bounds (l2bg.base.bounds)
                raise L2BGError(f"{where}: task {name!r}: {exc}") from None
            net._routes[name] = list(t["route"])
            net._bound_to[name] = t["bound_to"]
            net._grown[name] = list(t["grown_slots"])
            net._stack[name] = [[growth.overlay_key(net, s, o) for o in owners]
                                for s, owners in enumerate(t.get("stack") or
                                                           [[] for _ in net.template.slots])]
        for o in spec.get("overlays", []):
            net.overlays[growth.overlay_key(net, o["slot"], o["owner"])] = growth.build_overlay(
                net, o, where)
        nslots = len(net.template.slots)
        stored = spec.get("next_node") or [0] * nslots
        for s in range(nslots):  # the stored counter is a lower bound; ids in use come first
            net._next_node[s] = net._first_free(s, stored[s])
        net.version = 1
        return net

    @classmethod
    def load(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu",
             template: Any = None) -> JointNet:
        """Load a JointNet saved with :meth:`save`; topology and weights must agree exactly. A
        JointNet of a user template (:func:`l2bg.net.modules.module_template`) loads only with
        ``template=`` that template or the factory that makes it."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        files = [directory / TOPOLOGY_FILE, directory / WEIGHTS_FILE]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise L2BGError(f"cannot load JointNet: missing {', '.join(missing)}; "
                            "save one with JointNet.save(dir)")
        try:
            topo = json.loads(files[0].read_bytes())
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, deep nesting
            raise L2BGError(f"{files[0]} is not valid JSON ({one_line(exc, 160)}); re-save the "
                            "JointNet") from exc
        except OSError as exc:
            raise L2BGError(f"cannot read {files[0]} ({exc.strerror or exc})") from exc
        with torch.device("meta"):  # shapes only: a hand-edited size allocates nothing
            expected = cls.from_topology(topo, str(files[0]), template).state_dict()
        try:
            state = load_file(str(files[1]), device=str(map_location))
        except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
            raise L2BGError(f"{files[1]} is not a readable safetensors file "
                            f"({one_line(exc, 160)}); re-save the JointNet") from exc
        missing_k = sorted(set(expected) - set(state))
        extra_k = sorted(set(state) - set(expected))
        bad = [k for k in expected if k in state and (state[k].shape != expected[k].shape
                                                     or state[k].dtype != expected[k].dtype)]
        if missing_k or extra_k or bad:
            parts = [f"{label}: {keys[:3]}{'…' if len(keys) > 3 else ''}"
                     for label, keys in (("missing", missing_k), ("unexpected", extra_k),
                                         ("shape or dtype mismatch", bad)) if keys]
            raise L2BGError(f"{TOPOLOGY_FILE} and {WEIGHTS_FILE} in {directory} disagree "
                            f"({'; '.join(parts)}); save both from the same JointNet")
        net = cls.from_topology(topo, str(files[0]), template)
        net.load_state_dict(state)
        return net.to(map_location)

    def extra_repr(self) -> str:
        return (f"template={self.template.name}, tasks={len(self._routes)}, "
                f"nodes={len(self.nodes)}, params={self.num_parameters()}")


def copy_task_net(src: JointNet, task: str, dst: JointNet, as_task: str | None = None,
                  num_classes: int | None = None) -> None:
    """Add ``task``'s task-net from ``src`` to ``dst`` as a new task with its own nodes (weights
    copied): how a cached independent net becomes a task-net of a JointNet."""
    name = as_task or task
    dst.add_task(name, num_classes if num_classes is not None else src.num_classes(task))
    for s, node in enumerate(src.routes()[task]):
        dst.nodes[dst.routes()[name][s]].load_state_dict(src.nodes[node].state_dict())
    if dst.template.per_task_heads:
        dst.heads[name].load_state_dict(src.heads[task].state_dict())


__all__: Sequence[str] = ["GraphView", "JointNet", "check_topology", "copy_task_net"]
