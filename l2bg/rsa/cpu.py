"""The CPU front door at the floor: ``rsa.dissimilarity`` of CPU tensors at the cost of two Gram
products (docs/design.md §2.8.1).

* :func:`folded_rdm_triu`: l2bg's RDM (§2.1) of one CPU matrix from one BLAS syrk of the matrix
  itself, through numpy (:mod:`l2bg.rsa.blas`): the centring is folded into the Gram,
  ``G_c = G - r mu^T`` with the row sums r and means mu, so no centred copy of x is made. Where
  that would lose accuracy (a row whose mean dominates it, a constant row, squares that overflow
  or underflow) it declines and the caller runs the reference
  (:func:`~l2bg.rsa.reference.rdm_triu_torch`), which centres first and rescales exactly.
* :func:`spearman_rows`: Spearman of long triangles (few rows), each row sorted once by its
  integer keys (a radix sort) and its average ranks kept in sorted order: the cross sum
  ``sum_i ra_i rb_i`` is one scatter of one side's ranks and one gather through the other's
  order, with no rank vector of the other side and no concatenated copy. Equals the reference
  :func:`~l2bg.rsa.reference.compare_torch` (``'spearman'``): average ranks for ties, r = 0 for
  a constant row.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from l2bg.rsa.blas import SYRK_MAX_N, numpy_blas, syrk
from l2bg.rsa.comparisons import side_by_side
from l2bg.rsa.reference import acc_dtype, distances_, inverse_norms, pack_block, sort_rows

__all__ = ["FOLD_MAX_RATIO", "folded_rdm_triu", "sorted_ranks", "spearman_rows"]

FOLD_MAX_RATIO = 4.0
"""The folded Gram is used while every row has ``||x_i||^2 <= FOLD_MAX_RATIO ||x_i - mu_i||^2``:
the cancellation in ``G_ii - r_i mu_i`` then costs at most log2(4) = 2 bits."""


def folded_rdm_triu(x: Tensor) -> Tensor | None:
    """The packed RDM (m,) of one CPU matrix x (n, d), as :func:`l2bg.rsa.rdm_triu` (the
    reference :func:`~l2bg.rsa.reference.rdm_triu_torch`) computes it, from one syrk of x.

    None where this does not apply: not a numpy-BLAS tensor (``numpy_blas``), more than
    ``SYRK_MAX_N`` rows, no features, squares that overflow or underflow, or a row whose mean
    dominates it (``FOLD_MAX_RATIO``; constant rows included). The caller then runs the
    reference, whose centring and power-of-two rescaling handle those exactly."""
    if not numpy_blas(x) or x.ndim != 2 or x.shape[0] > SYRK_MAX_N or x.shape[1] == 0:
        return None
    n, d = x.shape
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):  # declined below
        g = syrk(x)
    acc = acc_dtype(x.dtype)
    # row sums by BLAS (x @ 1): x was just read by the syrk and is still in cache
    r = x.sum(dim=1).double()  # in x's dtype (a cascade sum): float64 costs 10x here
    sq = g.diagonal().double()
    mean = r / d
    ss = sq - r * mean
    tiny = torch.finfo(acc).tiny * 2.0**24
    ok = torch.isfinite(sq) & (sq > tiny) & (ss * FOLD_MAX_RATIO >= sq)
    if not bool(ok.all()):
        return None
    inv = inverse_norms(ss, mean, d).to(acc)
    g.addr_(r.to(acc), mean.to(acc), alpha=-1.0)  # G - r mu^T: the centred co-moments
    distances_(g.unsqueeze(0), inv, inv)
    out = torch.empty((1, n * (n - 1) // 2), dtype=acc)
    pack_block(out, 0, n, g.unsqueeze(0))
    return out[0]


def sorted_ranks(s: Tensor) -> tuple[Tensor | None, float]:
    """For one sorted CPU key row s (m,): the average ranks minus their mean (m - 1) / 2, in
    sorted order (float64; None when there are no ties: they are then ``arange(m) - (m - 1) /
    2``), and their sum of squares (0 for a constant row). numpy on a zero-copy view: a tie
    group's average rank is the mean of its first and last positions, read from the positions
    where the sorted keys change (as ``scipy.stats.rankdata``; 2.5x torch's ops here)."""
    m = s.numel()
    v = s.numpy()
    new = np.empty(m, dtype=bool)
    new[0] = True
    np.not_equal(v[1:], v[:-1], out=new[1:])
    if new.all():
        return None, (float(m) ** 3 - m) / 12.0
    narrow = np.int32 if m < 2**31 else np.int64  # half the memory traffic
    group = np.cumsum(new, dtype=narrow)  # 1-based group of every sorted position
    bounds = np.append(np.flatnonzero(new), m).astype(narrow)  # group g: [b[g - 1], b[g])
    ranks = bounds[group].astype(np.float64)
    group -= 1
    ranks += bounds[group]
    ranks *= 0.5
    ranks -= 0.5 + (m - 1) / 2  # mean of first and last 0-based positions, centred
    return torch.from_numpy(ranks), float(ranks @ ranks)


def _centred_arange(m: int, device: torch.device) -> Tensor:
    return torch.arange(m, dtype=torch.float64, device=device).sub_((m - 1) / 2)


def _prepare(t: Tensor) -> tuple[Tensor, list[Tensor | None], Tensor]:
    """Rows t (K, m): their sort order (K, m), sorted centred ranks per row, sums of squares."""
    s, order = sort_rows(t)
    ranks, ss = zip(*(sorted_ranks(row) for row in s), strict=True)
    return order, list(ranks), torch.tensor(ss, dtype=torch.float64, device=t.device)


def spearman_rows(ta: Tensor, tb: Tensor) -> Tensor:
    """Spearman r (float64, (K,)) of rows ta (Ka, m) and tb (Kb, m), Ka and Kb 1 or K (broadcast).

    Each row is sorted once (``sort_rows``: int keys, radix sorts); the side with fewer rows
    has its ranks scattered into place once, the other side's order gathers them and a dot
    product with its sorted ranks gives the cross sum. The two sides are prepared side by side
    in two threads where torch runs one CPU thread (``comparisons.side_by_side``)."""
    if ta.shape[0] > tb.shape[0]:
        ta, tb = tb, ta  # symmetric: a is the side with fewer rows
    m = ta.shape[-1]
    (oa, ra, ssa), (ob, rb, ssb) = side_by_side(_prepare, ta, tb)
    ar = None
    dense = torch.empty((ta.shape[0], m), dtype=torch.float64, device=ta.device)
    for i, ranks in enumerate(ra):
        if ranks is None:
            ar = _centred_arange(m, ta.device) if ar is None else ar
            ranks = ar
        dense[i].scatter_(0, oa[i], ranks)
    cross = torch.empty(tb.shape[0], dtype=torch.float64, device=ta.device)
    for k in range(tb.shape[0]):
        gathered = dense[k if dense.shape[0] > 1 else 0].index_select(0, ob[k])
        if rb[k] is None:
            ar = _centred_arange(m, ta.device) if ar is None else ar
            cross[k] = torch.dot(gathered, ar)
        else:
            cross[k] = torch.dot(gathered, rb[k])
    den = torch.sqrt(ssa * ssb)
    dead = den == 0  # a constant row: every rank equals the mean
    r = torch.where(dead, 0.0, cross / torch.where(dead, 1.0, den))
    return r.clamp_(-1.0, 1.0)
