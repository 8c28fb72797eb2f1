"""The conflict model: per-slot conflict scores C = 1 − similarity (RSA-Spearman by default), task
scores, the conflict distribution and the prefix rule every grow rule uses (docs/design.md,
"Definitions"). The named rules, and the nucleus (the grow rule ``conflict``), are in
:mod:`l2bg.conflict.rules`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from l2bg.base.errors import L2BGError, ParamError
from l2bg.conflict.similarity import DEFAULT_SIMILARITY, MEASURES


def layer_conflicts(acts_t: Sequence[Tensor], acts_by_candidate: Mapping[str, Sequence[Tensor]],
                    *, similarity: str = DEFAULT_SIMILARITY, backend: str = "auto"
                    ) -> tuple[dict[str, list[float]], str | None]:
    """C_{t,b}(l) = 1 − s for every candidate b and slot l, where s is the similarity measure
    ``similarity`` (:data:`l2bg.conflict.similarity.MEASURES`; the paper's RSA-Spearman by default)
    between the independent net of t and the task-net of b, all fed the same inputs. 0 means
    the same geometry. t's part is computed once per slot and all candidates of a slot in one
    batch. Returns the scores and the backend that computed them."""
    names = list(acts_by_candidate)
    conflict, ran = MEASURES.get(similarity).conflicts(
        acts_t, [acts_by_candidate[b] for b in names], backend=backend)
    return {b: conflict[k].tolist() for k, b in enumerate(names)}, ran


def task_score(conflicts: Sequence[float]) -> float:
    """‖C_{t,b}‖₂ over the expandable slots."""
    return math.sqrt(math.fsum(c * c for c in conflicts))


def choose_bind(scores: Mapping[str, float]) -> str:
    """The candidate with the least task score; exact ties go to the earliest-learned (the
    mapping's insertion order is the learning order)."""
    if not scores:
        raise L2BGError("no bind candidates: learn a task first or list candidates explicitly")
    best = None
    for task, score in scores.items():
        if math.isnan(score):
            raise L2BGError(f"task score for candidate {task!r} is NaN")
        if best is None or score < scores[best]:
            best = task
    return best


def distribution(conflicts: Sequence[float]) -> list[float]:
    """C̃(l) = C(l) / Σ C, uniform when Σ C = 0."""
    check_scores(conflicts)
    total = math.fsum(conflicts)
    if total == 0:
        return [1.0 / len(conflicts)] * len(conflicts) if conflicts else []
    return [c / total for c in conflicts]


def ranked(weights: Sequence[float], *, ascending: bool = False) -> list[int]:
    """Positions ordered by weight, descending (or ascending); equal weights keep position
    order."""
    sign = 1.0 if ascending else -1.0
    return sorted(range(len(weights)), key=lambda i: (sign * weights[i], i))


def prefix(weights: Sequence[float], delta: float, order: Sequence[int]) -> list[int]:
    """The shortest prefix of ``order`` whose sum of weights reaches δ·Σw − 1e-12·Σw (exactly
    rounded float64 sums), sorted by position: the nucleus of every grow rule. δ=0 → ∅, δ=1 →
    every position; Σw = 0 weighs every position the same (prefix length ⌈δ·L⌉)."""
    check_delta(delta)
    check_scores(weights, "grow weight")
    L = len(weights)
    if sorted(order) != list(range(L)):
        raise L2BGError(f"a grow order must list each of the {L} slots once, got {list(order)}")
    if delta == 0 or L == 0:
        return []
    if delta == 1:
        return list(range(L))
    w = list(weights) if math.fsum(weights) > 0 else [1.0] * L
    total = math.fsum(w)
    target = delta * total - 1e-12 * total
    for k in range(L + 1):
        if math.fsum(w[i] for i in order[:k]) >= target:
            break
    return sorted(order[:k])


def check_delta(delta: float, param: str = "delta") -> float:
    """The one rule for a grow coefficient: a real number in [0, 1] (``param`` names where it
    came from in the message: ``delta``, ``deltas``, ``delta_set``)."""
    if (isinstance(delta, bool) or not isinstance(delta, (int, float)) or math.isnan(delta)
            or not 0 <= delta <= 1):
        raise ParamError(f"grow coefficient {{{param}}} must be in [0, 1], got {delta!r}", param)
    return float(delta)


def check_scores(conflicts: Sequence[float], what: str = "conflict score") -> None:
    for i, c in enumerate(conflicts):
        if not math.isfinite(c) or c < 0:
            raise L2BGError(f"{what} of slot {i} is {c!r}; it must be finite and >= 0")


def sample_count(n_val: int, m: int | None) -> int:
    """How many of a task's ``n_val`` validation inputs RSA feeds both nets: ``m``, default
    min(500, |V_t|); one line when ``m`` is out of range."""
    if m is None:
        m = min(500, n_val)
    elif m > n_val:
        raise ParamError(f"{{rsa_samples}} {m} exceeds the {n_val} validation samples of the "
                         f"task; use at most {n_val}", "rsa_samples")
    if m < 3:
        raise ParamError(f"RSA needs at least 3 samples, got {m}; raise {{rsa_samples}}",
                         "rsa_samples")
    return m


def sample_indices(n_val: int, m: int | None, seed: int) -> Tensor:
    """The m validation rows fed to both nets (:func:`sample_count`), fixed by seed."""
    m = sample_count(n_val, m)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_val, generator=gen)[:m].sort().values
