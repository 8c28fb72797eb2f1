"""``compare`` with rsatoolbox 0.3.2's signature, computed by l2bg's comparison registry.

Methods ``cosine``, ``corr``, ``spearman``, ``rho-a``, ``tau-a`` and ``kendall`` / ``tau-b`` run
in torch (:mod:`l2bg.rsa.comparisons`): every RDM of either side is prepared (normalised or
ranked) once, then all (K1, K2) pairs are combined in one GEMM or one batched Kendall pass. The
result is rsatoolbox's (K1, K2) float64 array. rsatoolbox's conventions hold: positions that are
NaN in any RDM are left out of every comparison (both sides must agree on them); a zero-norm
vector gives 0 for cosine, corr, spearman; Kendall's tau-b of a constant vector is NaN. Other
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
    sim = comparisons.cross(kind, a, b, degenerate=float("nan"))
    return sim.to("cpu", torch.float64).numpy()
