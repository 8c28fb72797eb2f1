"""Units of the conflict model finer than a slot: contiguous channel groups (the paper's §3,
"partition a layer into sub-components, e.g., a group of channels").

A unit is ``(slot, group)``; ``group is None`` means the whole slot. A slot whose main layer has
C output channels is cut into G groups by :func:`channel_groups`; :func:`group_columns` finds
each group's columns in the slot's flattened activation (docs/design.md, "Units").
"""

from __future__ import annotations

from collections.abc import Sequence

from l2bg.base.errors import L2BGError

__all__ = ["channel_groups", "group_columns"]


def channel_groups(channels: int, groups: int) -> list[tuple[int, int]]:
    """G contiguous (start, stop) channel ranges covering range(C), sizes differing by at most
    one, the larger ones first; L2BGError unless 1 <= G <= C."""
    for name, v in (("channels", channels), ("groups", groups)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise L2BGError(f"channel groups: {name} must be an integer, got {v!r}")
    if not 1 <= groups <= channels:
        raise L2BGError(f"cannot cut {channels} channels into {groups} groups; use 1 <= G <= "
                        f"{channels}")
    size, extra = divmod(channels, groups)
    ranges, start = [], 0
    for g in range(groups):
        stop = start + size + (g < extra)
        ranges.append((start, stop))
        start = stop
    return ranges


def group_columns(width: int, channels: int, ranges: Sequence[tuple[int, int]]) -> list[slice]:
    """Columns of a flattened (N, width) slot activation (channel-major: width = C * rest) for
    each channel range; L2BGError when width % C != 0."""
    if channels < 1 or width % channels != 0:
        raise L2BGError(f"a slot activation of width {width} is not channel-major over "
                        f"{channels} channels (width % channels != 0)")
    rest = width // channels
    out = []
    for start, stop in ranges:
        if not 0 <= start < stop <= channels:
            raise L2BGError(f"channel range ({start}, {stop}) is not inside range({channels})")
        out.append(slice(start * rest, stop * rest))
    return out
