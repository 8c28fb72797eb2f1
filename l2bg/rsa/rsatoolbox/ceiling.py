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

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from l2bg.rsa import comparisons
from l2bg.rsa.reference import average_ranks

__all__ = ["Sample", "prepare_rows", "sample_scores"]

RANK_KINDS = ("spearman", "rho-a", "tau-a", "tau-b")


@dataclass
class Sample:
    """Distinct RDMs of a sample, prepared once: ``pooled`` the rows pool_rdm averages (unit
    rows for cosine/corr, average ranks otherwise), ``prep`` the rows ready for ``cross``."""

    pooled: Tensor
    prep: comparisons.Prepared
    dead: bool


def prepare_rows(kind: str, t: Tensor) -> Sample:
    """Transform rows t (K, m) once, for both the comparisons and the pooled ceilings."""
    if kind in RANK_KINDS:
        ranks = average_ranks(t)
        if kind in comparisons.KENDALL_METHODS:
            prep = comparisons.prepare(kind, t)[0]
        else:
            prep = comparisons._prepare_gemm(kind, t, ranks.clone())
        pooled = ranks
    else:
        prep = comparisons.prepare(kind, t)[0]
        pooled = prep.unit
    dead = bool(prep.dead.any())
    if prep.unit is not None and kind != "rho-a":
        dead = dead or bool((prep.unit.abs().sum(dim=1) == 0).any())
    return Sample(pooled, prep, dead)


def _group_matrix(rows: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """(U, K) counts of each distinct RDM among the rows of each group (np.unique order)."""
    values, inverse = np.unique(groups, return_inverse=True)
    h = np.zeros((len(values), k))
    np.add.at(h, (inverse.reshape(-1), rows), 1.0)
    return h


def sample_scores(kind: str, data: Sample, models: comparisons.Prepared | None,
                  model_rows: list[int], rows: np.ndarray, groups: np.ndarray,
                  ceiling: bool = True) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Mean score of each model over the sample's rows, and (lower, upper) noise ceiling.

    ``rows`` (n,) index the distinct prepared RDMs (repeats for resampled RDMs), ``groups`` (n,)
    their rdm_descriptor values; ``model_rows`` the number of predicted RDMs of each model, in
    order, prepared in ``models``. None for the ceiling where a row is degenerate (the caller asks
    rsatoolbox)."""
    k = data.pooled.shape[0]
    dev = data.pooled.device
    w = np.bincount(rows, minlength=k).astype(np.float64)
    wt = torch.as_tensor(w, device=dev)
    evals = np.zeros(len(model_rows))
    if models is not None and model_rows:
        s = comparisons.cross(kind, models, data.prep, degenerate=float("nan"))
        per_row = (s @ wt).cpu().numpy() / len(rows)
        lo = 0
        for j, n in enumerate(model_rows):
            evals[j] = per_row[lo:lo + n].mean()
            lo += n
    if not ceiling:
        return evals, None
    if data.dead:
        return evals, None
    h = torch.as_tensor(_group_matrix(rows, groups, k), device=dev)
    total = (wt @ data.pooled).unsqueeze(0)
    left = total if h.shape[0] == 1 else total - h @ data.pooled
    pooled = comparisons.prepare(kind, torch.cat([total, left]))[0]
    s = comparisons.cross(kind, pooled, data.prep, degenerate=float("nan"))
    count = h.sum(dim=1)
    upper = (h * s[:1]).sum(dim=1) / count
    lower = (h * s[1:]).sum(dim=1) / count
    return evals, (float(lower.mean()), float(upper.mean()))
