"""RDMs with rsatoolbox's dissimilarity conventions, as batched GEMMs in torch.

These are the numerical cores of the rsatoolbox drop-in (:mod:`l2bg.rsa.rsatoolbox`); l2bg's own
RDM is :func:`l2bg.rsa.rdm` (correlation distance with the constant-sample rule, docs/design.md
"RDM"). Inputs are patterns (B, n, p): B RDMs of n conditions over p channels; outputs are packed
strict upper triangles (B, m), m = n (n - 1) / 2, in the dtype of the input (float64 by default).

* ``euclidean``: ``(s_i + s_j - 2 <x_i, x_j>) / p`` with ``s_i = ||x_i||^2``: the squared
  distance over the number of channels.
* ``correlation``: ``1 - <u_i, u_j>`` with u the rows centred and scaled to unit norm; NaN in every
  pair of a row whose values are all equal; not clamped.
* ``mahalanobis``: ``(k_ii + k_jj - 2 k_ij) / p`` with ``K = X P X^T`` for a precision P.
* ``crossnobis``: over folds f, ``(a_fi - a_fj)^T P (b_fi - b_fj) / p`` averaged, with a_f the
  training and b_f the test patterns of fold f (``crossnobis``), or averaged over fold pairs with
  one precision per pair (``crossnobis_fold_pairs``).

Symmetric products (euclidean, correlation) are one BLAS syrk on the CPU (half a GEMM), else the
upper row blocks of the Gram (about (nb + 1) / (2 nb) of the full GEMM), as mahalanobis's
``(X P) X^T``; crossnobis is two GEMMs for all folds at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from l2bg.rsa.blas import matmul, syrk
from l2bg.rsa.reference import is_constant, pack_block, scale_rows_pow2

__all__ = [
    "correlation",
    "crossnobis",
    "crossnobis_fold_pairs",
    "euclidean",
    "mahalanobis",
    "pack_blocks",
    "row_blocks",
    "symmetric_gram",
    "upper_blocks",
]


def row_blocks(n: int) -> list[tuple[int, int]]:
    """Row blocks for the upper-triangular Gram: about 128 rows each, at most 16."""
    nb = max(1, min(16, n // 128))
    edges = [round(i * n / nb) for i in range(nb + 1)]
    return [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True) if hi > lo]


def upper_blocks(left: Tensor, right: Tensor) -> Iterator[tuple[int, int, Tensor]]:
    """Row blocks ``(lo, hi, left[:, lo:hi] @ right[:, lo:]^T)`` of a product whose strict upper
    triangle is all that is needed (left, right: (B, n, p))."""
    n = left.shape[1]
    for lo, hi in row_blocks(n):
        if left.shape[0] == 1:  # numpy's BLAS on the CPU
            yield lo, hi, matmul(left[:, lo:hi], right[0, lo:].T)
        else:
            yield lo, hi, torch.matmul(left[:, lo:hi], right[:, lo:].mT)


def symmetric_gram(a: Tensor) -> Tensor:
    """``a @ a^T`` for a (n, k) (or (B, n, k)): BLAS syrk on the CPU, else its upper row
    blocks mirrored; about half the GEMM work of the full product, and exactly symmetric."""
    batched = a.ndim == 3
    if not batched:
        g = syrk(a)
        if g is not None:
            return g
    a = a if batched else a.unsqueeze(0)
    b, n, _ = a.shape
    g = torch.zeros((b, n, n), dtype=a.dtype, device=a.device)
    for lo, hi, block in upper_blocks(a, a):
        g[:, lo:hi, lo:] = block
    g = torch.triu(g).add_(torch.triu(g, 1).mT)
    return g if batched else g.squeeze(0)


def _self_blocks(x: Tensor) -> tuple[list | Iterator, Tensor | None]:
    """Row blocks of ``x @ x^T`` (B, n, n) covering its upper triangle, and the row norms
    squared when they come for free: one syrk block for a single CPU matrix (its diagonal),
    else the upper row blocks (and None)."""
    if x.shape[0] == 1:
        g = syrk(x[0])
        if g is not None:
            return [(0, x.shape[1], g.unsqueeze(0))], g.diagonal().clone().unsqueeze(0)
    return upper_blocks(x, x), None


def pack_blocks(n: int, batch: int, blocks: Iterator[tuple[int, int, Tensor]],
                dtype: torch.dtype, device: torch.device) -> Tensor:
    """Packed strict upper triangles (B, m) from row blocks of finished dissimilarities."""
    out = torch.empty((batch, n * (n - 1) // 2), dtype=dtype, device=device)
    for lo, hi, block in blocks:
        pack_block(out, lo, hi, block)
    return out


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Per row, ``<a_i, b_i>`` (B, n) of a, b (B, n, p), without an elementwise temporary."""
    return torch.matmul(a.unsqueeze(-2), b.unsqueeze(-1))[..., 0, 0]


def euclidean(x: Tensor) -> Tensor:
    """Squared Euclidean distance over the channel count, packed (B, m), of patterns x."""
    b, n, p = x.shape
    grams, s = _self_blocks(x)
    s = _rowdot(x, x) if s is None else s

    def blocks():
        for lo, hi, g in grams:  # g is ours: the distances are made in place
            yield lo, hi, g.mul_(-2.0).add_(s[:, lo:hi, None]).add_(s[:, None, lo:]).div_(p)

    return pack_blocks(n, b, blocks(), x.dtype, x.device)


def correlation(x: Tensor) -> Tensor:
    """Correlation distance ``1 - r`` between rows, packed (B, m); NaN for constant rows.

    The rows are centred once; the Gram of the centred rows gives the squared norms on its
    diagonal, so each block is normalised as it is packed (no normalised copy of x). Rows
    whose squares overflow or underflow are first rescaled by powers of two (exact)."""
    b, n, _ = x.shape
    u = x - x.mean(dim=-1, keepdim=True)
    constant = is_constant(x)
    grams, ss = _self_blocks(u)
    ss = _rowdot(u, u) if ss is None else ss
    tiny = torch.finfo(u.dtype).tiny * 2.0**24
    if bool((~constant & ~((ss > tiny) & torch.isfinite(ss))).any()):
        u = scale_rows_pow2(u).to(x.dtype)
        grams, ss = _self_blocks(u)
        ss = _rowdot(u, u) if ss is None else ss
    inv = torch.where(constant, torch.nan, ss.rsqrt())

    def blocks():
        for lo, hi, g in grams:  # g is ours: the distances are made in place
            yield lo, hi, g.mul_(inv[:, lo:hi, None]).mul_(inv[:, None, lo:]).neg_().add_(1.0)

    return pack_blocks(n, b, blocks(), x.dtype, x.device)


def mahalanobis(x: Tensor, precision: Tensor) -> Tensor:
    """Squared Mahalanobis distance over the channel count, packed (B, m), for precision
    (p, p) or (B, p, p)."""
    b, n, p = x.shape
    xp = matmul(x, precision)
    diag = _rowdot(xp, x)

    def blocks():
        for lo, hi, k in upper_blocks(xp, x):
            yield lo, hi, k.mul_(-2.0).add_(diag[:, lo:hi, None]).add_(diag[:, None, lo:]).div_(p)

    return pack_blocks(n, b, blocks(), x.dtype, x.device)


def _cross_terms(s: Tensor, scale: float) -> Tensor:
    """Packed ``(s_ii + s_jj - s_ij - s_ji) * scale`` of square matrices s (n, n)."""
    n = s.shape[-1]
    iu = torch.triu_indices(n, n, 1, device=s.device)
    d = s.diagonal()
    return (d[iu[0]] + d[iu[1]] - s[iu[0], iu[1]] - s[iu[1], iu[0]]) * scale


def crossnobis(train: Tensor, test: Tensor, precision: Tensor | None) -> Tensor:
    """Cross-validated Mahalanobis distance, packed (m,), from the training and test patterns
    of every fold, laid out (n, F, p). Two GEMMs for all F folds: ``T = train P`` (rows of all
    folds at once), then ``S = T' test'^T`` over the concatenated (F p) features, which sums
    the folds' kernels ``train_f P test_f^T``."""
    n, folds, p = train.shape
    left = train if precision is None else matmul(train.reshape(n * folds, p), precision)
    s = matmul(left.reshape(n, folds * p), test.reshape(n, folds * p).T)
    return _cross_terms(s, 1.0 / (folds * p))


def crossnobis_fold_pairs(means: Tensor, precisions: Tensor) -> Tensor:
    """Crossnobis over fold pairs: ``means`` (F, n, p) per-fold patterns, ``precisions``
    (F (F - 1) / 2, p, p) one per pair (i < j, row-major); the pairs' RDMs averaged. Two
    batched GEMMs for all pairs."""
    folds, n, p = means.shape
    iu = torch.triu_indices(folds, folds, 1, device=means.device)
    left = torch.bmm(means[iu[0]], precisions)
    s = torch.bmm(left, means[iu[1]].mT).sum(dim=0)
    return _cross_terms(s, 1.0 / (iu.shape[1] * p))
