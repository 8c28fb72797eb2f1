"""Representational similarity analysis: RDMs of activations and their comparison.

The front door: validation, backend choice and the batched conflict-model call. The definitions
(docs/design.md, "Definitions") are implemented by the pure-PyTorch reference in
:mod:`l2bg.rsa.reference`, which every backend matches:

* ``rdm(x)``: correlation distance ``1 - pearson(x_i, x_j)`` between samples (rows), each sample
  centred over its own features, as ``scipy.spatial.distance.pdist(x, 'correlation')``. A sample
  is *constant* when its centred norm is <= 1e-6 x its norm (or both are 0): its distance is 1 to
  every other sample and 0 to itself. The diagonal is exactly 0, the matrix exactly symmetric,
  values lie in [0, 2] and are never NaN.
* ``compare(a, b)``: Spearman (average ranks for ties, as ``scipy.stats.spearmanr``) or Pearson
  correlation of the strict upper triangles; r = 0 when either triangle is constant. Methods
  are looked up in the registry :mod:`l2bg.rsa.methods` (register your own there).
* ``dissimilarity(acts_a, acts_b)``: ``1 - compare(rdm(a_l), rdm(b_l))`` per layer (the conflict
  score of the paper).

Backends: ``'torch'`` (the reference, any device), ``'triton'`` (``l2bg.kernels``: CUDA tensors,
or CPU tensors when the kernels run in the Triton interpreter, ``TRITON_INTERPRET=1``), ``'auto'``
(triton for CUDA tensors when it is usable, else torch). Triton is imported only when used. Every
function takes ``return_backend=True`` to also return the backend that ran.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from l2bg.base.errors import L2BGError
from l2bg.rsa import methods
from l2bg.rsa.blas import numpy_blas, one_torch_thread
from l2bg.rsa.cpu import folded_rdm_triu, spearman_rows
from l2bg.rsa.reference import (
    CONSTANT_REL_TOL,
    NonFiniteError,
    acc_dtype,
    average_ranks,
    check_finite,
    rdm_torch,
    rdm_triu_torch,
    triangle,
)

__all__ = [
    "CONSTANT_REL_TOL",
    "available_backends",
    "average_ranks",
    "compare",
    "dissimilarities",
    "dissimilarity",
    "methods",
    "rdm",
    "rdm_triu",
    "resolve_backend",
]

Backend = Literal["auto", "torch", "triton"]
Method = str  # a name registered in l2bg.rsa.methods ("spearman", "pearson"/"corr", ...)

BACKENDS = ("auto", "torch", "triton")


# ----------------------------------------------------------------------------- backend choice


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


def resolve_backend(backend: str, t: Tensor, *, fp64_ok: bool = False) -> str:
    """The backend (``'torch'`` or ``'triton'``) that ``backend`` means for tensor ``t``; a clear
    error when a forced backend cannot run it."""
    if backend not in BACKENDS:
        raise L2BGError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
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


def _with(out, ran: str, return_backend: bool):
    return (out, ran) if return_backend else out


# ----------------------------------------------------------------------------- RDMs


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


def rdm(x: Tensor, *, backend: Backend = "auto", return_backend: bool = False):
    """Correlation-distance RDM ``1 - pearson(x_i, x_j)`` of samples x (n, d) or (B, n, d).

    Returns (n, n) or (B, n, n), float64 for float64 input, else float32 (float16/bfloat16 are
    upcast; integer inputs are converted to float32). Autograd is not tracked.
    """
    return _rdm_dispatch(x, backend, False, return_backend)


def rdm_triu(x: Tensor, *, backend: Backend = "auto", return_backend: bool = False):
    """Strict upper triangle of ``rdm(x)`` in row-major order (as scipy ``pdist``).

    x (n, d) -> (m,), x (B, n, d) -> (B, m), m = n (n - 1) / 2.
    """
    return _rdm_dispatch(x, backend, True, return_backend)


def _rdm_dispatch(x: Tensor, backend: str, triu: bool, return_backend: bool,
                  scratch: dict | None = None):
    """rdm / rdm_triu on the chosen backend, with the batch dim handled and errors named.
    ``scratch``: a dict that keeps the torch backend's centred-rows workspace from one call to
    the next of the same shape (a large fresh buffer costs its page faults every time)."""
    fn = "rdm_triu" if triu else "rdm"
    xb, batched = _as_batch(x, fn)
    ran = resolve_backend(backend, xb)
    try:
        if ran == "triton":
            from l2bg.kernels.rdm import rdm as rdm_triton

            out = rdm_triton(xb, triu=triu, precision=_cuda_precision(xb))
        elif triu and numpy_blas(xb) and (xb.shape[0] == 1 or xb.shape[1] >= 128):
            # CPU: one syrk per RDM, the centring folded in (many small RDMs: one batched
            # reference call beats a Python loop of small syrks)
            with one_torch_thread(xb.device):  # numpy's BLAS gets the cores (rsa/blas.py)
                out = _folded_triu(xb, scratch)
        elif triu and scratch is not None:
            dtype = acc_dtype(xb.dtype)
            key = (tuple(xb.shape), xb.device, dtype)
            if key not in scratch:
                scratch.clear()  # one workspace at a time
                scratch[key] = torch.empty(xb.shape, dtype=dtype, device=xb.device)
            out = rdm_triu_torch(xb, workspace=scratch[key])
        else:
            out = (rdm_triu_torch if triu else rdm_torch)(xb)
    except NonFiniteError as exc:
        where = f"x[{exc.index}]" if batched else "x"
        raise NonFiniteError(
            exc.index, f"{fn}: {where} contains NaN or inf; fix or drop those samples"
        ) from None
    return _with(out if batched else out.squeeze(0), ran, return_backend)


def _folded_triu(xb: Tensor, scratch: dict | None) -> Tensor:
    """Packed RDMs (B, m) of CPU activations xb (B, n, d): each by
    :func:`~l2bg.rsa.cpu.folded_rdm_triu`, or by the reference where that declines."""
    n = xb.shape[1]
    out = torch.empty((xb.shape[0], n * (n - 1) // 2), dtype=acc_dtype(xb.dtype))
    for i in range(xb.shape[0]):
        t = folded_rdm_triu(xb[i])
        if t is None:
            try:
                t = rdm_triu_torch(xb[i : i + 1])[0]
            except NonFiniteError:
                raise NonFiniteError(i) from None
        if xb.shape[0] == 1:
            return t.unsqueeze(0)
        out[i] = t
    return out


def _cuda_precision(x: Tensor) -> str:
    """'tf32' when torch itself would use TF32 for float32 matmuls on CUDA, else 'ieee'."""
    if x.is_cuda and x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


# ----------------------------------------------------------------------------- compare


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


def compare(
    a: Tensor,
    b: Tensor,
    *,
    method: Method = "spearman",
    backend: Backend = "auto",
    return_backend: bool = False,
):
    """Correlation of the strict upper triangles of RDMs a and b (float64, batched).

    a and b are full RDMs (..., n, n) (read when the last two dims are equal) or triangle vectors
    (..., m) in the order of ``rdm_triu``; the two forms may be mixed. Vectors of any length
    m >= 3 are accepted (a full RDM needs n >= 3). Leading dims broadcast; the result has the
    broadcast leading shape. r = 0 when either triangle is constant.
    """
    methods.get(method)
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
    out, ran = _compare(a.detach(), b.detach(), full_a, full_b, method, backend)
    return _with(out, ran, return_backend)


def _compare(
    a: Tensor, b: Tensor, full_a: bool, full_b: bool, method: str, backend: str,
    finite: bool = False,
) -> tuple[Tensor, str]:
    """compare() on validated inputs whose layout (full RDM or packed triangle) is given;
    returns (r, backend that ran). ``finite``: the inputs are RDMs l2bg computed (finite by
    construction), so the NaN/inf scan is skipped."""
    spec = methods.get(method)
    if not a.is_floating_point():
        a = a.to(torch.float64)
    if not b.is_floating_point():
        b = b.to(torch.float64)
    ran = resolve_backend(backend, a, fp64_ok=True)
    if ran == "triton" and spec.triton is not None:
        from l2bg.kernels.compare import compare as compare_triton

        if full_a != full_b:
            a = triangle(a) if full_a else a
            b = triangle(b) if full_b else b
            full_a = False
        return compare_triton(a, b, method=spec.triton, triangles=not full_a), "triton"
    ta = triangle(a) if full_a else a
    tb = triangle(b) if full_b else b
    if not finite:
        check_finite(ta, "a")
        check_finite(tb, "b")
    if spec is _SPEARMAN and _rows_pair(ta, tb):  # long rows: one sort per row
        with one_torch_thread(ta.device):  # the two sides sort side by side
            r = spearman_rows(ta.reshape(-1, ta.shape[-1]), tb.reshape(-1, tb.shape[-1]))
        return r.view(torch.broadcast_shapes(ta.shape[:-1], tb.shape[:-1])), "torch"
    return spec.torch(ta, tb), "torch"


_SPEARMAN = methods.get("spearman")
"""The built-in Spearman (a method registered in its place keeps its own implementation)."""

_ROWS_MAX = 64
"""Up to this many rows a side, ``spearman_rows`` ranks each row on its own."""


def _rows_pair(ta: Tensor, tb: Tensor) -> bool:
    """Whether a Spearman of ta and tb goes to :func:`~l2bg.rsa.cpu.spearman_rows`: CPU
    triangles of one float dtype, at most one leading dim each, broadcasting as 1 against K."""
    if ta.device.type != "cpu" or ta.dtype != tb.dtype or not ta.is_floating_point():
        return False
    if ta.ndim > 2 or tb.ndim > 2:
        return False
    ka = ta.shape[0] if ta.ndim == 2 else 1
    kb = tb.shape[0] if tb.ndim == 2 else 1
    return max(ka, kb) <= _ROWS_MAX and (ka == kb or min(ka, kb) == 1)


# ----------------------------------------------------------------------------- dissimilarity


def dissimilarity(
    acts_a: Sequence[Tensor],
    acts_b: Sequence[Tensor],
    *,
    method: Method = "spearman",
    backend: Backend = "auto",
    return_backend: bool = False,
):
    """Per-layer RSA dissimilarity ``1 - compare(rdm(a_l), rdm(b_l))`` (float64, shape (L,)).

    acts_a[l] and acts_b[l] are the activations (n, ...) of slot l in the two networks for the
    same n inputs (n >= 3); features are flattened per sample. Values lie in [0, 2].
    """
    _check_layers(acts_b, "acts_b", "dissimilarity")
    out, ran = dissimilarities(acts_a, [acts_b], method=method, backend=backend,
                               return_backend=True)
    return _with(out[0], ran, return_backend)


def _check_layers(acts: object, name: str, fn: str) -> None:
    """A list of per-layer activations, not one tensor (whose rows would be read as layers)."""
    if isinstance(acts, Tensor) or not isinstance(acts, Sequence):
        raise L2BGError(
            f"{fn}: {name} must be a list of per-layer activation tensors, got "
            f"{type(acts).__name__}; wrap a single layer as [x]"
        )


def dissimilarities(
    acts_ref: Sequence[Tensor],
    acts_others: Sequence[Sequence[Tensor]],
    *,
    method: Method = "spearman",
    backend: Backend = "auto",
    return_backend: bool = False,
):
    """RSA dissimilarity of one net against K others fed the same inputs: float64 (K, L).

    The conflict model's shape of work (the independent net of a new task against every bind
    candidate): each layer's reference RDM is computed once, the K candidates' RDMs of a layer
    in one batched call, and the K comparisons of a layer in one call. The backend that ran is
    'torch' or 'triton', or 'torch+triton' when RDMs and comparisons ran on different ones.
    """
    methods.get(method)
    _check_layers(acts_ref, "acts_ref", "dissimilarities")
    if isinstance(acts_others, Tensor) or not isinstance(acts_others, Sequence):
        raise L2BGError(
            "dissimilarities: acts_others must be a list with one list of layers per net, got "
            f"{type(acts_others).__name__}"
        )
    for o in acts_others:
        _check_layers(o, "each entry of acts_others", "dissimilarities")
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
    ran: set[str] = set()
    scratch: dict = {}  # centred rows of net a's layer, reused for the other nets' of its shape
    for layer in range(L):
        xa, xs = acts_ref[layer], [o[layer] for o in others]
        _check_layer_inputs(layer, xa, names, xs)
        if K == 0:
            continue
        fast = numpy_blas(xa.detach(), *(x.detach() for x in xs))
        # the CPU floor: one torch thread for the whole layer (numpy's BLAS gets the cores,
        # the two sides of the Spearman sort side by side), one switch instead of three
        with one_torch_thread(xa.device) if fast else contextlib.nullcontext():
            r = _layer(layer, xa, xs, names, method, backend, scratch, fast, ran)
        out[:, layer] = r.cpu()
    backend_ran = "+".join(sorted(ran)) if ran else None
    return _with(1.0 - out, backend_ran, return_backend)


def _layer(layer: int, xa: Tensor, xs: list[Tensor], names: list[str], method: str,
           backend: str, scratch: dict, fast: bool, ran: set[str]) -> Tensor:
    """(K,) similarities of one layer: net a's RDM once, the K others' (one batched call, or
    one by one on the CPU floor, where stacking them would copy), then one comparison."""
    n, K = xa.shape[0], len(xs)
    try:
        ta, r1 = _rdm_dispatch(xa.reshape(n, -1), backend, True, True, scratch)
    except NonFiniteError:
        raise L2BGError(
            f"dissimilarity: layer {layer} of net a has NaN or inf activations; "
            "fix the network or its inputs"
        ) from None
    flat = [x.reshape(n, -1) for x in xs]
    try:
        if len({f.shape[1] for f in flat}) == 1 and (K == 1 or not fast):  # one batched call
            batch = flat[0].unsqueeze(0) if K == 1 else torch.stack(flat)  # no copy of one
            tb, r2 = _rdm_dispatch(batch, backend, True, True, scratch)
        else:
            parts = []
            for k, f in enumerate(flat):
                try:
                    t, r2 = rdm_triu(f, backend=backend, return_backend=True)
                except NonFiniteError:
                    raise NonFiniteError(k) from None
                parts.append(t)
            tb = torch.stack(parts)
    except NonFiniteError as exc:
        raise L2BGError(
            f"dissimilarity: layer {layer} of net {names[exc.index]} has NaN or inf "
            "activations; fix the network or its inputs"
        ) from None
    dtype = torch.promote_types(ta.dtype, tb.dtype)
    r, r3 = _compare(ta.to(dtype).unsqueeze(0), tb.to(dtype), False, False, method, backend,
                     finite=True)
    ran.update((r1, r2, r3))
    return r


def _check_layer_inputs(layer: int, xa: Tensor, names: list[str], xs: list[Tensor]) -> None:
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
    if xa.shape[0] < 3:
        raise L2BGError(
            f"dissimilarity: layer {layer} has n={xa.shape[0]} samples; RSA needs n >= 3"
        )
