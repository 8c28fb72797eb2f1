"""Grow and bind rules: each rule's formula, its edge cases (δ = 0 / 1, ΣC = 0, ties, round-off)
and the L2BG strategy configured with them."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l2bg.base.errors import L2BGError
from l2bg.conflict.rules import BIND_RULES, GROW_RULES, BindRule, GrowRule, similarity_weights
from l2bg.learn import strategies

scores = st.lists(st.floats(0, 2, allow_nan=False, allow_infinity=False), min_size=1,
                  max_size=8)
deltas = st.floats(0, 1, allow_nan=False)
GROW = GROW_RULES.names()


def grow(rule, c, d):
    return GROW_RULES.get(rule).grow(c, d)


def test_builtin_rules_and_defaults():
    assert GROW[:3] == ["conflict", "similar-first", "released"]
    assert BIND_RULES.names()[:2] == ["least-conflict", "released"]
    s = strategies.get("l2bg")
    assert s.options() == {"grow_rule": "conflict", "bind_rule": "least-conflict",
                           "similarity": "rsa-spearman"}


def test_similar_first_takes_the_least_conflicting_slots_first():
    c = [0.2, 0.5, 0.2, 0.1]  # ascending: 3 (0.1), 0 (0.2), 2 (0.2, tie after 0), 1 (0.5)
    assert grow("similar-first", c, 0.1) == [3]
    assert grow("similar-first", c, 0.11) == [0, 3]
    assert grow("similar-first", c, 0.3) == [0, 3]
    assert grow("similar-first", c, 0.31) == [0, 2, 3]
    assert grow("similar-first", c, 0.5) == [0, 2, 3]
    assert grow("similar-first", c, 0.51) == [0, 1, 2, 3]


def test_released_rule_weighs_slots_by_clamped_similarity():
    c = [0.25, 1.5, 0.75, 0.5]  # rho = 0.75, 0 (clamped), 0.25, 0.5; sum 1.5
    assert similarity_weights(c) == [0.75, 0.0, 0.25, 0.5]
    assert grow("released", c, 0.5) == [0]  # 0.75 / 1.5 = 0.5 reaches exactly
    assert grow("released", c, 0.51) == [0, 3]
    assert grow("released", c, 5 / 6) == [0, 3]  # (0.75 + 0.5) / 1.5, exact in exact arithmetic
    assert grow("released", c, 0.9) == [0, 2, 3]
    assert grow("released", c, 0.999) == [0, 2, 3]  # the rho = 0 slot only at delta = 1
    assert grow("released", c, 1) == [0, 1, 2, 3]


@pytest.mark.parametrize("rule", GROW)
def test_edges_of_every_grow_rule(rule):
    assert grow(rule, [0.3, 0.9, 0.1], 0) == []
    assert grow(rule, [0.3, 0.9, 0.1], 1) == [0, 1, 2]
    assert grow(rule, [], 0.5) == []
    # a zero total weighs every slot the same: ceil(delta * L) slots, ties in slot order
    zero = [0.0] * 4 if rule != "released" else [1.0, 2.0, 1.5, 1.0]
    assert grow(rule, zero, 0.5) == [0, 1]
    assert grow(rule, zero, 0.3) == [0, 1]
    assert grow(rule, zero, 0.25) == [0]
    # round-off: a delta equal to a cumulative share in exact arithmetic takes that prefix
    assert len(grow(rule, [0.1] * 10, 0.7)) == 7
    assert len(grow(rule, [1 / 3] * 3, 2 / 3)) == 2
    with pytest.raises(L2BGError, match=r"\[0, 1\]"):
        grow(rule, [0.1], 1.5)
    with pytest.raises(L2BGError, match="finite"):
        grow(rule, [0.1, float("nan")], 0.5)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(GROW), scores, deltas, deltas)
def test_every_grow_rule_is_monotone_and_the_shortest_prefix(rule, c, d1, d2):
    lo, hi = sorted((d1, d2))
    r = GROW_RULES.get(rule)
    assert set(r.grow(c, lo)) <= set(r.grow(c, hi))
    w = r.weights(c)
    total = math.fsum(w)
    w = w if total > 0 else [1.0] * len(c)
    total = math.fsum(w)
    target = hi * total - 1e-12 * total
    chosen = r.grow(c, hi)
    order = r.order(c)
    assert chosen == sorted(order[:len(chosen)])  # a prefix of the rule's order
    assert hi == 1 or math.fsum(w[i] for i in chosen) >= target
    if chosen and hi < 1:
        assert math.fsum(w[i] for i in order[:len(chosen) - 1]) < target


@settings(max_examples=100, deadline=None)
@given(scores)
def test_rule_orders(c):
    for rule, key in (("conflict", lambda i: (-c[i], i)), ("similar-first", lambda i: (c[i], i)),
                      ("released", lambda i: (-max(0.0, 1 - c[i]), i))):
        assert GROW_RULES.get(rule).order(c) == sorted(range(len(c)), key=key)


def test_table_lists_weights_shares_and_cumulative_in_rule_order():
    rows = GROW_RULES.get("released").table([0.25, 1.5, 0.75, 0.5])
    assert [r["position"] for r in rows] == [0, 3, 2, 1]
    assert [r["weight"] for r in rows] == [0.75, 0.5, 0.25, 0.0]
    assert rows[0]["share"] == pytest.approx(0.5) and rows[-1]["cumulative"] == pytest.approx(1)


def test_bind_rules():
    layers = {"a": [0.9, 0.9], "b": [0.2, 1.4], "c": [0.5, 0.5]}
    # ‖C‖: a 1.27, b 1.41, c 0.71; ‖rho‖ with rho = max(0, 1 - C): a 0.14, b 0.8, c 0.71
    assert BIND_RULES.get("least-conflict").choose(layers) == "c"
    assert BIND_RULES.get("released").choose(layers) == "a"
    assert BIND_RULES.get("released").keys({"x": [0.0, 3.0]})["x"] == 1.0
    # exact ties go to the earliest candidate
    assert BIND_RULES.get("released").choose({"p": [1.0, 2.0], "q": [2.0, 1.5]}) == "p"
    with pytest.raises(L2BGError, match="NaN"):
        BIND_RULES.get("least-conflict").choose({"a": [float("nan")]})


def test_registries_reject_unknown_and_duplicate_names_and_take_new_rules():
    with pytest.raises(L2BGError, match="unknown grow rule 'bogus'.*conflict"):
        GROW_RULES.get("bogus")
    with pytest.raises(L2BGError, match="already registered"):
        GROW_RULES.register(GrowRule("conflict", "", "", list))
    with pytest.raises(L2BGError, match="name"):
        BIND_RULES.register(BindRule("bad name", "", "", sum))
    rule = GrowRule("test-every-other", "grows by position", "slots by position", lambda c:
                    [float(i % 2) for i in range(len(c))])
    GROW_RULES.register(rule)
    try:
        s = strategies.get("l2bg").configured(grow_rule="test-every-other")
        assert s.grow([0.5, 0.5, 0.5, 0.5], 0.5) == [1]
        assert strategies.get("l2bg").grow_rule == "conflict"  # the registered one unchanged
    finally:
        GROW_RULES._items.pop("test-every-other")


def test_configured_strategies():
    base = strategies.get("l2bg")
    assert base.configured() is base and base.configured(grow_rule="conflict") is base
    s = base.configured(grow_rule="released", bind_rule="released", similarity="linear-cka")
    assert s is not base and s.name == "l2bg"
    assert s.options() == {"grow_rule": "released", "bind_rule": "released",
                           "similarity": "linear-cka"}
    with pytest.raises(L2BGError, match="unknown bind rule"):
        base.configured(bind_rule="most")
    with pytest.raises(L2BGError, match="grow_rule applies to .* not random"):
        strategies.get("random").configured(grow_rule="released")
    assert strategies.get("random").configured(draw_seed=3).rng_seed(0) == 3
    assert strategies.get("random").rng_seed(7) == 7
