"""User templates: a JointNet template made from your own ``nn.Module``s.

Each slot is one module that maps one tensor to one tensor (a connection that skips across slots
is not supported: put the whole residual block in one slot). Grow copies the bound task's module
with ``copy.deepcopy`` (weights, buffers, train/eval flag); a fresh node (an independent task-net)
is a deep copy of the prototype with every submodule's ``reset_parameters`` called. Heads are
either the last slot (shared, itself a slot) or one module per task from a head factory.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from l2bg.base.errors import L2BGError
from l2bg.net.templates import SlotSpec, Template, _check_parameters

__all__ = ["module_template", "module_signature"]

_SLOT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def module_signature(module: nn.Module) -> str:
    """A short hash of a module's structure: the type of every submodule and the name, shape
    and dtype of every parameter and buffer (not their values)."""
    parts = [[name, f"{type(m).__module__}.{type(m).__qualname__}"]
             for name, m in module.named_modules()]
    parts += [[k, list(v.shape), str(v.dtype)] for k, v in module.state_dict().items()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _named_slots(slots: Any) -> list[tuple[str, nn.Module]]:
    if isinstance(slots, Mapping):
        items = list(slots.items())
    elif isinstance(slots, nn.Module):  # nn.Sequential or any model: its named children
        items = list(slots.named_children())
    elif isinstance(slots, Sequence) and not isinstance(slots, str | bytes):
        items = [(f"slot{i}", m) for i, m in enumerate(slots)]
    else:
        raise L2BGError(f"slots must be a list of modules, an nn.Sequential, a model or a "
                        f"{{name: module}} mapping, got {type(slots).__name__}")
    out = []
    for name, m in items:
        name = f"slot{name}" if isinstance(name, str) and name.isdigit() else name
        if not isinstance(m, nn.Module):
            raise L2BGError(f"slot {name!r} is a {type(m).__name__}, not an nn.Module; pass "
                            "modules")
        if not isinstance(name, str) or not _SLOT_NAME.match(name):
            raise L2BGError(f"slot name {name!r} must start with a letter and use only "
                            "letters, digits, '_' and '-'")
        out.append((name, m))
    if not out:
        raise L2BGError("a template needs at least one slot module")
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise L2BGError(f"slot names {dup} appear twice; name every slot once")
    owner: dict[int, str] = {}
    for name, m in out:
        for t in [*m.parameters(), *m.buffers()]:
            if id(t) in owner and owner[id(t)] != name:
                raise L2BGError(f"slots {owner[id(t)]!r} and {name!r} share a tensor; every "
                                "slot must own its parameters (copy the module)")
            owner[id(t)] = name
    return out


def module_template(slots: Sequence[nn.Module] | Mapping[str, nn.Module] | nn.Module, *,
                    name: str = "user", expandable: Iterable[int | str] | None = None,
                    head: Callable[[int], nn.Module] | None = None,
                    input_shape: Sequence[int] | None = None,
                    kwargs: Mapping[str, Any] | None = None) -> Template:
    """A template whose slots are your modules, in order.

    ``slots``: a list of modules (named ``slot0``, ``slot1``, ...), an ``nn.Sequential`` or a
    model (its named children, in order), or ``{name: module}``. ``expandable``: the slots that
    may be grown (names or indices; default all). ``head``: None makes the last slot the shared
    head slot (its output is the logits of every task); a factory ``head(num_classes)`` gives each
    task its own head on the last slot's output. ``input_shape``: one sample's shape (inputs are
    checked against it; None: not checked). ``kwargs``: JSON data saved with the topology (for
    your own use). The modules are prototypes: the template keeps them, nodes are copies. Train
    it with your own :class:`l2bg.learn.training.TrainConfig`; save and load with
    ``JointNet.load(dir, template=...)``."""
    named = _named_slots(slots)
    if not isinstance(name, str) or not _SLOT_NAME.match(name):
        raise L2BGError(f"template name {name!r} must start with a letter and use only letters, "
                        "digits, '_' and '-'")
    if head is not None and not callable(head):
        raise L2BGError(f"head must be a factory head(num_classes) -> nn.Module or None (the "
                        f"last slot is the shared head), got {type(head).__name__}")
    names = [n for n, _ in named]
    if expandable is None:
        grow = set(range(len(named)))
    else:
        if isinstance(expandable, str | int):
            expandable = [expandable]
        grow = set()
        for s in expandable:
            if isinstance(s, str) and s in names:
                grow.add(names.index(s))
            elif isinstance(s, int) and not isinstance(s, bool) and 0 <= s < len(names):
                grow.add(s)
            else:
                raise L2BGError(f"expandable names {s!r}, which is not a slot; slots: {names}")
    try:
        saved_kwargs = json.loads(json.dumps(dict(kwargs or {})))
    except (TypeError, ValueError) as exc:
        raise L2BGError(f"kwargs must be JSON data (it is saved with the topology): "
                        f"{exc}") from None
    shape = None if input_shape is None else tuple(int(d) for d in input_shape)
    specs = tuple(SlotSpec(n, (), i in grow, m) for i, (n, m) in enumerate(named))
    info = {"slots": names, "expandable": sorted(grow), "per_task_heads": head is not None,
            "signature": [module_signature(m) for _, m in named]}
    return _check_parameters(Template(name, saved_kwargs, specs, per_task_heads=head is not None,
                                      input_shape=shape, head_factory=head, modules=info))


def resolve_template(template: Any, where: str) -> Template:
    """``template`` as given to ``JointNet.load``: a :class:`Template` or a factory returning
    one."""
    if callable(template) and not isinstance(template, Template):
        template = template()
    if not isinstance(template, Template):
        raise L2BGError(f"{where}: template= must be a Template or a factory returning one, got "
                        f"{type(template).__name__}")
    return template
