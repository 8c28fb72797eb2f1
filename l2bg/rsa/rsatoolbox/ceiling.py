"""Batched model scores and leave-one-out noise ceilings of one bootstrap sample.

rsatoolbox's ``boot_noise_ceiling`` pools (``pool_rdm``) the sample's RDMs once per left-out
group: each RDM is transformed (cosine: scaled to unit RMS; corr: z-scored; rank methods:
average ranks), the transformed RDMs are averaged, and the average is compared with the left-out
RDMs. Comparisons are invariant to the average's positive scale, so the pooled RDM of the
sample without group u is ``sum - sum over u's copies`` of the transformed rows: one product
(groups x RDMs) gives every leave-one-out pool, one ``prepare`` all of them. Rank sums are sums
of halves, exact in float64, so the ties of rsatoolbox's averaged ranks are kept exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from l2bg.rsa import comparisons
from l2bg.rsa.reference import average_ranks

__all__ = ["ColumnRanks", "Sample", "is_dead", "prepare_rows", "sample_scores"]

RANK_KINDS = ("spearman", "rho-a", "tau-a", "tau-b")
ILL_CONDITIONED = 1e-4
GRAM_SAFE = 1e-3
"""Pools of norm at least this times their row count are scored from the unit rows' Gram
matrix (rounding error below 1e-12); smaller ones from their explicit sums."""
"""A pool of c unit rows whose norm is below this times c is left to rsatoolbox (cancellation:
its direction would be rounding noise, which only rsatoolbox's own operations reproduce)."""


@dataclass
class Sample:
    """Distinct RDMs of a sample, prepared once: ``pooled`` the rows pool_rdm averages (unit
    rows for cosine/corr, average ranks otherwise), ``prep`` the rows ready for ``cross``."""

    pooled: Tensor
    prep: comparisons.Prepared
    dead: bool
    gram: Tensor | None = None  # cosine/corr: unit rows' products, for pools in Gram space
    scores: dict = field(default_factory=dict)  # models' scores against these rows, by id

    def model_scores(self, kind: str, models: comparisons.Prepared) -> Tensor:
        """(models, RDMs) scores, computed once per prepared models (a sample of RDMs only
        reuses them)."""
        key = id(models)
        if key not in self.scores:
            self.scores = {key: (models, comparisons.cross(kind, models, self.prep,
                                                           degenerate=float("nan")))}
        return self.scores[key][1]


def prepare_rows(kind: str, t: Tensor, ranks: Tensor | None = None) -> Sample:
    """Transform rows t (K, m) once, for both the comparisons and the pooled ceilings
    (``ranks``: their average ranks where the caller has them)."""
    if kind in RANK_KINDS:
        ranks = average_ranks(t) if ranks is None else ranks
        if kind in comparisons.KENDALL_METHODS:
            prep = comparisons.prepare(kind, t)[0]
        else:
            prep = comparisons._prepare_gemm(kind, t, ranks.clone())
        pooled = ranks
    else:
        prep = comparisons.prepare(kind, t)[0]
        pooled = prep.unit
    return Sample(pooled, prep, is_dead(kind, prep))


def is_dead(kind: str, prep: comparisons.Prepared) -> bool:
    """Whether a row is degenerate (constant, zero norm): rsatoolbox's own arithmetic decides
    those samples (its ``_cosine`` places the scores of the other rows by ``np.putmask``)."""
    dead = bool(prep.dead.any())
    if prep.unit is not None and kind != "rho-a":
        dead = dead or bool((prep.unit.abs().sum(dim=1) == 0).any())
    return dead


class ColumnRanks:
    """Average ranks of rows t (R, m) over any selection of their columns (with repeats),
    without sorting again: each row is sorted once; a selection weights every column by its
    count, and a tie group of weight g above weight B ranks B + (g + 1) / 2 (integer sums, exact).
    Equals ``average_ranks(t[:, cols])``."""

    def __init__(self, t: Tensor) -> None:
        self.m = t.shape[1]
        s, self.order = torch.sort(t, dim=1, stable=True)
        new = torch.ones_like(s, dtype=torch.bool)
        new[:, 1:] = s[:, 1:] != s[:, :-1]
        pos = torch.arange(self.m, device=t.device).expand_as(s)
        # first and last sorted position of each position's tie group
        self.first = torch.cummax(torch.where(new, pos, 0), dim=1).values
        last_new = torch.ones_like(new)
        last_new[:, :-1] = new[:, 1:]
        rev = torch.where(last_new, pos, self.m).flip(1)
        self.last = torch.cummin(rev, dim=1).values.flip(1)

    def ranks(self, cols: Tensor) -> Tensor:
        """(R, len(cols)) float64 average ranks over the columns ``cols``."""
        mult = torch.bincount(cols, minlength=self.m).to(torch.float64)
        cum = torch.cumsum(mult[self.order], dim=1)
        end = cum.gather(1, self.last)
        start = torch.where(self.first > 0, cum.gather(1, (self.first - 1).clamp_(min=0)), 0.0)
        sorted_ranks = end - (end - start - 1.0) * 0.5
        ranks = torch.empty_like(sorted_ranks).scatter_(1, self.order, sorted_ranks)
        return ranks[:, cols]


def _group_matrix(rows: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """(U, K) counts of each distinct RDM among the rows of each group (np.unique order)."""
    values, inverse = np.unique(groups, return_inverse=True)
    h = np.zeros((len(values), k))
    np.add.at(h, (inverse.reshape(-1), rows), 1.0)
    return h


def sample_scores(kind: str, data: Sample, models: comparisons.Prepared | None,
                  model_rows: list[int], rows: np.ndarray, groups: np.ndarray,
                  ceiling: bool = True) -> tuple[np.ndarray | None, tuple[float, float] | None]:
    """Mean score of each model over the sample's rows, and (lower, upper) noise ceiling.

    ``rows`` (n,) index the distinct prepared RDMs (repeats for resampled RDMs), ``groups`` (n,)
    their rdm_descriptor values; ``model_rows`` the number of predicted RDMs of each model, in
    order, prepared in ``models``. None for both where a row is degenerate (the caller asks
    rsatoolbox)."""
    if data.dead or (models is not None and is_dead(kind, models)):
        return None, None
    k = data.pooled.shape[0]
    dev = data.pooled.device
    w = np.bincount(rows, minlength=k).astype(np.float64)
    wt = torch.as_tensor(w, device=dev)
    evals = np.zeros(len(model_rows))
    if models is not None and model_rows:
        s = data.model_scores(kind, models)
        per_row = (s @ wt).cpu().numpy() / len(rows)
        lo = 0
        for j, n in enumerate(model_rows):
            evals[j] = per_row[lo:lo + n].mean()
            lo += n
    if not ceiling:
        return evals, None
    h = torch.as_tensor(_group_matrix(rows, groups, k), device=dev)
    count = h.sum(dim=1)
    if kind in ("cosine", "pearson"):
        nc = _gram_ceiling(data, wt, h, count, len(rows))
        if nc is not None:
            return evals, nc
    total = (wt @ data.pooled).unsqueeze(0)
    left = total if h.shape[0] == 1 else total - h @ data.pooled
    both = torch.cat([total, left])
    if kind in ("cosine", "pearson"):  # sums of unit rows that (nearly) cancel: the pooled
        # direction is rounding noise, reproducible only by rsatoolbox's own arithmetic
        centred = both - both.mean(dim=1, keepdim=True) if kind == "pearson" else both
        size = torch.cat([count.new_full((1,), float(len(rows))), len(rows) - count]) \
            if h.shape[0] > 1 else count.new_full((2,), float(len(rows)))
        if bool((torch.linalg.vector_norm(centred, dim=1) < ILL_CONDITIONED * size).any()):
            return evals, None
    pooled = comparisons.prepare(kind, both)[0]
    s = comparisons.cross(kind, pooled, data.prep, degenerate=float("nan"))
    upper = (h * s[:1]).sum(dim=1) / count
    lower = (h * s[1:]).sum(dim=1) / count
    return evals, (float(lower.mean()), float(upper.mean()))


def _gram_ceiling(data: Sample, wt: Tensor, h: Tensor, count: Tensor,
                  n: int) -> tuple[float, float] | None:
    """Cosine/corr ceilings in Gram space: a pool is c @ A of unit rows A (centred for corr, so
    its sums are centred too), its product with row r is (c @ G)[r] and its norm sqrt(c G c^T):
    O(groups x RDMs^2) per sample. None where a pool is too small for this to be exact to
    1e-12 (the explicit sums decide)."""
    if data.gram is None:
        data.gram = data.pooled @ data.pooled.T
    coef = wt.unsqueeze(0) if h.shape[0] == 1 else torch.cat([wt.unsqueeze(0), wt - h])
    cg = coef @ data.gram
    norm = (cg * coef).sum(dim=1).clamp_(min=0.0).sqrt_()
    size = torch.cat([count.new_full((1,), float(n)), n - count]) if h.shape[0] > 1 \
        else count.new_full((1,), float(n))
    if bool((norm < GRAM_SAFE * size).any()):
        return None
    s = (cg / norm.unsqueeze(1)).clamp_(-1.0, 1.0)
    upper = (h * s[:1]).sum(dim=1) / count
    lower = upper if h.shape[0] == 1 else (h * s[1:]).sum(dim=1) / count
    return float(lower.mean()), float(upper.mean())
