"""Channel groups (the units of the conflict model finer than a slot) and their columns."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from l2bg.base.errors import L2BGError
from l2bg.net.units import channel_groups, group_columns


@st.composite
def channels_and_groups(draw):
    c = draw(st.integers(1, 300))
    return c, draw(st.integers(1, c))


@given(channels_and_groups())
def test_groups_are_contiguous_cover_and_balanced(cg):
    """G ranges, contiguous, covering range(C) once, sizes within one, larger first."""
    c, g = cg
    ranges = channel_groups(c, g)
    assert len(ranges) == g
    assert ranges[0][0] == 0 and ranges[-1][1] == c
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    sizes = [b - a for a, b in ranges]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("c", [1, 2, 7, 64])
def test_degenerate_group_counts(c):
    """G = C gives one channel per group; G = 1 the whole slot."""
    assert channel_groups(c, c) == [(i, i + 1) for i in range(c)]
    assert channel_groups(c, 1) == [(0, c)]


@pytest.mark.parametrize("c,g", [(4, 5), (4, 0), (0, 0), (3, -1), (4, 2.0), (True, 1)])
def test_bad_group_counts_are_one_line_errors(c, g):
    with pytest.raises(L2BGError) as info:
        channel_groups(c, g)
    assert "\n" not in str(info.value)


@given(channels_and_groups(), st.integers(1, 5))
def test_columns_select_the_channels_of_a_flattened_activation(cg, rest):
    """On a (N, C, rest) activation flattened channel-major, a group's columns are exactly its
    channels' values."""
    c, g = cg
    x = torch.arange(2 * c * rest, dtype=torch.float32).reshape(2, c, rest)
    flat = x.flatten(1)
    ranges = channel_groups(c, g)
    cols = group_columns(flat.shape[1], c, ranges)
    for (a, b), sl in zip(ranges, cols, strict=True):
        assert torch.equal(flat[:, sl], x[:, a:b].flatten(1))
    assert sum(s.stop - s.start for s in cols) == flat.shape[1]


def test_columns_of_a_width_not_divisible_by_channels_is_an_error():
    with pytest.raises(L2BGError, match="channel-major"):
        group_columns(10, 3, [(0, 1)])
    with pytest.raises(L2BGError, match="inside"):
        group_columns(6, 3, [(2, 4)])
