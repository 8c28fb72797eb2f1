"""The conflict model: per-slot conflict scores from RSA, task scores, the conflict distribution
and the nucleus of slots to grow (docs/design.md, "Definitions")."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from l2bg.errors import L2BGError


def layer_conflicts(acts_t: Sequence[Tensor], acts_by_candidate: Mapping[str, Sequence[Tensor]],
                    *, method: str = "spearman", backend: str = "auto"
                    ) -> tuple[dict[str, list[float]], str | None]:
    """C_{t,b}(l) = 1 − r for every candidate b and slot l: r compares the RDMs of the
    independent net of t and the task-net of b, all fed the same inputs. Range [0, 2]; 0 means
    the same geometry. t's RDMs are computed once and all candidates of a slot in one batch.
    Returns the scores and the RSA backend that computed them."""
    from l2bg import rsa

    names = list(acts_by_candidate)
    d, ran = rsa.dissimilarities(acts_t, [acts_by_candidate[b] for b in names], method=method,
                                 backend=backend, return_backend=True)
    return {b: [float(c) for c in d[k]] for k, b in enumerate(names)}, ran


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
    _check_scores(conflicts)
    total = math.fsum(conflicts)
    if total == 0:
        return [1.0 / len(conflicts)] * len(conflicts) if conflicts else []
    return [c / total for c in conflicts]


def nucleus(conflicts: Sequence[float], delta: float) -> list[int]:
    """Positions (into ``conflicts``) to grow for grow coefficient ``delta``: slots ordered by C
    descending (ties by position), the shortest prefix whose sum of C reaches δ·ΣC − 1e-12·ΣC in
    float64. δ=0 → ∅; δ=1 → every slot; monotone in δ. With ΣC = 0 the distribution is uniform,
    so the prefix length is ⌈δ·L⌉ (up to the same tolerance). Returned sorted by position."""
    check_delta(delta)
    _check_scores(conflicts)
    L = len(conflicts)
    if delta == 0 or L == 0:
        return []
    if delta == 1:
        return list(range(L))
    order = sorted(range(L), key=lambda i: (-conflicts[i], i))
    weights = list(conflicts) if math.fsum(conflicts) > 0 else [1.0] * L
    total = math.fsum(weights)
    target = delta * total - 1e-12 * total
    for k in range(L + 1):
        if math.fsum(weights[i] for i in order[:k]) >= target:
            break
    chosen = order[:k]
    return sorted(chosen)


def check_delta(delta: float) -> float:
    if not isinstance(delta, (int, float)) or math.isnan(delta) or not 0 <= delta <= 1:
        raise L2BGError(f"grow coefficient delta must be in [0, 1], got {delta!r}")
    return float(delta)


def _check_scores(conflicts: Sequence[float]) -> None:
    for i, c in enumerate(conflicts):
        if not math.isfinite(c) or c < 0:
            raise L2BGError(f"conflict score of slot {i} is {c!r}; scores must be finite and >= 0")


def sample_indices(n_val: int, m: int | None, seed: int) -> Tensor:
    """The m validation rows fed to both nets (m defaults to min(500, |V_t|)), fixed by seed."""
    if m is None:
        m = min(500, n_val)
    elif m > n_val:
        raise L2BGError(f"--rsa-samples {m} exceeds the {n_val} validation samples of the task; "
                        f"use at most {n_val}")
    if m < 3:
        raise L2BGError(f"RSA needs at least 3 samples, got {m}; raise --rsa-samples")
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_val, generator=gen)[:m].sort().values
