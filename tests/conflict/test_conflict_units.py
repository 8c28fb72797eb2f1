"""The conflict model over units (slot, channel group): granularity, the unit list, unit
activations and scores, and the grow rules' nucleus over units."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l2bg import rsa
from l2bg.base.errors import ParamError
from l2bg.conflict import scores as conflict
from l2bg.conflict.rules import GROW_RULES
from l2bg.conflict.units import (
    check_granularity,
    format_units,
    list_units,
    parse_granularity,
    split_units,
    unit_activations,
    unit_name,
)
from l2bg.net.units import channel_groups


@pytest.mark.parametrize("text, g", [("layer", None), (None, None), ("group:1", 1),
                                     ("group:16", 16), (" group:4 ", 4)])
def test_granularity_parses(text, g):
    assert parse_granularity(text) == g
    assert check_granularity(text) == ("layer" if g is None else f"group:{g}")


@pytest.mark.parametrize("text", ["group:0", "group", "groups:4", "group:-2", "group:x", "slot",
                                  4, ""])
def test_bad_granularity_is_one_line_naming_the_parameter(text):
    with pytest.raises(ParamError) as info:
        parse_granularity(text)
    assert info.value.param == "granularity" and "\n" not in str(info.value)


CHANNELS = {0: 8, 1: 5, 2: None}  # slot 2 cannot be cut (a head after a pooling, say)


def test_units_slot_then_group_and_uncut_slots_whole():
    assert list_units([0, 1, 2], CHANNELS.get, None) == [(0, None), (1, None), (2, None)]
    assert list_units([0, 1, 2], CHANNELS.get, 2) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, None)]
    assert list_units([1, 2], CHANNELS.get, 5) == [(1, g) for g in range(5)] + [(2, None)]


def test_more_groups_than_channels_names_the_parameter_and_slot():
    with pytest.raises(ParamError) as info:
        list_units([0, 1], CHANNELS.get, 6, ["conv1", "fc2"])
    assert info.value.param == "granularity" and "fc2" in str(info.value)
    assert "G <= 5" in str(info.value)


@given(st.integers(1, 9), st.integers(1, 4), st.integers(1, 3))
def test_unit_activations_are_the_channels_of_the_group(c, g_max, rest):
    g = min(g_max, c)
    x = torch.randn(6, c, rest)
    acts = [x.flatten(1), torch.randn(6, 3)]
    units = list_units([0, 1], {0: c, 1: None}.get, g)
    got = unit_activations(acts, units, {0: c, 1: None}.get, g)
    ranges = channel_groups(c, g)
    for (s, grp), a in zip(units, got, strict=True):
        if grp is None:
            assert torch.equal(a, acts[s])
        else:
            lo, hi = ranges[grp]
            assert torch.equal(a, x[:, lo:hi].flatten(1))


def test_a_grouped_conflict_equals_the_measure_on_those_columns_by_hand():
    """C of unit (slot, g) is the RSA dissimilarity of exactly that group's columns, computed
    here with l2bg.rsa directly; the task score is the norm over all units."""
    torch.manual_seed(0)
    a_t = [torch.randn(20, 6 * 2), torch.randn(20, 4)]
    a_b = [torch.randn(20, 6 * 2), torch.randn(20, 4)]
    chans = {0: 6, 1: None}.get
    units = list_units([0, 1], chans, 3)
    got, _ = conflict.layer_conflicts(unit_activations(a_t, units, chans, 3),
                                      {"b": unit_activations(a_b, units, chans, 3)})
    by_hand = []
    for s, g in units:
        cols = slice(None) if g is None else slice(4 * g, 4 * (g + 1))  # 2 channels x 2 values
        by_hand.append(float(rsa.dissimilarity([a_t[s][:, cols]], [a_b[s][:, cols]])[0]))
    assert got["b"] == pytest.approx(by_hand, abs=1e-12)
    assert len(got["b"]) == 4


@st.composite
def unit_conflicts(draw):
    """A unit list of 1-4 slots (some cut into 1-4 groups) and a conflict per unit."""
    n = draw(st.integers(1, 4))
    chans = {s: draw(st.one_of(st.none(), st.integers(1, 6))) for s in range(n)}
    g = draw(st.integers(1, 6))
    g = min([g] + [c for c in chans.values() if c is not None])
    units = list_units(list(range(n)), chans.get, g)
    c = draw(st.lists(st.one_of(st.just(0.0), st.floats(0, 2)), min_size=len(units),
                      max_size=len(units)))
    return units, c


@settings(max_examples=200, deadline=None)
@given(unit_conflicts(), st.floats(0, 1), st.floats(0, 1),
       st.sampled_from(GROW_RULES.names()))
def test_nucleus_over_units(uc, d1, d2, rule):
    """δ = 0 grows nothing, δ = 1 every unit, monotone in δ; a slot's units split into whole
    slots and groups that cover exactly the chosen units."""
    units, c = uc
    grow = GROW_RULES.get(rule).grow
    assert grow(c, 0.0) == [] and grow(c, 1.0) == list(range(len(units)))
    lo, hi = sorted((d1, d2))
    small, big = set(grow(c, lo)), set(grow(c, hi))
    assert small <= big
    slots, groups = split_units(units, sorted(big))
    back = {(s, None) for s in slots} | {(s, g) for s, gs in groups.items() for g in gs}
    assert back == {units[p] for p in big}
    assert not set(slots) & set(groups)
    assert all(list(gs) == sorted(set(gs)) for gs in groups.values())


def test_task_score_is_the_norm_over_units():
    assert conflict.task_score([0.3, 0.4, 0.0, 1.2]) == pytest.approx(math.sqrt(0.09 + 0.16 + 1.44))


def test_unit_names_and_the_sequence_notation():
    names = ["fc1", "fc2", "head"]
    assert unit_name(names, (1, None)) == "fc2" and unit_name(names, (1, 3)) == "fc2[3]"
    assert format_units(["fc1"], {"fc2": [0, 3]}) == ["fc1", "fc2[0,3]"]
    assert format_units([], None) == []
