"""The conflict model over units (docs/design.md, "Units"): with granularity ``group:G`` every
expandable slot whose main layer has C output channels is cut into G contiguous channel groups
(:func:`l2bg.net.units.channel_groups`), and a unit ``(slot, group)`` is scored on the columns of
its channels in the slot's activation; slots that cannot be cut, and every slot with granularity
``layer``, are one whole unit ``(slot, None)``. The grow rule's distribution and nucleus run over
the units of all expandable slots in this order (slot, then group): one hierarchical partition.
Light to import (no torch): the search's notation uses it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from l2bg.base.errors import L2BGError, ParamError
from l2bg.net.units import channel_groups, group_columns

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

__all__ = ["DEFAULT_GRANULARITY", "Unit", "check_granularity", "format_units", "list_units",
           "parse_granularity", "split_units", "unit_activations", "unit_name"]

DEFAULT_GRANULARITY = "layer"

Unit = tuple[int, "int | None"]
"""``(slot, group)``: ``group is None`` is the whole slot."""

_GROUP = re.compile(r"group:(\d+)")


def parse_granularity(value: str | None, param: str = "granularity") -> int | None:
    """G of ``group:G`` (an integer >= 1), None for ``layer`` (and for None); one line naming
    ``param`` otherwise."""
    if value is None or value == DEFAULT_GRANULARITY:
        return None
    m = _GROUP.fullmatch(str(value).strip()) if isinstance(value, str) else None
    if m is None or int(m.group(1)) < 1:
        raise ParamError(f"{{{param}}} {value!r} is not 'layer' or 'group:G' with G >= 1 "
                         "channel groups per slot", param)
    return int(m.group(1))


def check_granularity(value: str | None, param: str = "granularity") -> str:
    """The canonical spelling of a granularity (``layer`` or ``group:G``)."""
    g = parse_granularity(value, param)
    return DEFAULT_GRANULARITY if g is None else f"group:{g}"


def list_units(expandable: Sequence[int], channels: Callable[[int], int | None],
               num_groups: int | None, slot_names: Sequence[str] | None = None
               ) -> list[Unit]:
    """The units of the expandable slots, slot then group. ``channels(slot)`` is C of the slot's
    main layer (:meth:`l2bg.net.jointnet.JointNet.unit_channels`; None: the slot cannot be cut).
    ``num_groups`` None: every slot whole. G > C is an error naming ``granularity``."""
    units: list[Unit] = []
    for s in expandable:
        c = None if num_groups is None else channels(s)
        if c is None:
            units.append((s, None))
            continue
        if num_groups > c:
            name = slot_names[s] if slot_names is not None else f"slot {s}"
            raise ParamError(f"{{granularity}} group:{num_groups} cuts slot {name} of {c} "
                             f"channels into more groups than channels; use G <= {c}",
                             "granularity")
        units.extend((s, g) for g in range(num_groups))
    return units


def unit_activations(acts: Sequence[Tensor], units: Sequence[Unit],
                     channels: Callable[[int], int | None], num_groups: int | None
                     ) -> list[Tensor]:
    """Each unit's activation from per-slot activations ``acts[slot]`` (n, width): the whole
    slot, or the columns of the group's channels (:func:`l2bg.net.units.group_columns`)."""
    cols: dict[int, list[slice]] = {}
    out = []
    for s, g in units:
        if g is None:
            out.append(acts[s])
            continue
        if s not in cols:
            c = channels(s)
            cols[s] = group_columns(acts[s].shape[1], c, channel_groups(c, num_groups))
        out.append(acts[s][:, cols[s][g]])
    return out


def split_units(units: Sequence[Unit], picked: Sequence[int]
                ) -> tuple[tuple[int, ...], dict[int, tuple[int, ...]]]:
    """Positions ``picked`` (into ``units``) as whole slots grown and ``{slot: groups}``."""
    slots: set[int] = set()
    groups: dict[int, set[int]] = {}
    for p in picked:
        s, g = units[p]
        if g is None:
            slots.add(s)
        else:
            groups.setdefault(s, set()).add(g)
    return tuple(sorted(slots)), {s: tuple(sorted(gs)) for s, gs in sorted(groups.items())}


def unit_name(slot_names: Sequence[str], unit: Sequence[int | None]) -> str:
    """``fc2`` for a whole slot, ``fc2[3]`` for group 3 of it."""
    s, g = unit
    return slot_names[s] if g is None else f"{slot_names[s]}[{g}]"


def format_units(slots: Sequence[str], groups: Mapping[str, Sequence[int]] | None) -> list[str]:
    """Grown units in the search's notation: whole slots by name, grown groups of a slot as
    ``fc2[0,3]``; in slot order when the names are given in it."""
    out = list(slots)
    for name, gs in (groups or {}).items():
        if name in out:
            raise L2BGError(f"slot {name} is grown whole and by groups; give one of the two")
        out.append(f"{name}[{','.join(str(g) for g in gs)}]")
    return out
