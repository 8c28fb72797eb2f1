"""Grow rules and bind rules: the named, recorded choices of the l2bg strategy
(docs/design.md, "Conflict rules in use").

Both kinds of rule read the conflict scores C(l) of the expandable slots (C = 1 − similarity):

* a **grow rule** turns C into a weight per slot and an order, and grows the shortest prefix of
  that order whose share of the total weight reaches δ (:func:`l2bg.conflict.prefix`);
* a **bind rule** turns each candidate's C into one number and binds to the least (ties to the
  earliest candidate).

Built-ins: grow rules ``conflict`` (the paper's text, the default), ``similar-first`` and
``released`` (the paper's released code); bind rules ``least-conflict`` (the default) and
``released``. :data:`GROW_RULES` and :data:`BIND_RULES` are the registries (``register`` adds
one); ``l2bg run``/``search`` choose with ``--grow-rule`` and ``--bind-rule``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from l2bg.base.registry import Registry
from l2bg.conflict import scores as conflict

__all__ = ["BIND_RULES", "DEFAULT_BIND_RULE", "DEFAULT_GROW_RULE", "GROW_RULES", "BindRule",
           "GrowRule", "nucleus", "similarity_weights"]

DEFAULT_GROW_RULE = "conflict"
DEFAULT_BIND_RULE = "least-conflict"


def similarity_weights(conflicts: Sequence[float]) -> list[float]:
    """ρ(l) = max(0, 1 − C(l)): the similarity of a slot, negative similarity counted as none."""
    return [max(0.0, 1.0 - float(c)) for c in conflicts]


@dataclass(frozen=True)
class GrowRule:
    """Which slots grow for δ: ``weigh(C)`` gives a weight w(l) >= 0 per slot; slots are ordered
    by w descending (``ascending=False``) or ascending, equal weights in slot order; the grown
    set is the shortest prefix whose sum of w reaches δ·Σw (uniform weights when Σw = 0).
    ``symbol`` names w in ``l2bg explain``; ``formula`` is the one-line definition."""

    name: str
    help: str
    formula: str
    weigh: Callable[[Sequence[float]], Sequence[float]]
    ascending: bool = False
    symbol: str = "C"

    def weights(self, conflicts: Sequence[float]) -> list[float]:
        conflict.check_scores(conflicts)
        return [float(w) for w in self.weigh(conflicts)]

    def order(self, conflicts: Sequence[float]) -> list[int]:
        """Positions in the order the prefix is taken."""
        return conflict.ranked(self.weights(conflicts), ascending=self.ascending)

    def grow(self, conflicts: Sequence[float], delta: float) -> list[int]:
        """Positions (into ``conflicts``) to grow for δ, sorted: the shortest prefix of
        :meth:`order` reaching δ of the total weight."""
        return conflict.prefix(self.weights(conflicts), delta, self.order(conflicts))

    def table(self, conflicts: Sequence[float]) -> list[dict[str, Any]]:
        """Every position in prefix order: its C, weight, share of Σw and cumulative share."""
        w = self.weights(conflicts)
        share = conflict.distribution(w)
        rows, cum = [], []
        for i in self.order(conflicts):
            cum.append(share[i])
            rows.append({"position": i, "conflict": float(conflicts[i]), "weight": w[i],
                         "share": share[i], "cumulative": math.fsum(cum)})
        return rows


@dataclass(frozen=True)
class BindRule:
    """Where a task binds: ``key(C)`` gives one number per candidate; the least wins, exact ties
    go to the earliest candidate (learning order, or the order the step lists them)."""

    name: str
    help: str
    formula: str
    key: Callable[[Sequence[float]], float]
    symbol: str = "‖C‖₂"

    def keys(self, layers: Mapping[str, Sequence[float]]) -> dict[str, float]:
        return {c: float(self.key(v)) for c, v in layers.items()}

    def choose(self, layers: Mapping[str, Sequence[float]]) -> str:
        """The candidate with the least key (``layers``: C per slot of every candidate)."""
        return conflict.choose_bind(self.keys(layers))


def nucleus(conflicts: Sequence[float], delta: float) -> list[int]:
    """Positions (into ``conflicts``) to grow for grow coefficient ``delta``, the paper's text:
    what the grow rule ``conflict`` (the default) grows, the one code path a run takes. Slots
    ordered by C descending (ties by position), the shortest prefix whose sum of C reaches
    δ·ΣC − 1e-12·ΣC in float64 (:func:`l2bg.conflict.scores.prefix`). δ=0 → ∅; δ=1 → every
    slot; monotone in δ. With ΣC = 0 the distribution is uniform, so the prefix length is ⌈δ·L⌉
    (up to the same tolerance). Returned sorted by position."""
    return GROW_RULES.get("conflict").grow(conflicts, delta)


def _rho_norm(conflicts: Sequence[float]) -> float:
    return conflict.task_score(similarity_weights(conflicts))


GROW_RULES: Registry[GrowRule] = Registry("grow rule", "grow_rule")
BIND_RULES: Registry[BindRule] = Registry("bind rule", "bind_rule")

GROW_RULES.register(GrowRule(
    "conflict", "grow the most conflicting slots (the paper's text)",
    "slots by C descending; shortest prefix with Σ C >= δ·ΣC", lambda c: list(c)))
GROW_RULES.register(GrowRule(
    "similar-first", "grow the least conflicting slots first (C ascending)",
    "slots by C ascending; shortest prefix with Σ C >= δ·ΣC", lambda c: list(c), ascending=True))
GROW_RULES.register(GrowRule(
    "released", "the paper's released code: grow the most similar slots (ρ = max(0, 1 − C))",
    "ρ = max(0, 1 − C); slots by ρ descending; shortest prefix with Σ ρ >= δ·Σρ",
    similarity_weights, symbol="ρ"))
BIND_RULES.register(BindRule(
    "least-conflict", "bind to the least task score ‖C‖₂ (the paper)", "least ‖C‖₂",
    conflict.task_score))
BIND_RULES.register(BindRule(
    "released", "the paper's released code: bind to the least ‖ρ‖₂, ρ = max(0, 1 − C)",
    "least ‖ρ‖₂, ρ = max(0, 1 − C)", _rho_norm, symbol="‖ρ‖₂"))
