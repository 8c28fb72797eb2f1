import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l2bg.base.errors import L2BGError
from l2bg.conflict import scores as conflict
from l2bg.conflict.rules import nucleus

scores = st.lists(st.floats(0, 2, allow_nan=False, allow_infinity=False), min_size=1,
                  max_size=8)
deltas = st.floats(0, 1, allow_nan=False)


def test_nucleus_edges():
    assert nucleus([0.3, 0.9, 0.1], 0) == []
    assert nucleus([0.3, 0.9, 0.1], 1) == [0, 1, 2]
    assert nucleus([0.0, 0.0, 0.0], 1) == [0, 1, 2]
    assert nucleus([], 0.5) == []


def test_nucleus_orders_by_conflict_and_breaks_ties_by_slot():
    c = [0.2, 0.5, 0.2, 0.1]  # total 1.0
    assert nucleus(c, 0.5) == [1]
    assert nucleus(c, 0.51) == [0, 1]  # tie 0.2/0.2 → the lower slot first
    assert nucleus(c, 0.9) == [0, 1, 2]
    assert nucleus(c, 0.91) == [0, 1, 2, 3]


def test_nucleus_float_round_off_is_tolerated():
    c = [0.1] * 10
    # 0.7 * 1.0 computed in float64 is not exactly the sum of seven 0.1s; the 1e-12 slack decides
    assert nucleus(c, 0.7) == list(range(7))
    assert nucleus([1 / 3] * 3, 2 / 3) == [0, 1]


def test_zero_scores_give_a_uniform_distribution():
    assert conflict.distribution([0.0, 0.0]) == [0.5, 0.5]
    assert nucleus([0.0] * 4, 0.5) == [0, 1]
    assert nucleus([0.0] * 4, 0.3) == [0, 1]
    # zero-conflict slots are grown only when δ = 1
    assert nucleus([0.4, 0.0, 0.6], 0.999) == [0, 2]


@settings(max_examples=200, deadline=None)
@given(scores, deltas, deltas)
def test_nucleus_is_monotone_in_delta(c, d1, d2):
    lo, hi = sorted((d1, d2))
    assert set(nucleus(c, lo)) <= set(nucleus(c, hi))


@settings(max_examples=200, deadline=None)
@given(scores, deltas)
def test_nucleus_is_the_shortest_prefix_reaching_delta(c, d):
    chosen = nucleus(c, d)
    total = math.fsum(c) if math.fsum(c) > 0 else float(len(c))
    w = c if math.fsum(c) > 0 else [1.0] * len(c)
    target = d * total - 1e-12 * total
    assert math.fsum(w[i] for i in chosen) >= target or d == 1
    # every chosen slot has at least the conflict of every slot left out
    left = [i for i in range(len(c)) if i not in chosen]
    if chosen and left:
        assert min(c[i] for i in chosen) >= max(c[i] for i in left)
    # one fewer slot would not reach the target (shortest prefix)
    if chosen and d < 1:
        order = sorted(chosen, key=lambda i: (-c[i], i))
        assert math.fsum(w[i] for i in order[:-1]) < target


def test_bad_delta_and_scores():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(L2BGError, match=r"\[0, 1\]"):
            nucleus([0.1], bad)
    with pytest.raises(L2BGError, match="finite"):
        nucleus([0.1, float("inf")], 0.5)


def test_choose_bind_least_score_and_earliest_on_ties():
    assert conflict.choose_bind({"a": 0.5, "b": 0.2, "c": 0.2}) == "b"
    assert conflict.choose_bind({"a": 0.2, "b": 0.2}) == "a"
    with pytest.raises(L2BGError):
        conflict.choose_bind({})


def test_task_score_is_the_euclidean_norm():
    assert conflict.task_score([3.0, 4.0]) == pytest.approx(5.0)


def test_sample_indices():
    idx = conflict.sample_indices(100, None, 0)
    assert idx.numel() == 100 and idx.unique().numel() == 100
    assert conflict.sample_indices(1000, None, 0).numel() == 500
    first, again = conflict.sample_indices(50, 10, 3), conflict.sample_indices(50, 10, 3)
    assert torch.equal(first, again) and first.numel() == 10
    with pytest.raises(L2BGError, match="exceeds the 50 validation samples"):
        conflict.sample_indices(50, 60, 0)
    with pytest.raises(L2BGError, match="at least 3"):
        conflict.sample_indices(50, 2, 0)
