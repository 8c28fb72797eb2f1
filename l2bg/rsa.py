"""Representational similarity analysis: RDMs of activations and their comparison.

This module is the front door and the pure-PyTorch reference (the spec that every backend
matches). Definitions, as in ``ARCHITECTURE.md``:

* ``rdm(x)``: correlation distance ``1 - pearson(x_i, x_j)`` between samples (rows), each sample
  centred over its own features, as ``scipy.spatial.distance.pdist(x, 'correlation')``. A sample
  is *constant* when its centred norm is <= 1e-6 x its norm (or both are 0): its distance is 1 to
  every other sample and 0 to itself. The diagonal is exactly 0, the matrix exactly symmetric,
  values lie in [0, 2] and are never NaN.
* ``compare(a, b)``: Spearman (average ranks for ties, as ``scipy.stats.spearmanr``) or Pearson
  correlation of the strict upper triangles; r = 0 when either triangle is constant.
* ``dissimilarity(acts_a, acts_b)``: ``1 - compare(rdm(a_l), rdm(b_l))`` per layer (the conflict
  score of the paper).

Backends: ``'torch'`` (this file, any device), ``'triton'`` (``l2bg.kernels``: CUDA tensors, or
CPU tensors when the kernels run in the Triton interpreter, ``TRITON_INTERPRET=1``), ``'auto'``
(triton for CUDA tensors when it is usable, else torch). Triton is imported only when used.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from l2bg.errors import L2BGError

__all__ = [
    "available_backends",
    "average_ranks",
    "compare",
    "dissimilarity",
    "last_backend",
    "rdm",
    "rdm_triu",
]

Backend = Literal["auto", "torch", "triton"]
Method = Literal["spearman", "pearson"]

CONSTANT_REL_TOL = 1e-6
"""A sample is constant when ||x - mean(x)|| <= CONSTANT_REL_TOL * ||x||."""

_BACKENDS = ("auto", "torch", "triton")
_METHODS = ("spearman", "pearson")
_state = threading.local()


# ----------------------------------------------------------------------------- backend choice


def last_backend() -> str | None:
    """Backend of the last rdm/rdm_triu/compare/dissimilarity call in this thread.

    'torch' or 'triton'; 'torch+triton' when dissimilarity ran its RDMs and its comparison on
    different backends; None before any call.
    """
    return getattr(_state, "backend", None)


def _ran(backend: str) -> None:
    _state.backend = backend


@functools.cache
def _triton_problem() -> str | None:
    """Why the Triton backend cannot be used at all (None when it can)."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure disables the backend
        return f"triton is not importable ({type(exc).__name__}: {exc}); pip install triton"
    try:
        from l2bg.kernels import compare as _compare  # noqa: F401
        from l2bg.kernels import rdm as _rdm  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"l2bg.kernels failed to import ({type(exc).__name__}: {exc})"
    return None


def _triton_interpreted() -> bool:
    from l2bg.kernels.rdm import INTERPRETED

    return INTERPRETED


def available_backends() -> list[str]:
    """Backends usable in this process: always 'torch'; 'triton' with CUDA or the interpreter."""
    out = ["torch"]
    if _triton_problem() is None and (torch.cuda.is_available() or _triton_interpreted()):
        out.append("triton")
    return out


def _resolve(backend: str, t: Tensor, *, fp64_ok: bool = False) -> str:
    if backend not in _BACKENDS:
        raise L2BGError(f"unknown backend {backend!r}; use one of {', '.join(_BACKENDS)}")
    if backend == "torch":
        return "torch"
    if backend == "auto":
        if (
            t.is_cuda
            and (fp64_ok or t.dtype != torch.float64)
            and _triton_problem() is None
            and not _triton_interpreted()
        ):
            return "triton"
        return "torch"
    problem = _triton_problem()
    if problem is not None:
        raise L2BGError(f"backend='triton' is unavailable: {problem}; or use backend='torch'")
    if not t.is_cuda and not _triton_interpreted():
        raise L2BGError(
            "backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before l2bg.kernels "
            "is first imported (CPU interpreter, slow); move the tensors to CUDA or use "
            "backend='torch'"
        )
    if t.dtype == torch.float64 and not fp64_ok:
        raise L2BGError(
            "backend='triton' computes RDMs of float32/float16/bfloat16 inputs; use "
            "backend='torch' for float64 or convert the activations"
        )
    return "triton"


# ----------------------------------------------------------------------------- RDM reference


class _NonFinite(L2BGError):
    """Non-finite activations; ``index`` is the batch item that holds them."""

    def __init__(self, index: int, message: str | None = None) -> None:
        super().__init__(
            message
            or f"activations of batch item {index} contain NaN or inf; fix or drop them first"
        )
        self.index = index


def _reraise_non_finite(exc: _NonFinite, fn: str, batched: bool) -> _NonFinite:
    where = f"x[{exc.index}]" if batched else "x"
    return _NonFinite(exc.index, f"{fn}: {where} contains NaN or inf; fix or drop those samples")


def _as_batch(x: Tensor, fn: str) -> tuple[Tensor, bool]:
    """(n, d) or (B, n, d) floating view of x, and whether a batch dim was given."""
    if not isinstance(x, Tensor):
        raise L2BGError(f"{fn}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in (2, 3):
        raise L2BGError(
            f"{fn}: expected activations of shape (n, d) or (B, n, d), got {tuple(x.shape)}; "
            "flatten the features per sample first"
        )
    if x.is_complex():
        raise L2BGError(f"{fn}: complex activations are not supported; pass real tensors")
    x = x.detach()
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if x.shape[-1] == 0:
        x = x.new_zeros((*x.shape[:-1], 1))
    batched = x.ndim == 3
    return (x if batched else x.unsqueeze(0)), batched


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _row_blocks(n: int) -> list[tuple[int, int]]:
    """Row blocks of the triangular Gram schedule (about 250 rows each, at most 4)."""
    nb = max(1, min(4, n // 250))
    edges = [round(i * n / nb) for i in range(nb + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


class _Rescale(Exception):
    """fp32/fp64 squares overflowed or underflowed: recompute with rescaled rows."""


def _centre(x: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """(centred rows in the accumulation dtype, written to ``out`` if given; float64 row means;
    None, the slot of the row scales of ``_centre_scaled``).

    Means and subtraction run in the accumulation dtype. Non-finite means come from NaN/inf
    input (an error) or from a sum that overflows (then ``_centre_scaled``).
    """
    acc = _acc_dtype(x.dtype)
    mean = x.mean(dim=-1, keepdim=True, dtype=acc)
    if bool(torch.isfinite(mean).all()):
        return torch.sub(x, mean, out=out), mean.squeeze(-1).double(), None
    bad = ~torch.isfinite(x).flatten(1).all(dim=1)
    if bool(bad.any()):
        raise _NonFinite(int(bad.nonzero()[0]))
    return _centre_scaled(x)


def _centre_scaled(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Centre in float64 and scale each row by a power of two so that max |x - mean| is in
    [0.5, 1): no square overflows or underflows. Returns (rows, means, scales)."""
    acc = _acc_dtype(x.dtype)
    x64 = x.double()
    mean = x64.mean(dim=-1, keepdim=True)
    xc = x64 - mean
    amax = xc.abs().amax(dim=-1)
    scale = torch.where(amax > 0, torch.exp2(-torch.frexp(amax).exponent.double()), 1.0)
    return (xc * scale.unsqueeze(-1)).to(acc), mean.squeeze(-1), scale


@functools.lru_cache(maxsize=64)
def _block_triu_index(h: int, w: int, device: torch.device) -> Tensor:
    """Flat indices of the entries c > r of an h x w block, row-major."""
    iu = torch.triu_indices(h, w, 1, device=device)
    return iu[0] * w + iu[1]


def _rdm_core(x: Tensor, triu: bool, workspace: Tensor | None = None) -> Tensor:
    """Reference RDMs of x (B, n, d): full (B, n, n) or packed strict upper triangles (B, m).

    Rows are centred once (into ``workspace`` if given). The Gram is computed by row blocks
    ``i``, last first, as ``xc[i] @ xc[i:]^T`` (about (nb + 1) / (2 nb) of the full product);
    at that point every row >= start of block i has its squared norm (the Gram diagonal), so
    the block is normalised and turned into distances while it is still in cache.
    """
    xc, mean, scale = _centre(x, workspace)
    try:
        return _rdm_from_centred(xc, mean, scale, triu)
    except _Rescale:
        del xc
        xc, mean, scale = _centre_scaled(x)
        return _rdm_from_centred(xc, mean, scale, triu)


def _rdm_from_centred(xc: Tensor, mean: Tensor, scale: Tensor | None, triu: bool) -> Tensor:
    b, n, d = xc.shape
    out = torch.empty(
        (b, n * (n - 1) // 2) if triu else (b, n, n), dtype=xc.dtype, device=xc.device
    )
    inv = torch.empty((b, n), dtype=xc.dtype, device=xc.device)
    tiny = torch.finfo(xc.dtype).tiny * 2.0**24
    for lo, hi in reversed(_row_blocks(n)):
        h = hi - lo
        if b == 1:
            p = torch.mm(xc[0, lo:hi], xc[0, lo:].T).unsqueeze(0)
        else:
            p = torch.matmul(xc[:, lo:hi], xc[:, lo:].mT)
        ss = p[:, :, :h].diagonal(dim1=-2, dim2=-1).double()
        if scale is None:
            suspect = ~torch.isfinite(ss) | (ss < tiny)
            if bool(suspect.any()):
                rows = xc[:, lo:hi][suspect]
                if bool((~torch.isfinite(ss[suspect])).any()) or bool(rows.abs().amax() > 0):
                    raise _Rescale
            true_ss = ss
        else:
            true_ss = ss / scale[:, lo:hi].square()
        m_blk = mean[:, lo:hi]
        constant = true_ss <= (CONSTANT_REL_TOL**2) * (true_ss + d * m_blk.square())
        inv[:, lo:hi] = torch.where(constant, 0.0, ss.clamp_min(1e-300).rsqrt())
        p.mul_(inv[:, lo:hi, None]).mul_(inv[:, None, lo:]).neg_().add_(1.0).clamp_(0.0, 2.0)
        if triu:
            first = lo * n - lo * (lo + 1) // 2
            last = hi * n - hi * (hi + 1) // 2
            idx = _block_triu_index(h, n - lo, xc.device)
            torch.index_select(p.flatten(1), 1, idx, out=out[:, first:last])
        else:
            out[:, lo:hi, lo:] = p
    if triu:
        return out
    upper = torch.triu(out, diagonal=1)
    return upper + upper.mT


def _rdm_torch(x: Tensor) -> Tensor:
    """Full RDMs (B, n, n) of x (B, n, d); reference implementation."""
    return _rdm_core(x, triu=False)


def _rdm_triu_torch(x: Tensor, workspace: Tensor | None = None) -> Tensor:
    """Strict upper triangles (B, m) of the RDMs of x (B, n, d); reference implementation."""
    return _rdm_core(x, triu=True, workspace=workspace)


@functools.lru_cache(maxsize=16)
def _triu_index(n: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Rows, columns and flat indices ``i * n + j`` of the strict upper triangle, row-major."""
    iu = torch.triu_indices(n, n, 1, device=device)
    return iu[0], iu[1], iu[0] * n + iu[1]


def rdm(x: Tensor, *, backend: Backend = "auto") -> Tensor:
    """Correlation-distance RDM ``1 - pearson(x_i, x_j)`` of samples x (n, d) or (B, n, d).

    Returns (n, n) or (B, n, n), float64 for float64 input, else float32 (float16/bfloat16 are
    upcast; integer inputs are converted to float32). Autograd is not tracked.
    """
    return _rdm_dispatch(x, backend, triu=False)


def rdm_triu(x: Tensor, *, backend: Backend = "auto") -> Tensor:
    """Strict upper triangle of ``rdm(x)`` in row-major order (as scipy ``pdist``).

    x (n, d) -> (m,), x (B, n, d) -> (B, m), m = n (n - 1) / 2.
    """
    return _rdm_dispatch(x, backend, triu=True)


def _rdm_dispatch(x: Tensor, backend: str, triu: bool) -> Tensor:
    """rdm / rdm_triu on the chosen backend, with the batch dim handled and errors named."""
    fn = "rdm_triu" if triu else "rdm"
    xb, batched = _as_batch(x, fn)
    try:
        if _resolve(backend, xb) == "triton":
            from l2bg.kernels.rdm import rdm as rdm_triton

            out = rdm_triton(xb, triu=triu, precision=_cuda_precision(xb))
            _ran("triton")
        else:
            out = (_rdm_triu_torch if triu else _rdm_torch)(xb)
            _ran("torch")
    except _NonFinite as exc:
        raise _reraise_non_finite(exc, fn, batched) from None
    return out if batched else out.squeeze(0)


def _cuda_precision(x: Tensor) -> str:
    """'tf32' when torch itself would use TF32 for float32 matmuls on CUDA, else 'ieee'."""
    if x.is_cuda and x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


# ----------------------------------------------------------------------------- compare reference


def _layout(t: Tensor, name: str) -> tuple[int, bool]:
    """Validate one compare input: (number of pairs m, whether it is a full RDM).

    A tensor whose last two dims are equal is read as full RDMs; anything else as vectors.
    """
    if not isinstance(t, Tensor):
        raise L2BGError(f"compare: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim == 0:
        raise L2BGError(f"compare: {name} is a scalar; pass RDMs (..., n, n) or triangles (..., m)")
    if t.is_complex():
        raise L2BGError(f"compare: {name} is complex; pass real RDMs")
    if t.ndim >= 2 and t.shape[-1] == t.shape[-2]:
        n = t.shape[-1]
        if n < 3:
            raise L2BGError(
                f"compare: {name} is an RDM of n={n} samples; comparing RDMs needs n >= 3"
            )
        return n * (n - 1) // 2, True
    if t.shape[-1] < 3:
        raise L2BGError(
            f"compare: {name} is a triangle of m={t.shape[-1]} pairs; comparing needs m >= 3 "
            "(n >= 3 samples)"
        )
    return t.shape[-1], False


def _triangle(t: Tensor) -> Tensor:
    """Strict upper triangle (..., m) of full RDMs (..., n, n), row-major."""
    n = t.shape[-1]
    return t.flatten(-2).index_select(-1, _triu_index(n, t.device)[2])


def _check_finite(t: Tensor, name: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise L2BGError(f"compare: {name} contains NaN or inf; recompute the RDM from finite data")


def _is_constant(t: Tensor) -> Tensor:
    lo, hi = torch.aminmax(t, dim=-1)
    return lo == hi


def _sort_keys(v: Tensor) -> Tensor:
    """Flat int64 keys of the float32 rows of v (R, m) whose integer order is (row, value) order.

    The float bits become an order-preserving integer (negative floats flipped, -0 == +0) in the
    low 32 bits, the row index goes above: one 1-D integer sort ranks every row at once (a radix
    sort on CPU and CUDA).
    """
    bits = (v.to(torch.float32) + 0.0).view(torch.int32)
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    offsets = torch.arange(v.shape[0], dtype=torch.int64, device=v.device).mul_(2**32).add_(2**31)
    return torch.add(bits, offsets.unsqueeze(1)).reshape(-1)


def average_ranks(v: Tensor) -> Tensor:
    """Average ranks (1-based; tied values share the mean of their positions) along the last dim.

    One sort (float16/bfloat16/float32: a single 1-D integer sort of order-preserving keys for
    all rows; float64: a row-wise sort); tie groups start where the sorted values change; group
    ids are the prefix sum of those starts and group sizes the gaps between them; int64
    positions, float64 ranks, no Python loop. Equals ``scipy.stats.rankdata(v, 'average')``.
    """
    shape, m = v.shape, v.shape[-1]
    if v.numel() == 0:
        return torch.zeros(shape, dtype=torch.float64, device=v.device)
    rows = v.numel() // m
    v2 = v.reshape(rows, m)
    if v2.dtype in (torch.float16, torch.bfloat16, torch.float32):
        s, order = torch.sort(_sort_keys(v2), stable=True)
        start = torch.empty(s.shape, dtype=torch.bool, device=v.device)
        start[:1] = True
        torch.ne(s[1:], s[:-1], out=start[1:])
    else:
        s, order = torch.sort(v2, dim=-1)
        start = torch.empty((rows, m), dtype=torch.bool, device=v.device)
        start[:, :1] = True
        torch.ne(s[:, 1:], s[:, :-1], out=start[:, 1:])
        start = start.view(-1)
    del s
    if bool(start.all()):
        ranked = torch.arange(1, rows * m + 1, dtype=torch.float64, device=v.device)
    else:
        group = torch.cumsum(start, 0).sub_(1)
        first = start.nonzero().squeeze(1)
        size = torch.diff(first, append=first.new_full((1,), rows * m))
        mean_rank = first.to(torch.float64).add_(size.to(torch.float64).add_(1.0).mul_(0.5))
        ranked = mean_rank.index_select(0, group)
    out = torch.empty(rows * m, dtype=torch.float64, device=v.device)
    if order.ndim == 1:
        out.scatter_(0, order, ranked)
    else:
        out.view(rows, m).scatter_(1, order, ranked.view(rows, m))
    out = out.view(rows, m)
    if rows > 1:
        out -= torch.arange(rows, dtype=torch.float64, device=v.device).mul_(m).unsqueeze(1)
    return out.view(shape)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Batched dot product over the last dim (broadcast), by BLAS without an elementwise temp."""
    return torch.matmul(a.unsqueeze(-2), b.unsqueeze(-1))[..., 0, 0]


def _pearson_torch(a: Tensor, b: Tensor, dead: Tensor, centre: float | None = None) -> Tensor:
    """Pearson r along the last dim in float64, broadcast over leading dims; 0 where ``dead``.

    ``centre``: the exact common mean of a and b when known (ranks: (m + 1) / 2); the inputs
    are then owned float64 tensors and are centred in place.
    """
    if centre is None:
        a = a.to(torch.float64)
        b = b.to(torch.float64)
        a = a - a.mean(dim=-1, keepdim=True)
        b = b - b.mean(dim=-1, keepdim=True)
    else:
        a = a.sub_(centre)
        b = b.sub_(centre)
    saa, sbb, sab = _dot(a, a), _dot(b, b), _dot(a, b)
    den = torch.sqrt(saa * sbb)
    dead = dead | (den == 0)
    r = torch.where(dead, 0.0, sab / torch.where(dead, 1.0, den))
    return r.clamp_(-1.0, 1.0)


def _compare_torch(ta: Tensor, tb: Tensor, method: str) -> Tensor:
    dead = _is_constant(ta) | _is_constant(tb)
    if method == "pearson":
        return _pearson_torch(ta, tb, dead)
    if ta.dtype == tb.dtype:  # one sort ranks both sides (and every batch item)
        m = ta.shape[-1]
        fa, fb = ta.reshape(-1, m), tb.reshape(-1, m)
        ranks = average_ranks(torch.cat([fa, fb]))
        ra, rb = ranks[: fa.shape[0]].view(ta.shape), ranks[fa.shape[0] :].view(tb.shape)
    else:
        ra, rb = average_ranks(ta), average_ranks(tb)
    return _pearson_torch(ra, rb, dead, centre=(ta.shape[-1] + 1) / 2)


def compare(
    a: Tensor, b: Tensor, *, method: Method = "spearman", backend: Backend = "auto"
) -> Tensor:
    """Correlation of the strict upper triangles of RDMs a and b (float64, batched).

    a and b are full RDMs (..., n, n) (read when the last two dims are equal) or triangle vectors
    (..., m) in the order of ``rdm_triu``; the two forms may be mixed. Vectors of any length
    m >= 3 are accepted (a full RDM needs n >= 3). Leading dims broadcast; the result has the
    broadcast leading shape. r = 0 when either triangle is constant.
    """
    if method not in _METHODS:
        raise L2BGError(f"compare: unknown method {method!r}; use 'spearman' or 'pearson'")
    ma, full_a = _layout(a, "a")
    mb, full_b = _layout(b, "b")
    if ma != mb:
        raise L2BGError(
            f"compare: a has {ma} pairs and b has {mb}; RDMs must be over the same samples"
        )
    if a.device != b.device:
        raise L2BGError(f"compare: a is on {a.device} and b on {b.device}; move both to one")
    lead_a = a.shape[: a.ndim - (2 if full_a else 1)]
    lead_b = b.shape[: b.ndim - (2 if full_b else 1)]
    try:
        torch.broadcast_shapes(lead_a, lead_b)
    except RuntimeError:
        raise L2BGError(
            f"compare: batch shapes {tuple(lead_a)} and {tuple(lead_b)} do not broadcast; "
            "align the leading dims"
        ) from None
    return _compare(a.detach(), b.detach(), full_a, full_b, method, backend)


def _compare(a: Tensor, b: Tensor, full_a: bool, full_b: bool, method: str, backend: str) -> Tensor:
    """compare() on validated inputs whose layout (full RDM or packed triangle) is given."""
    if not a.is_floating_point():
        a = a.to(torch.float64)
    if not b.is_floating_point():
        b = b.to(torch.float64)
    if _resolve(backend, a, fp64_ok=True) == "triton":
        from l2bg.kernels.compare import compare as compare_triton

        if full_a != full_b:
            a = _triangle(a) if full_a else a
            b = _triangle(b) if full_b else b
            full_a = False
        out = compare_triton(a, b, method=method, triangles=not full_a)
        _ran("triton")
        return out
    ta = _triangle(a) if full_a else a
    tb = _triangle(b) if full_b else b
    _check_finite(ta, "a")
    _check_finite(tb, "b")
    out = _compare_torch(ta, tb, method)
    _ran("torch")
    return out


# ----------------------------------------------------------------------------- dissimilarity


def dissimilarity(
    acts_a: Sequence[Tensor],
    acts_b: Sequence[Tensor],
    *,
    method: Method = "spearman",
    backend: Backend = "auto",
) -> Tensor:
    """Per-layer RSA dissimilarity ``1 - compare(rdm(a_l), rdm(b_l))`` (float64, shape (L,)).

    acts_a[l] and acts_b[l] are the activations (n, ...) of slot l in the two networks for the
    same n inputs (n >= 3); features are flattened per sample. Values lie in [0, 2].
    """
    return dissimilarities(acts_a, [acts_b], method=method, backend=backend)[0]


def _one(fn, x: Tensor, index: int, backend: str) -> Tensor:
    """fn(x) for batch item ``index``, reporting non-finite values under that index."""
    try:
        return fn(x, backend=backend)
    except _NonFinite:
        raise _NonFinite(index) from None


def dissimilarities(
    acts_ref: Sequence[Tensor],
    acts_others: Sequence[Sequence[Tensor]],
    *,
    method: Method = "spearman",
    backend: Backend = "auto",
) -> Tensor:
    """RSA dissimilarity of one net against K others fed the same inputs: float64 (K, L).

    The conflict model's shape of work (the independent net of a new task against every bind
    candidate): each layer's reference RDM is computed once, the K candidates' RDMs of a layer
    in one batched call, and the K comparisons of a layer in one call.
    """
    if method not in _METHODS:
        raise L2BGError(f"dissimilarity: unknown method {method!r}; use 'spearman' or 'pearson'")
    acts_ref = list(acts_ref)
    others = [list(o) for o in acts_others]
    K, L = len(others), len(acts_ref)
    names = ["b"] if K == 1 else [f"b[{k}]" for k in range(K)]
    for k, o in enumerate(others):
        if len(o) != L:
            raise L2BGError(
                f"dissimilarity: net a has {L} layers and net {names[k]} has {len(o)}; pass "
                "activations of the mapped layers of both nets"
            )
    out = torch.empty(K, L, dtype=torch.float64)
    rdm_backend = None
    for layer in range(L):
        xa, xs = acts_ref[layer], [o[layer] for o in others]
        for net, t in (("a", xa), *zip(names, xs, strict=True)):
            if not isinstance(t, Tensor) or t.ndim == 0:
                raise L2BGError(
                    f"dissimilarity: layer {layer} of net {net} is not a tensor of shape (n, ...)"
                )
            if t.shape[0] != xa.shape[0]:
                raise L2BGError(
                    f"dissimilarity: layer {layer} has n={xa.shape[0]} samples in net a and "
                    f"n={t.shape[0]} in net {net}; feed both nets the same inputs"
                )
            if t.device != xa.device:
                raise L2BGError(
                    f"dissimilarity: layer {layer} is on {xa.device} in net a and {t.device} "
                    f"in net {net}; move both to one device"
                )
        n = xa.shape[0]
        if n < 3:
            raise L2BGError(f"dissimilarity: layer {layer} has n={n} samples; RSA needs n >= 3")
        if K == 0:
            continue
        try:
            ta = rdm_triu(xa.reshape(n, -1), backend=backend)
        except _NonFinite:
            raise L2BGError(
                f"dissimilarity: layer {layer} of net a has NaN or inf activations; "
                "fix the network or its inputs"
            ) from None
        flat = [x.reshape(n, -1) for x in xs]
        try:
            if len(flat) == 1:
                tb = rdm_triu(flat[0].unsqueeze(0), backend=backend)
            elif len({f.shape[1] for f in flat}) == 1:  # one batched call for all K nets
                tb = rdm_triu(torch.stack(flat), backend=backend)
            else:
                tb = torch.stack([_one(rdm_triu, f, k, backend) for k, f in enumerate(flat)])
        except _NonFinite as exc:
            raise L2BGError(
                f"dissimilarity: layer {layer} of net {names[exc.index]} has NaN or inf "
                "activations; fix the network or its inputs"
            ) from None
        rdm_backend = last_backend()
        dtype = torch.promote_types(ta.dtype, tb.dtype)
        r = _compare(ta.to(dtype).unsqueeze(0), tb.to(dtype), False, False, method, backend)
        out[:, layer] = r.cpu()
    if rdm_backend is not None and rdm_backend != last_backend():
        _ran(f"{rdm_backend}+{last_backend()}")
    return 1.0 - out
