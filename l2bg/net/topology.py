"""The JointNet file format: a topology (jointnet.json) beside the weights
(jointnet.safetensors), its version, and the checks a topology passes before a JointNet is built
from it (:func:`check_topology`)."""

from __future__ import annotations

import json
import re
from typing import Any

from l2bg.base.errors import L2BGError, one_line
from l2bg.net.templates import Template, make_template

FORMAT = "l2bg.jointnet"
FORMAT_VERSION = 1
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
    """Check a topology (format version 1) against its schema and the invariants that bind,
    grow and add_task keep; returns it. One-line L2BGError naming the first fault otherwise.

    Keys: ``nodes`` [{id: "<slot name>_<k>", slot, owner}] (ids unique; each on some route;
    owner a task), ``tasks`` [{name, route, num_classes, bound_to, grown_slots}] (names unique;
    a route names one node per slot, in slot order; ``bound_to`` an earlier task or null;
    ``grown_slots`` exactly the slots whose node the task owns when bound, [] otherwise; every
    node owned by an unbound task), optional ``next_node`` (ints per slot, a lower bound of the
    next node index)."""
    fix = "re-save the JointNet with JointNet.save"

    def bad(msg: str) -> L2BGError:
        return L2BGError(f"{where}: {msg}; {fix}")

    allowed = {"format", "format_version", "template", "nodes", "next_node", "tasks"}
    unknown = sorted(set(topo) - allowed, key=str)
    missing = sorted({"nodes", "tasks"} - set(topo))
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
        keys = {"name", "route", "num_classes", "bound_to", "grown_slots"}
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
    return topo


def _node_id_ok(node_id: str, slot_name: str) -> bool:
    head, _, k = node_id.rpartition("_")
    return head == slot_name and k.isascii() and k.isdigit() and (k == "0" or k[0] != "0")


__all__ = ["FORMAT", "FORMAT_VERSION", "TOPOLOGY_FILE", "WEIGHTS_FILE", "check_topology"]
