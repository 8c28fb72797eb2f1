"""Continual-learning metrics exactly as docs/design.md ("Metrics") defines them.

R is the accuracy matrix as a list of rows: R[i][j] = accuracy (fraction) on task j after learning
task i, for j <= i; entries with j > i are None. Indices are 0-based here; the docs' 1-based
formulas map one to one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from l2bg.base.errors import L2BGError

Matrix = Sequence[Sequence[float | None]]


def _check(R: Matrix) -> int:
    T = len(R)
    if T == 0:
        raise L2BGError("accuracy matrix is empty: learn at least one task")
    for i, row in enumerate(R):
        if len(row) != T:
            raise L2BGError(f"accuracy matrix row {i} has {len(row)} entries, expected {T}")
        if any(row[j] is None for j in range(i + 1)):
            raise L2BGError(f"accuracy matrix row {i} misses an entry for a learned task")
    return T


def average_accuracy(R: Matrix) -> float:
    """Mean accuracy over all tasks after learning the last one (the last row)."""
    T = _check(R)
    return sum(R[-1][j] for j in range(T)) / T


def bwt(R: Matrix) -> float | None:
    """Backward transfer: mean over i < T of R[T][i] − R[i][i]; None for a single task."""
    T = _check(R)
    if T < 2:
        return None
    return sum(R[-1][i] - R[i][i] for i in range(T - 1)) / (T - 1)


def fwt(R: Matrix, independent_acc: Sequence[float]) -> float | None:
    """Forward transfer in the expansion sense: mean over tasks 2..T of R[i][i] − A_φ,i, the
    accuracy of task i's independent net; None for a single task."""
    T = _check(R)
    if len(independent_acc) != T:
        raise L2BGError(f"need {T} independent accuracies, got {len(independent_acc)}")
    if T < 2:
        return None
    return sum(R[i][i] - independent_acc[i] for i in range(1, T)) / (T - 1)


def _check_sizes(independent_err: Sequence[float], n_val: Sequence[int]) -> None:
    if len(independent_err) != len(n_val):
        raise L2BGError("need one validation size per independent error")
    if any(n < 1 for n in n_val):
        raise L2BGError("validation sets must be non-empty to compute the gain")


def _floored_errors(independent_err: Sequence[float], n_val: Sequence[int]) -> list[float]:
    _check_sizes(independent_err, n_val)
    return [max(e, 1.0 / (2 * n)) for e, n in zip(independent_err, n_val, strict=True)]


def smoothed_error(err: float, n: int) -> float:
    """(errors + ½) / (|V| + 1) for an error rate ``err`` on |V| = ``n`` samples: never 0, the
    same function for the run and its baseline."""
    return (err * n + 0.5) / (n + 1)


def gain(final_err: Sequence[float], independent_err: Sequence[float],
         n_val: Sequence[int]) -> float:
    """Gain Δ in percent, higher is better: 100/T · Σ (Ê_φ,t − Ê_π,t) / Ê_φ,t on smoothed errors
    Ê = (errors + ½)/(|V_t| + 1), for the run and the baseline alike, so a run that matches its
    baselines scores exactly 0."""
    if len(final_err) != len(independent_err):
        raise L2BGError("need one final and one independent error per task")
    _check_sizes(independent_err, n_val)
    T = len(n_val)
    total = 0.0
    for e, b, n in zip(final_err, independent_err, n_val, strict=True):
        run, base = smoothed_error(e, n), smoothed_error(b, n)
        total += (base - run) / base
    return 100.0 / T * total


def gain_raw(final_err: Sequence[float], independent_err: Sequence[float],
             n_val: Sequence[int]) -> float:
    """The paper's Δ_π = Σ (E_π,t − E_φ,t) / E_φ,t on raw errors (lower is better), with only the
    baseline's error floored at 1/(2|V_t|) so that a perfect baseline does not divide by 0."""
    base = _floored_errors(independent_err, n_val)
    return sum((e - b) / b for e, b in zip(final_err, base, strict=True))


#: The decathlon score's exponent γ and the score of a perfect domain (Rebuffi et al., 2017).
DECATHLON_GAMMA = 2.0
DECATHLON_MAX = 1000.0


def decathlon_scores(errors: Sequence[float], baseline_err: Sequence[float],
                     n: Sequence[int]) -> list[float]:
    """The Visual Decathlon score of each domain d (Rebuffi et al., 2017):
    α_d · max(0, E_d^max − E_d)^γ with γ = 2, E_d^max = 2 × the baseline's error (floored at
    1/(2|V_d|) as the gain floors it, so a perfect baseline never divides by zero) and
    α_d = 1000 / (E_d^max)^γ, so that a perfect domain scores 1000. Their sum is the score S."""
    if len(errors) != len(baseline_err):
        raise L2BGError("need one error and one baseline error per domain")
    base = _floored_errors(baseline_err, n)
    out = []
    for e, b in zip(errors, base, strict=True):
        e_max = 2.0 * b
        out.append(DECATHLON_MAX * (max(0.0, e_max - e) / e_max) ** DECATHLON_GAMMA)
    return out


def nondominated(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (accuracy, size) points, whether each is on the Pareto front: no other point has
    accuracy >= and size <= with one of them strict (accuracy maximised, size minimised). Equal
    points are all on it; callers that group them (one network) pass one of each."""
    return [
        not any(a2 >= a and p2 <= p and (a2 > a or p2 < p) for a2, p2 in points)
        for a, p in points
    ]


def mean_sd(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds of the values that are not None (sd 0 for
    one value; both NaN for none): the one aggregation of the quality table and
    ``l2bg run --seeds``."""
    vals = [v for v in values if v is not None]
    if not vals:
        return math.nan, math.nan
    return statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0
