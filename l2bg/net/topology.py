"""The JointNet file format: a topology (jointnet.json) beside the weights
(jointnet.safetensors), its version, and the checks a topology passes before a JointNet is built
from it (:func:`check_topology`)."""

from __future__ import annotations

import json
import re
from typing import Any

from l2bg.base.errors import L2BGError, one_line
from l2bg.net.catalog import make_template
from l2bg.net.templates import Template

FORMAT = "l2bg.jointnet"
FORMAT_VERSION = 2
WEIGHTS_FILE = "jointnet.safetensors"
TOPOLOGY_FILE = "jointnet.json"
_TASK_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _node_index(node_id: str) -> int:
    """k of a node id ``<slot name>_<k>``."""
    return int(node_id.rsplit("_", 1)[1])


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def _build_template(topo: Any, where: str, given: Any = None) -> Template:
    """The template of a topology: a built-in one rebuilt from its name and kwargs, or the
    ``given`` user template (a Template or a factory), which must match what was saved."""
    fix = "re-save the JointNet with JointNet.save"
    if not isinstance(topo, dict):
        raise L2BGError(f"{where}: not a JointNet topology (a JSON object is expected, got "
                        f"{type(topo).__name__}); {fix}")
    if topo.get("format") != FORMAT:
        raise L2BGError(f"{where}: not an l2bg JointNet topology (format="
                        f"{topo.get('format')!r}, expected {FORMAT!r}); {fix}")
    version = topo.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise L2BGError(f"{where}: format_version must be a positive integer, got "
                        f"{version!r}; {fix}")
    if version > FORMAT_VERSION:
        raise L2BGError(f"{where}: format_version {version} was written by a newer l2bg (this "
                        f"one reads version {FORMAT_VERSION}); upgrade l2bg")
    tpl = topo.get("template")
    if (not isinstance(tpl, dict) or set(tpl) - {"modules"} != {"name", "kwargs"}
            or not isinstance(tpl["name"], str) or not isinstance(tpl["kwargs"], dict)):
        raise L2BGError(f"{where}: template must be {{\"name\": str, \"kwargs\": {{...}}}}; {fix}")
    if given is not None or "modules" in tpl:
        return _given_template(tpl, where, given)
    try:
        template = make_template(tpl["name"], **tpl["kwargs"])
    except L2BGError as exc:
        raise L2BGError(f"{where}: {exc}") from exc
    except (TypeError, ValueError, OverflowError) as exc:
        raise L2BGError(f"{where}: template {tpl['name']!r} does not take these kwargs "
                        f"({one_line(exc, 160)}); {fix}") from exc
    if _canon(template.to_dict()) != _canon(tpl):  # 784.5 read as 784: say what it builds
        raise L2BGError(f"{where}: template kwargs {tpl['kwargs']} are not in the form "
                        f"{tpl['name']!r} writes them ({template.kwargs}); {fix}")
    return template


def _given_template(tpl: dict[str, Any], where: str, given: Any) -> Template:
    from l2bg.net.modules import resolve_template

    if given is None:
        raise L2BGError(f"{where}: saved from the user template {tpl['name']!r}; load it with "
                        "JointNet.load(dir, template=<the factory that built it>)")
    template = resolve_template(given, where)
    if _canon(template.to_dict()) != _canon(tpl):
        have, want = template.to_dict(), tpl
        diff = sorted(k for k in {*have, *want} if _canon(have.get(k)) != _canon(want.get(k)))
        raise L2BGError(f"{where}: the template passed ({template.name!r}) does not match the "
                        f"saved one {tpl['name']!r} (differs in {', '.join(diff)}); pass the "
                        "template factory that built the saved JointNet")
    return template


def check_topology(topo: dict[str, Any], template: Template, where: str = "topology"
                   ) -> dict[str, Any]:
    """Check a topology (format version 1 or 2) against its schema and the invariants that
    bind, grow and add_task keep; returns it. One-line L2BGError naming the first fault otherwise.

    Keys: ``nodes`` [{id: "<slot name>_<k>", slot, owner}] (ids unique; each on some route;
    owner a task), ``tasks`` [{name, route, num_classes, bound_to, grown_slots}] (names unique;
    a route names one node per slot, in slot order; ``bound_to`` an earlier task or null;
    ``grown_slots`` exactly the slots whose node the task owns when bound, [] otherwise; every
    node owned by an unbound task), optional ``next_node`` (ints per slot, a lower bound of the
    next node index).

    Version 2 adds ``task_bn`` (bool), ``overlays`` [{slot, owner, bn, rows, adapter, rank}]
    (:meth:`l2bg.net.overlay.Overlay.spec`; one per (slot, owner)) and per task ``stack``: per
    slot the owners of the overlays it runs over its node, in order (its own last)."""
    fix = "re-save the JointNet with JointNet.save"

    def bad(msg: str) -> L2BGError:
        return L2BGError(f"{where}: {msg}; {fix}")

    v2 = topo.get("format_version", 1) >= 2
    allowed = {"format", "format_version", "template", "nodes", "next_node", "tasks"}
    allowed |= {"task_bn", "overlays"} if v2 else set()
    unknown = sorted(set(topo) - allowed, key=str)
    missing = sorted(({"nodes", "tasks"} | ({"task_bn", "overlays"} if v2 else set()))
                     - set(topo))
    if unknown or missing:
        raise bad(f"{'unknown keys ' + str(unknown) if unknown else ''}"
                  f"{' and ' if unknown and missing else ''}"
                  f"{'missing keys ' + str(missing) if missing else ''}")
    slots = template.slots
    nslots = len(slots)
    nodes, tasks = topo["nodes"], topo["tasks"]
    if not isinstance(nodes, list) or not isinstance(tasks, list):
        raise bad("nodes and tasks must be lists")
    node_slot: dict[str, int] = {}
    node_owner: dict[str, str] = {}
    for i, node in enumerate(nodes):
        if not isinstance(node, dict) or set(node) != {"id", "slot", "owner"}:
            raise bad(f"nodes[{i}] must be {{\"id\", \"slot\", \"owner\"}}")
        nid, s, owner = node["id"], node["slot"], node["owner"]
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < nslots:
            raise bad(f"nodes[{i}] names slot {s!r}; the template has slots 0..{nslots - 1}")
        if not isinstance(nid, str) or not _node_id_ok(nid, slots[s].name):
            raise bad(f"nodes[{i}] has id {nid!r}; a node of slot {s} is named "
                      f"'{slots[s].name}_<k>'")
        if nid in node_slot:
            raise bad(f"node id {nid!r} appears twice")
        if not isinstance(owner, str):
            raise bad(f"node {nid!r} has owner {owner!r}; an owner is a task name")
        node_slot[nid], node_owner[nid] = s, owner
    nxt = topo.get("next_node")
    if nxt is not None and (not isinstance(nxt, list) or len(nxt) != nslots or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in nxt)):
        raise bad(f"next_node must be {nslots} integers >= 0, got {nxt!r}")
    seen: list[str] = []
    used: set[str] = set()
    for i, t in enumerate(tasks):
        keys = {"name", "route", "num_classes", "bound_to", "grown_slots"} | (
            {"stack"} if v2 else set())
        if not isinstance(t, dict) or set(t) != keys:
            raise bad(f"tasks[{i}] must have exactly the keys {sorted(keys)}")
        name, route, nc = t["name"], t["route"], t["num_classes"]
        bound, grown = t["bound_to"], t["grown_slots"]
        if not isinstance(name, str) or not _TASK_NAME.match(name) or name in seen:
            raise bad(f"tasks[{i}] has name {name!r}; names are unique and use only letters, "
                      "digits, '_' and '-'")
        if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc < 1):
            raise bad(f"task {name!r} has num_classes {nc!r}; it must be an integer >= 1")
        if nc is None and template.per_task_heads:
            raise bad(f"task {name!r} needs num_classes for its per-task head")
        if not isinstance(route, list) or len(route) != nslots:
            raise bad(f"task {name!r} must route through {nslots} nodes, one per slot")
        for s, nid in enumerate(route):
            if not isinstance(nid, str) or nid not in node_slot:
                raise bad(f"task {name!r} routes slot {s} through {nid!r}, which is not a node")
            if node_slot[nid] != s:
                raise bad(f"task {name!r} routes slot {s} through {nid!r}, a node of slot "
                          f"{node_slot[nid]}")
        if bound is not None and bound not in seen:
            raise bad(f"task {name!r} is bound to {bound!r}, which is not a task learned "
                      "before it")
        if (not isinstance(grown, list)
                or any(isinstance(s, bool) or not isinstance(s, int) for s in grown)
                or grown != sorted(set(grown)) or any(not 0 <= s < nslots for s in grown)):
            raise bad(f"task {name!r} has grown_slots {grown!r}; they are sorted distinct slot "
                      f"indices 0..{nslots - 1}")
        own = [s for s, nid in enumerate(route) if node_owner[nid] == name]
        if bound is None and (own != list(range(nslots)) or grown):
            raise bad(f"task {name!r} is bound to no task, so it must own every node of its "
                      "route and have grown no slot")
        if bound is not None and own != grown:
            raise bad(f"task {name!r} owns the nodes of slots {own} but says it grew "
                      f"{grown}")
        if any(not slots[s].expandable for s in grown):
            raise bad(f"task {name!r} grew a slot that is not expandable")
        seen.append(name)
        used.update(route)
    for nid, owner in node_owner.items():
        if owner not in seen:
            raise bad(f"node {nid!r} is owned by {owner!r}, which is not a task")
        if nid not in used:
            raise bad(f"node {nid!r} is on no task's route")
    if v2:
        _check_overlays(topo, nslots, bad)
    return topo


_UNITS = {"num_groups", "groups"}
_OVERLAY = {"slot", "owner", "bn", "rows", "adapter", "rank"}


def _check_overlays(topo: dict[str, Any], nslots: int, bad) -> None:
    """The version-2 parts: task_bn, overlays and stacks (their fit to the slots' structure is
    checked as they are built, :func:`l2bg.net.growth.build_overlay`)."""
    if not isinstance(topo["task_bn"], bool):
        raise bad(f"task_bn must be true or false, got {topo['task_bn']!r}")
    overlays = topo["overlays"]
    if not isinstance(overlays, list):
        raise bad("overlays must be a list")
    tasks = [t["name"] for t in topo["tasks"]]
    at: set[tuple[int, str]] = set()
    for i, o in enumerate(overlays):
        if not isinstance(o, dict) or set(o) != _OVERLAY:
            raise bad(f"overlays[{i}] must have exactly the keys {sorted(_OVERLAY)}")
        s, owner = o["slot"], o["owner"]
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < nslots:
            raise bad(f"overlays[{i}] names slot {s!r}; the template has slots 0..{nslots - 1}")
        if owner not in tasks:
            raise bad(f"overlays[{i}] is owned by {owner!r}, which is not a task")
        if (s, owner) in at:
            raise bad(f"two overlays of task {owner!r} at slot {s}")
        at.add((s, owner))
        if not isinstance(o["bn"], list) or any(not isinstance(p, str) for p in o["bn"]):
            raise bad(f"overlays[{i}].bn must be a list of module paths")
        for part in ("rows", "adapter"):
            u = o[part]
            if u is None:
                continue
            g = u.get("num_groups") if isinstance(u, dict) else None
            if (not isinstance(u, dict) or set(u) != _UNITS
                    or (g is not None and (isinstance(g, bool) or not isinstance(g, int)
                                           or g < 1))
                    or not isinstance(u["groups"], list)
                    or any(isinstance(k, bool) or not isinstance(k, int) for k in u["groups"])
                    or u["groups"] != sorted(set(u["groups"]))
                    or (g is None) != (u["groups"] == [])
                    or any(not 0 <= k < g for k in u["groups"] if g is not None)):
                raise bad(f"overlays[{i}].{part} must be {{\"num_groups\": G or null, "
                          "\"groups\": sorted distinct indices 0..G-1 ([] when G is null)}")
        if o["rows"] is not None and o["adapter"] is not None:
            raise bad(f"overlays[{i}] has both rows and an adapter; a slot grows in one mode")
        r = o["rank"]
        if (o["adapter"] is not None) != (r is not None) or r is not None and (
                isinstance(r, bool) or not isinstance(r, int) or r < 1):
            raise bad(f"overlays[{i}].rank must be an integer >= 1 with an adapter, null "
                      f"without, got {r!r}")
        if not o["bn"] and o["rows"] is None and o["adapter"] is None:
            raise bad(f"overlays[{i}] holds nothing; remove it")
    used: set[tuple[int, str]] = set()
    for t in topo["tasks"]:
        stack = t["stack"]
        if not isinstance(stack, list) or len(stack) != nslots or any(
                not isinstance(st, list) for st in stack):
            raise bad(f"task {t['name']!r} must have a stack of {nslots} lists of overlay "
                      "owners, one per slot")
        for s, owners in enumerate(stack):
            for owner in owners:
                if (s, owner) not in at:
                    raise bad(f"task {t['name']!r} stacks an overlay of {owner!r} at slot "
                              f"{s}, which is not in overlays")
            if len(set(owners)) != len(owners) or (
                    t["name"] in owners and owners[-1] != t["name"]):
                raise bad(f"task {t['name']!r} at slot {s}: an overlay appears twice or its "
                          "own is not last")
            if s in t["grown_slots"] and owners:
                raise bad(f"task {t['name']!r} grew slot {s} whole but stacks overlays there")
            used.update((s, owner) for owner in owners)
    if at - used:
        raise bad(f"overlay {sorted(at - used)[0]} is on no task's stack")


def _node_id_ok(node_id: str, slot_name: str) -> bool:
    head, _, k = node_id.rpartition("_")
    return head == slot_name and k.isascii() and k.isdigit() and (k == "0" or k[0] != "0")


__all__ = ["FORMAT", "FORMAT_VERSION", "TOPOLOGY_FILE", "WEIGHTS_FILE", "check_topology"]
