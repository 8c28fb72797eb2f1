"""Growing a task inside a JointNet: whole slots (new nodes), channel groups (own rows) and
adapters, and the task batch norm a bound task gets; the overlays they create
(:mod:`l2bg.net.overlay`) and how a task's slot is run (:func:`slot_module`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from l2bg.base.errors import L2BGError
from l2bg.net.overlay import (
    MODES,
    Adapter,
    Chain,
    Overlay,
    Rows,
    SlotView,
    adapter_rank,
    bn_paths,
    chain_of,
    materialize,
)
from l2bg.net.units import channel_groups

if TYPE_CHECKING:
    from l2bg.net.jointnet import JointNet


def overlay_key(net: JointNet, slot: int, owner: str) -> str:
    return f"{net.template.slots[slot].name}~{owner}"


def prototype(net: JointNet, slot: int) -> nn.Module:
    """A module of the slot's structure: a node there, else one built on the meta device."""
    for n, s in net._node_slot.items():
        if s == slot:
            return net.nodes[n]
    spec = net.template.slots[slot]
    if spec.module is not None:
        return spec.module
    with torch.device("meta"):
        return spec.build()


def slot_chain(net: JointNet, slot: int) -> Chain | None:
    return chain_of(prototype(net, slot))


def stack_of(net: JointNet, task: str, slot: int) -> list[Overlay]:
    return [net.overlays[k] for k in net._stack[task][slot]]


def slot_module(net: JointNet, task: str, slot: int) -> tuple[str, nn.Module]:
    """(id, module) that ``task`` runs at ``slot``: its node, or a :class:`SlotView` of the node
    with its overlays (id ``<node>+<overlay>+...``; tasks with the same stack share it)."""
    node = net._routes[task][slot]
    keys = net._stack[task][slot]
    if not keys:
        return node, net.nodes[node]
    vid = "+".join([node, *keys])
    cache = net._views
    if cache.get("version") != net.version:
        cache.clear()
        cache["version"] = net.version
    if vid not in cache:
        cache[vid] = SlotView(net.nodes[node], stack_of(net, task, slot),
                              chain_of(net.nodes[node]))
    return vid, cache[vid]


def own_overlay(net: JointNet, task: str, slot: int) -> Overlay:
    """``task``'s own overlay at ``slot`` (made empty and put last in its stack if missing)."""
    key = overlay_key(net, slot, task)
    if key not in net.overlays:
        net.overlays[key] = Overlay(slot, task)
    if key not in net._stack[task][slot]:
        net._stack[task][slot].append(key)
    return net.overlays[key]


def bind_bn(net: JointNet, task: str) -> None:
    """With task batch norm: give a just-bound task its own copy of the batch norms it now
    reaches at every slot (from the last overlay there that has them, else the node)."""
    if not net.task_bn:
        return
    for s, node in enumerate(net._routes[task]):
        if not bn_paths(net.nodes[node]):
            continue
        have = [o for o in stack_of(net, task, s) if o.bn_paths]
        o = own_overlay(net, task, s)
        o.set_bn(have[-1] if have else net.nodes[node])
        o.train(net.nodes[node].training)


def _check_groups(net: JointNet, groups: Any, num_groups: Any, whole: list[int]
                  ) -> dict[int, list[int]]:
    if groups is None:
        if num_groups is not None:
            raise L2BGError("grow: num_groups= needs groups={slot: [group, ...]}")
        return {}
    if not isinstance(groups, Mapping):
        raise L2BGError(f"grow: groups= must map slots to group lists, got "
                        f"{type(groups).__name__}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise L2BGError(f"grow: groups= needs num_groups=G (an integer >= 1), got "
                        f"{num_groups!r}")
    out: dict[int, list[int]] = {}
    for slot, gs in groups.items():
        s = net.template.slot_index(slot)
        if s in whole or s in out:
            raise L2BGError(f"grow: slot {net.template.slots[s].name!r} is named twice (in "
                            "slots= and groups=, or twice in groups=); name it once")
        chain = slot_chain(net, s)
        if chain is None:
            raise L2BGError(f"grow: slot {net.template.slots[s].name!r} cannot be cut into "
                            "channel groups (neither a primitive chain ending in channel-wise "
                            "layers nor a BasicBlock); grow it whole with slots=")
        channel_groups(chain.channels, num_groups)  # 1 <= G <= C
        gs = list(gs) if isinstance(gs, Iterable) and not isinstance(gs, str) else [gs]
        if not gs or any(isinstance(g, bool) or not isinstance(g, int)
                         or not 0 <= g < num_groups for g in gs):
            raise L2BGError(f"grow: groups of slot {net.template.slots[s].name!r} must be "
                            f"indices 0..{num_groups - 1}, got {gs!r}")
        out[s] = sorted(set(gs))
    return out


def grow(net: JointNet, task: str, slots: Iterable[int | str], init: str,
         groups: Mapping | None, num_groups: int | None, mode: str, rank: int) -> list[int]:
    """See :meth:`l2bg.net.jointnet.JointNet.grow`."""
    net._check_task(task)
    if init not in ("copy", "fresh"):
        raise L2BGError(f"grow init must be 'copy' or 'fresh', got {init!r}")
    if mode not in MODES:
        raise L2BGError(f"grow mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise L2BGError(f"grow: rank must be an integer >= 1, got {rank!r}")
    whole = sorted({net.template.slot_index(s) for s in slots})
    grp = _check_groups(net, groups, num_groups, whole)
    touched = sorted([*whole, *grp])
    for s in touched:
        if not net.template.slots[s].expandable:
            raise L2BGError(f"slot {net.template.slots[s].name!r} is not expandable")
    if init == "fresh" and (mode != "copy" or grp):
        raise L2BGError("grow init='fresh' makes whole new nodes; use it with mode='copy' and "
                        "slots=, not groups= or mode='adapt'")
    for s in touched:  # every check before anything changes
        name = net.template.slots[s].name
        o = net.overlays[overlay_key(net, s, task)] if overlay_key(
            net, s, task) in net._stack[task][s] else None
        have = "copy" if s in net._grown[task] else (o.mode() if o is not None else None)
        if have is not None and have != mode and not (mode == "copy" and s in whole):
            raise L2BGError(f"grow: task {task!r} already grew slot {name!r} in mode {have!r}; "
                            "a slot grows in one mode per task")
        g = num_groups if s in grp else None
        units = None if o is None else o.rows_units if mode == "copy" else o.adapt_units
        if (s in grp or mode == "adapt") and units is not None and units[0] != g:
            raise L2BGError(f"grow: task {task!r} grew slot {name!r} with num_groups="
                            f"{units[0]} before; grow it the same way (num_groups={units[0]})")
        if mode == "adapt" and o is not None and o.rank not in (None, rank):
            raise L2BGError(f"grow: task {task!r} adapted slot {name!r} with rank={o.rank} "
                            f"before; grow it the same way (rank={o.rank})")
        chain = slot_chain(net, s)
        if mode == "adapt" and chain is None:
            raise L2BGError(f"grow: slot {name!r} cannot take an adapter (neither a "
                            "primitive chain whose main layer is linear or conv2d nor a "
                            "BasicBlock); use mode='copy'")
        if mode == "adapt":  # a unit too small for any adapter is refused here
            ranges = [(0, chain.channels)] if g is None else [
                channel_groups(chain.channels, g)[k] for k in grp[s]]
            for a, b in ranges:
                adapter_rank(chain.main_layer(prototype(net, s)), chain.kind, b - a, rank,
                             0 if net.task_bn else len(chain.bn))
        if mode == "adapt" and net._node_owner[net._routes[task][s]] == task:
            raise L2BGError(f"grow: task {task!r} owns its node at slot {name!r}; an adapter "
                            "goes on a node it shares")
    route = net._routes[task]
    if mode == "copy":
        for s in whole:
            old, keys = route[s], net._stack[task][s]
            source = None
            if init == "copy":
                source = net.nodes[old] if not keys else materialize(
                    net.nodes[old], stack_of(net, task, s), chain_of(net.nodes[old]))
            route[s] = net._new_node(s, task, source=source)
            net._stack[task][s] = []
            if s not in net._grown[task]:
                net._grown[task].append(s)
        net._grown[task].sort()
        for s, gs in grp.items():
            if s not in net._grown[task]:  # an own node holds every group already
                _grow_rows(net, task, s, num_groups, gs)
    else:
        for s in whole:
            _grow_adapters(net, task, s, None, [], rank)
        for s, gs in grp.items():
            _grow_adapters(net, task, s, num_groups, gs, rank)
    net._prune()
    net._touch()
    return touched


def _grow_rows(net: JointNet, task: str, s: int, g: int, gs: list[int]) -> None:
    node = net.nodes[net._routes[task][s]]
    chain = chain_of(node)
    o = own_overlay(net, task, s)
    have = o.rows_units[1] if o.rows_units else []
    units = sorted({*have, *gs})
    ranges = [channel_groups(chain.channels, g)[k] for k in units]
    eff = materialize(node, stack_of(net, task, s), chain, fold=False)
    rows = Rows(node, chain, ranges, with_bn=not net.task_bn)
    with torch.no_grad():
        for a, b in ranges:
            p = rows.position(a)
            rows.weight[p:p + b - a] = chain.main_layer(eff).weight[a:b]
            if rows.bias is not None:
                rows.bias[p:p + b - a] = chain.main_layer(eff).bias[a:b]
            for i, m in rows.bn.items():
                src = chain.layer(eff, i)
                for name in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(src, name, None) is not None:
                        getattr(m, name)[p:p + b - a] = getattr(src, name)[a:b]
                if src.num_batches_tracked is not None:
                    m.num_batches_tracked.copy_(src.num_batches_tracked)
    rows.train(node.training)
    o.rows, o.rows_units = rows, (g, units)


def _grow_adapters(net: JointNet, task: str, s: int, g: int | None, gs: list[int],
                   rank: int) -> None:
    node = net.nodes[net._routes[task][s]]
    chain = chain_of(node)
    o = own_overlay(net, task, s)
    main = chain.main_layer(node)
    bn_layers = 0 if net.task_bn else len(chain.bn)
    keys = ["all"] if g is None else [str(k) for k in sorted({*o.units(), *gs})]
    sizes = [chain.channels] if g is None else [
        b - a for a, b in (channel_groups(chain.channels, g)[int(k)] for k in keys)]
    adapters = {}
    for k, size in zip(keys, sizes, strict=True):
        adapters[k] = o.adapters[k] if k in o.adapters else Adapter(
            main, chain.kind, size, adapter_rank(main, chain.kind, size, rank, bn_layers))
    o.adapters = nn.ModuleDict(adapters)
    o.adapt_units = (g, [] if g is None else [int(k) for k in keys])
    o.rank = rank


def build_overlay(net: JointNet, spec: dict[str, Any], where: str) -> Overlay:
    """An overlay (weights not yet loaded) from its topology entry, checked against the slot's
    structure (one-line L2BGError naming the fault)."""
    s, owner = spec["slot"], spec["owner"]
    name = net.template.slots[s].name
    proto = prototype(net, s)
    chain = chain_of(proto)
    o = Overlay(s, owner)

    def bad(msg: str) -> L2BGError:
        return L2BGError(f"{where}: overlay of task {owner!r} at slot {name!r}: {msg}; re-save "
                         "the JointNet with JointNet.save")

    if spec["bn"]:
        if not net.task_bn:
            raise bad("has batch norms but task_bn is false")
        if spec["bn"] != bn_paths(proto):
            raise bad(f"batch norms {spec['bn']} are not the slot's {bn_paths(proto)}")
        o.set_bn(proto)
    for part in ("rows", "adapter"):
        u = spec[part]
        if u is None:
            continue
        if chain is None:
            raise bad(f"{part} on a slot that cannot be cut into channel groups")
        g = u["num_groups"]
        try:
            ranges = ([(0, chain.channels)] if g is None else
                      [channel_groups(chain.channels, g)[k] for k in u["groups"]])
        except (L2BGError, IndexError) as exc:
            raise bad(f"groups {u['groups']} of num_groups {g}: {exc}") from None
        if part == "rows":
            if g is None:
                raise bad("rows need num_groups (a whole-slot copy is a node)")
            o.rows, o.rows_units = Rows(proto, chain, ranges, not net.task_bn), (g, u["groups"])
        else:
            main, bn_layers = chain.main_layer(proto), 0 if net.task_bn else len(chain.bn)
            keys = ["all"] if g is None else [str(k) for k in u["groups"]]
            o.adapters = nn.ModuleDict({k: Adapter(main, chain.kind, b - a, adapter_rank(
                main, chain.kind, b - a, spec["rank"], bn_layers))
                for k, (a, b) in zip(keys, ranges, strict=True)})
            o.adapt_units, o.rank = (g, [] if g is None else list(u["groups"])), spec["rank"]
    return o
