"""The math of RDM comparisons, each RDM prepared (centred, normalised or ranked) once.

A comparison of two sets of triangles is split in two steps: ``prepare`` works on each RDM once
(however many RDMs it is compared with), and ``pairs`` / ``cross`` combine prepared RDMs: GEMMs
for the correlation family, a batched O(m log m) discordant-pair count for Kendall's tau. The
registry (:mod:`l2bg.rsa.methods`) builds ``compare`` (broadcast pairs) and ``compare_matrix``
(every pair, as rsatoolbox returns it) from these two steps.

Definitions (float64 results, docs/design.md "Compare"):

* ``pearson``: centred dot product over the norms; ``spearman``: Pearson of average ranks.
* ``cosine``: dot product over the norms, not centred.
* ``rho-a``: ``12 Σ (ra - (m+1)/2)(rb - (m+1)/2) / (m^3 - m)`` on average ranks (rsatoolbox).
* ``tau-b``: ``(C - D) / sqrt((T - Ta)(T - Tb))`` and ``tau-a``: ``(C - D) / T``, with T =
  m (m - 1) / 2 pairs, C / D concordant / discordant pairs, Ta / Tb pairs tied in a / in b
  (as ``scipy.stats.kendalltau`` and rsatoolbox's tau-a).

Degenerate input gives r = 0 in l2bg's convention: a constant triangle (correlations, ranks,
Kendall) or an all-zero one (cosine). ``degenerate=nan`` gives NaN instead where scipy and
rsatoolbox do (tau-b of a constant triangle).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from l2bg.rsa.reference import (
    average_ranks,
    is_constant,
    scale_rows_pow2,
    sort_rows,
)

__all__ = [
    "Prepared",
    "count_discordant",
    "count_discordant_torch",
    "cross",
    "dense_ranks",
    "pairs",
    "prepare",
    "side_by_side",
]

T = TypeVar("T")

_PAIR_CHUNK = 1 << 22
"""Elements (pairs x m) handled at once by the Kendall pair loop: bounds its int64 work space."""


@dataclass
class Prepared:
    """One side of a comparison: K triangles of m pairs, ready to be combined.

    ``unit``: (K, m) float64 rows with unit norm (zero rows where degenerate) for the GEMM
    family; ``scale`` multiplies their dot products (rho-a). For Kendall: ``ranks`` (K, m)
    dense ranks (0-based, int32 or int64), ``order`` (K, m) a permutation sorting each row, ``ties``
    (K,) int64 pairs tied within the row, ``dead`` (K,) rows that are constant.
    """

    m: int
    dead: Tensor
    unit: Tensor | None = None
    scale: float = 1.0
    ranks: Tensor | None = None
    order: Tensor | None = None
    ties: Tensor | None = None


# ----------------------------------------------------------------------------- correlations


def _unit_rows(t: Tensor, dead: Tensor, centre: float | None | bool, *,
               owned: bool = False) -> Tensor:
    """float64 rows scaled to unit norm after centring (``True``: by the row mean; a number: by
    that exact value; ``None``: not centred); rows that are dead or of norm 0 become 0.
    ``owned``: t is a float64 work tensor of the caller's, changed in place (large ranks).

    Rows whose squares overflow or underflow (|entries| beyond about 1e150 or below 1e-150)
    are redone after an exact power-of-two rescaling, so any float64 magnitude works."""
    owned = owned and t.dtype == torch.float64
    if owned:
        v = t
        _centre_(v, centre)
    elif centre is True:  # the centred copy is the one allocation
        t64 = t.to(torch.float64)
        v = t64 - t64.mean(dim=-1, keepdim=True)
    else:
        v = t.to(torch.float64, copy=True)
        _centre_(v, centre)
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    risky = (~torch.isfinite(norm) | (norm < 2.0**-500)).squeeze(-1)
    if bool(risky.any()):
        rows = scale_rows_pow2(v[risky] if owned else t[risky].to(torch.float64))
        if not owned:
            _centre_(rows, centre)
            rows = scale_rows_pow2(rows)
        v[risky] = rows
        norm[risky] = torch.linalg.vector_norm(rows, dim=-1, keepdim=True)
    zero = dead.unsqueeze(-1) | (norm == 0)
    v.div_(torch.where(zero, 1.0, norm))
    return v.masked_fill_(zero, 0.0) if bool(zero.any()) else v


def _centre_(v: Tensor, centre: float | None | bool) -> None:
    if centre is True:
        v.sub_(v.mean(dim=-1, keepdim=True))
    elif centre is not None:
        v.sub_(centre)


_SIDE_BY_SIDE_MIN = 1 << 16
"""Elements per side from which a single-threaded torch prepares both sides in two threads."""


def side_by_side(fn: Callable[[Tensor], T], ta: Tensor,
                 tb: Tensor | None) -> tuple[T, T | None]:
    """``fn(ta), fn(tb)``; side by side in two threads where torch runs one CPU thread (as the
    rsatoolbox drop-in does) and both sides are large: each side's sort is single-threaded work
    and torch releases the GIL, so two cores sort at once."""
    if tb is None:
        return fn(ta), None
    if (ta.device.type == "cpu" and torch.get_num_threads() == 1 and (os.cpu_count() or 1) > 1
            and min(ta.numel(), tb.numel()) >= _SIDE_BY_SIDE_MIN):
        with ThreadPoolExecutor(max_workers=1) as pool:
            other = pool.submit(fn, tb)
            return fn(ta), other.result()
    return fn(ta), fn(tb)


def _ranks_of_both(ta: Tensor, tb: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Average ranks of both sides: one sort when their dtypes agree and they are small, one
    per side when large (half the peak memory of the sort's work space; two threads where
    ``side_by_side`` allows)."""
    if tb is None or min(ta.numel(), tb.numel()) >= _SIDE_BY_SIDE_MIN:
        return side_by_side(average_ranks, ta, tb)
    if ta.dtype == tb.dtype and ta.numel() + tb.numel() <= _PAIR_CHUNK * 8:
        r = average_ranks(torch.cat([ta, tb]))
        return r[: ta.shape[0]], r[ta.shape[0] :]
    return average_ranks(ta), average_ranks(tb)


def _prepare_gemm(method: str, t: Tensor, ranks: Tensor | None) -> Prepared:
    m = t.shape[-1]
    if method == "cosine":
        dead = torch.zeros(t.shape[0], dtype=torch.bool, device=t.device)
        return Prepared(m, dead, unit=_unit_rows(t, dead, None))
    dead = is_constant(t)
    if method == "pearson":
        return Prepared(m, dead, unit=_unit_rows(t, dead, True))
    centre = (m + 1) / 2
    if method == "spearman":
        return Prepared(m, dead, unit=_unit_rows(ranks, dead, centre, owned=True))
    # rho-a: the dot product of centred ranks over the fixed (m^3 - m) / 12, not their norms
    centred = ranks.sub_(centre)
    return Prepared(m, dead, unit=centred, scale=12.0 / (float(m) ** 3 - m))


# ----------------------------------------------------------------------------- Kendall


def dense_ranks(t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Dense ranks (0-based, int32 below 2^31 pairs), a sorting permutation (int64) and the
    number of tied pairs
    ``sum c (c - 1) / 2`` over tie groups, per row of t (K, m); one sort.

    Ties are exact equality in the row's dtype (16-bit floats compare as float32)."""
    s, order = sort_rows(t)
    new, ties = _tie_groups(s)
    del s
    narrow = torch.int32 if t.shape[-1] <= 2**31 else torch.int64
    if bool(new.all()):  # no ties: the ranks are the inverse permutation
        sorted_ranks = torch.arange(t.shape[-1], device=t.device, dtype=narrow).expand_as(order)
    else:
        sorted_ranks = torch.cumsum(new, dim=-1, dtype=narrow).sub_(1)
    ranks = torch.empty(order.shape, dtype=narrow, device=t.device).scatter_(1, order,
                                                                              sorted_ranks)
    return ranks, order, ties


def _tie_groups(s: Tensor) -> tuple[Tensor, Tensor]:
    """For sorted rows s (K, m): where each tie group starts, and the tied pairs per row (each
    element counts the earlier members of its group: sum c (c - 1) / 2)."""
    k, m = s.shape
    new = torch.ones((k, m), dtype=torch.bool, device=s.device)
    torch.ne(s[:, 1:], s[:, :-1], out=new[:, 1:])
    if bool(new.all()):
        return new, torch.zeros(k, dtype=torch.int64, device=s.device)
    pos = torch.arange(m, device=s.device).expand(k, m)
    start = torch.cummax(torch.where(new, pos, 0), dim=-1).values
    return new, (pos - start).sum(dim=-1)


def count_discordant(seq: Tensor, span: int | None = None) -> Tensor:
    """Per row of seq (P, m) (integers in [0, span)): the number of pairs i < j with
    seq[i] > seq[j], int64 (P,). CPU tensors go to the C++ Fenwick-tree count of the extension
    (``l2bg._C``) when it is built, everything else to :func:`count_discordant_torch`; both are
    O(m log m)."""
    if seq.device.type == "cpu" and seq.numel() and _native_discordant():
        span = int(seq.max()) + 1 if span is None else span
        if seq.dtype not in (torch.int32, torch.int64):
            seq = seq.to(torch.int32 if span <= 2**31 else torch.int64)
        return torch.ops.l2bg.count_discordant(seq, span)
    return count_discordant_torch(seq)


def _native_discordant() -> bool:
    from l2bg.base.native import load_extension

    return load_extension() is not None


def count_discordant_torch(seq: Tensor) -> Tensor:
    """Per row of seq (P, m) (integers >= 0): the number of pairs i < j with seq[i] > seq[j].

    O(m log U) for values below U, vectorised over rows: the bits of the values are read from
    the most significant down; at each bit every group of equal higher bits is split stably into
    its 0s and its 1s, and each 0 adds the 1s before it in its group (the pairs that this bit
    decides). No comparison sort, no Python loop over elements."""
    p, m = seq.shape
    out = torch.zeros(p, dtype=torch.int64, device=seq.device)
    if m < 2 or p == 0:
        return out
    bits = int(seq.max()).bit_length()
    n = p * m
    flat = seq.reshape(-1).to(torch.int64)
    idx = torch.arange(n, device=seq.device)
    gs = (idx // m) * m  # group start and end (exclusive) of every position
    ge = gs + m
    for s in range(bits - 1, -1, -1):
        bit = (flat >> s) & 1
        c1 = torch.cumsum(bit, 0)
        ones_before = c1 - bit
        base = ones_before.index_select(0, gs)
        ones_in = ones_before - base
        zeros_total = (ge - gs) - (c1.index_select(0, ge - 1) - base)
        out += (ones_in * (1 - bit)).view(p, m).sum(dim=1)
        if s == 0:
            break
        zero = bit == 0
        split = gs + zeros_total
        pos = torch.where(zero, idx - ones_in, split + ones_in)
        new_gs = torch.where(zero, gs, split)
        new_ge = torch.where(zero, split, ge)
        flat = torch.empty_like(flat).index_copy_(0, pos, flat)
        gs = torch.empty_like(gs).index_copy_(0, pos, new_gs)
        ge = torch.empty_like(ge).index_copy_(0, pos, new_ge)
    return out


def _prepare_kendall(t: Tensor) -> Prepared:
    ranks, order, ties = dense_ranks(t)
    m = t.shape[-1]
    return Prepared(m, ties == m * (m - 1) // 2, ranks=ranks, order=order, ties=ties)


def _kendall_pairs(a: Prepared, b: Prepared, ia: Tensor, ib: Tensor, variant: str,
                   degenerate: float) -> Tensor:
    """tau-a or tau-b of the pairs (a[ia[k]], b[ib[k]]), in chunks of bounded work space."""
    m = a.m
    out = torch.empty(ia.numel(), dtype=torch.float64, device=a.dead.device)
    step = max(1, _PAIR_CHUNK // max(m, 1))
    for lo in range(0, ia.numel(), step):
        out[lo : lo + step] = _kendall_chunk(a, b, ia[lo : lo + step], ib[lo : lo + step],
                                             variant, degenerate)
    return out


def _kendall_chunk(a: Prepared, b: Prepared, ia: Tensor, ib: Tensor, variant: str,
                   degenerate: float) -> Tensor:
    m = a.m
    xt, yt = a.ties.index_select(0, ia), b.ties.index_select(0, ib)
    x, y = a.ranks.index_select(0, ia), b.ranks.index_select(0, ib)
    if not bool((xt > 0).any()):  # x has no ties: its order is the (x, y) order
        seq = y.gather(1, a.order.index_select(0, ia))
        joint = torch.zeros_like(xt)
    elif not bool((yt > 0).any()):  # discordance is symmetric: walk y's order instead
        seq = x.gather(1, b.order.index_select(0, ib))
        joint = torch.zeros_like(xt)
    else:  # lexicographic (x, y) order by one sort of combined keys
        span = int(y.max()) + 1
        keys = torch.sort(x.long() * span + y, dim=-1).values
        seq = keys % span
        joint = _tie_groups(keys)[1]
    dis = count_discordant(seq, m)
    total = m * (m - 1) // 2
    diff = (total - xt - yt + joint - 2 * dis).to(torch.float64)
    if variant == "a":
        tau = diff / total
        dead = torch.zeros_like(xt, dtype=torch.bool)
    else:
        dead = (xt == total) | (yt == total)
        rest_x = torch.where(dead, 1, total - xt).to(torch.float64)
        rest_y = torch.where(dead, 1, total - yt).to(torch.float64)
        tau = diff / rest_x.sqrt() / rest_y.sqrt()  # as scipy divides
    tau = tau.clamp_(-1.0, 1.0)
    return torch.where(dead, degenerate, tau)


# ----------------------------------------------------------------------------- front


GEMM_METHODS = ("pearson", "spearman", "cosine", "rho-a")
KENDALL_METHODS = {"tau-a": "a", "tau-b": "b"}


def prepare(method: str, ta: Tensor, tb: Tensor | None = None) -> tuple[Prepared, Prepared | None]:
    """Prepare rows ta (Ka, m) and tb (Kb, m) for ``method`` (ranks of both from one sort)."""
    if method in KENDALL_METHODS:
        return side_by_side(_prepare_kendall, ta, tb)
    ra = rb = None
    if method in ("spearman", "rho-a"):
        ra, rb = _ranks_of_both(ta, tb)
    pa = _prepare_gemm(method, ta, ra)
    return pa, None if tb is None else _prepare_gemm(method, tb, rb)


def cross(method: str, a: Prepared, b: Prepared, *, degenerate: float = 0.0) -> Tensor:
    """(Ka, Kb) similarities of every prepared row of a with every prepared row of b."""
    if method in KENDALL_METHODS:
        ka, kb = a.dead.numel(), b.dead.numel()
        ia = torch.arange(ka, device=a.dead.device).repeat_interleave(kb)
        ib = torch.arange(kb, device=a.dead.device).repeat(ka)
        return _kendall_pairs(a, b, ia, ib, KENDALL_METHODS[method], degenerate).view(ka, kb)
    r = (a.unit @ b.unit.T) * a.scale
    return r if method == "rho-a" else r.clamp_(-1.0, 1.0)


def pairs(method: str, a: Prepared, b: Prepared, ia: Tensor, ib: Tensor, *,
          degenerate: float = 0.0) -> Tensor:
    """Similarities of the pairs (a[ia[k]], b[ib[k]]) (flat index tensors of equal length)."""
    if method in KENDALL_METHODS:
        return _kendall_pairs(a, b, ia, ib, KENDALL_METHODS[method], degenerate)
    out = torch.empty(ia.numel(), dtype=torch.float64, device=a.dead.device)
    step = max(1, _PAIR_CHUNK // max(a.m, 1))
    for lo in range(0, ia.numel(), step):
        ua = a.unit.index_select(0, ia[lo : lo + step])
        ub = b.unit.index_select(0, ib[lo : lo + step])
        out[lo : lo + step] = torch.einsum("km,km->k", ua, ub)
    out *= a.scale
    return out if method == "rho-a" else out.clamp_(-1.0, 1.0)


def broadcast(method: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The broadcast form ``fn(ta (..., m), tb (..., m)) -> r (broadcast leading shape)``: each
    distinct row of ta and tb is prepared once, then the broadcast pairs are combined."""

    def fn(ta: Tensor, tb: Tensor) -> Tensor:
        m = ta.shape[-1]
        lead = torch.broadcast_shapes(ta.shape[:-1], tb.shape[:-1])
        fa, fb = ta.reshape(-1, m), tb.reshape(-1, m)
        pa, pb = prepare(method, fa, fb)
        ia = torch.arange(fa.shape[0], device=ta.device).view(ta.shape[:-1]).expand(lead)
        ib = torch.arange(fb.shape[0], device=ta.device).view(tb.shape[:-1]).expand(lead)
        return pairs(method, pa, pb, ia.reshape(-1), ib.reshape(-1)).view(lead)

    return fn
