"""The read-only view of a JointNet's topology that the executor runs (:class:`GraphView`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class GraphView:
    """A read-only view of a JointNet's topology for code that runs it (the executor): the
    ``version`` (bumped by add_task/bind/grow), the tasks in order, each task's route (node id per
    slot), each node's module and slot, the per-task heads (None with a shared head slot) and
    the per-sample input shape (None if unknown). Where a task runs overlays over a node, its
    route names a virtual node ``<node>+<overlay>+...`` whose module is a
    :class:`l2bg.net.overlay.SlotView` (shared by the tasks with the same node and overlays)."""

    version: int
    tasks: tuple[str, ...]
    routes: Mapping[str, tuple[str, ...]]
    nodes: Mapping[str, nn.Module]
    node_slot: Mapping[str, int]
    heads: Mapping[str, nn.Module] | None
    num_slots: int
    input_shape: tuple[int, ...] | None
    name: str

