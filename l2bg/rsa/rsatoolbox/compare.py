"""``compare`` with rsatoolbox 0.3.2's signature, computed by l2bg's comparison registry.

Methods ``cosine``, ``corr``, ``spearman``, ``rho-a``, ``tau-a`` and ``kendall`` / ``tau-b`` run
in torch (:mod:`l2bg.rsa.comparisons`): every RDM of either side is prepared (normalised or
ranked) once, then all (K1, K2) pairs are combined in one GEMM or one batched Kendall pass. The
result is rsatoolbox's (K1, K2) float64 array. rsatoolbox's conventions hold: positions that are
NaN in any RDM are left out of every comparison (both sides must agree on them); a zero-norm
vector gives 0 for cosine, corr, spearman, and where there is one the others land where
rsatoolbox's ``np.putmask`` puts them (``_putmask_layout``; shifted, as in rsatoolbox 0.3.2);
Kendall's tau-b of a constant vector is NaN. Other
methods (``corr_cov``, ``cosine_cov``, ``neg_riem_dist``, ``bures``, ...) go to rsatoolbox.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from l2bg.rsa import comparisons
from l2bg.rsa.rsatoolbox.options import on_blas_threads, original, require, resolve

__all__ = ["FAST_METHODS", "compare"]

FAST_METHODS = {"cosine": "cosine", "corr": "pearson", "spearman": "spearman",
                "rho-a": "rho-a", "tau-a": "tau-a", "kendall": "tau-b", "tau-b": "tau-b"}
"""rsatoolbox's method name -> the kind in :mod:`l2bg.rsa.comparisons`."""


def _vectors(rdm: Any) -> np.ndarray:
    """(K, m) dissimilarity vectors of an RDMs object or of an array, as rsatoolbox reads them."""
    if not isinstance(rdm, np.ndarray):
        return rdm.get_vectors()
    return rdm.reshape(1, -1) if rdm.ndim == 1 else rdm


@on_blas_threads
def compare(rdm1: Any, rdm2: Any, method: str = "cosine", sigma_k: Any = None, *,
            dtype: object = None, device: str | None = None) -> np.ndarray:
    """``rsatoolbox.rdm.compare`` on l2bg: same arguments, same (K1, K2) array (within 1e-6).

    ``dtype`` ('float64' default, or 'float32') and ``device`` override the drop-in's
    configured defaults for this call."""
    require()
    kind = FAST_METHODS.get(method)
    if kind is None:
        return original("compare")(rdm1, rdm2, method, sigma_k)
    v1, v2 = _vectors(rdm1), _vectors(rdm2)
    if v1.ndim != 2 or v2.ndim != 2 or v1.dtype.kind not in "fiu" or v2.dtype.kind not in "fiu":
        return original("compare")(rdm1, rdm2, method, sigma_k)
    if v1.shape[1] != v2.shape[1]:
        raise ValueError("rdm1 and rdm2 must be RDMs of equal shape")
    dt, dev = resolve(dtype, device)
    t1 = torch.as_tensor(np.ascontiguousarray(v1)).to(device=dev, dtype=dt)
    t2 = torch.as_tensor(np.ascontiguousarray(v2)).to(device=dev, dtype=dt)
    if not bool(torch.isfinite(t1.sum() + t2.sum())):  # NaN/inf somewhere (or overflow)
        nan1, nan2 = t1.isnan().any(dim=0), t2.isnan().any(dim=0)
        if not torch.equal(nan1, nan2):  # positions missing from any RDM are left out
            raise ValueError("rdm1 and rdm2 have different nan positions")
        t1, t2 = t1[:, ~nan1], t2[:, ~nan1]
        if not (bool(t1.isfinite().all()) and bool(t2.isfinite().all())):  # inf: rsatoolbox's
            return original("compare")(rdm1, rdm2, method, sigma_k)
    if t1.shape[1] < 3:
        return original("compare")(rdm1, rdm2, method, sigma_k)
    a, b = comparisons.prepare(kind, t1, t2)
    sim = comparisons.cross(kind, a, b, degenerate=float("nan")).to("cpu", torch.float64).numpy()
    if kind in _COSINE_FAMILY:
        keep = ~np.isnan(v1).any(axis=0)
        sim = _putmask_layout(sim, _nonzero(kind, v1, keep, a), _nonzero(kind, v2, keep, b))
    return sim


_COSINE_FAMILY = ("cosine", "pearson", "spearman")
"""The methods rsatoolbox computes by ``_cosine`` (of the vectors, centred, centred ranks)."""


def _nonzero(kind: str, v: np.ndarray, keep: np.ndarray, prep: comparisons.Prepared
             ) -> np.ndarray:
    """Per row, whether the vector rsatoolbox's ``_cosine`` receives has a norm > 0, as it
    computes it (float64 numpy, the kept positions). Centred vectors (corr) and centred ranks
    (spearman) are zero only for constant rows, which ``prep.dead`` (constant in the compared
    dtype, a superset) names; only those rows are checked."""
    if kind == "cosine":
        w = v[:, keep] if not keep.all() else v
        return np.sqrt(np.einsum("ij,ij->i", w, w, dtype=np.float64)) > 0
    out = np.ones(v.shape[0], dtype=bool)
    for i in np.flatnonzero(prep.dead.cpu().numpy()):
        row = v[i, keep].astype(np.float64)
        out[i] = bool((row != row[0]).any()) if kind == "spearman" else bool(
            (row - row.mean()).any())
    return out


def _putmask_layout(sim: np.ndarray, nz1: np.ndarray, nz2: np.ndarray) -> np.ndarray:
    """rsatoolbox 0.3.2's ``_cosine`` where a vector has norm 0: it computes the (k1, k2)
    block of the nonzero rows and scatters it with ``np.putmask`` into zeros at the nonzero
    pairs, and putmask takes ``values.flat[i % size]`` for flat position i, not the next value:
    the block's values land shifted. Reproduced (``sim`` is right at the nonzero pairs)."""
    if nz1.all() and nz2.all():
        return sim
    out = np.zeros_like(sim)
    np.putmask(out, np.outer(nz1, nz2), sim[nz1][:, nz2])
    return out
