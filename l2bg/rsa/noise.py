"""Noise covariance and precision estimates with rsatoolbox's estimators, as GEMMs in torch.

The numerical core of the drop-in's ``prec_from_residuals`` / ``prec_from_measurements``
(:mod:`l2bg.rsa.rsatoolbox`). Rows x (N, p) are residuals or measurements with their mean
removed; ``dof`` is the degrees of freedom. Estimators (rsatoolbox 0.3.2 definitions):

* ``full``: ``S = X^T X / dof``.
* ``diag``: the diagonal of ``full``.
* ``shrinkage_eye`` (Ledoit & Wolf 2004): ``S = X^T X / N`` shrunk towards ``mu I`` with
  ``mu = tr(S) / p``, weight ``b2 / d2`` where ``d2 = ||S - mu I||_F^2`` and
  ``b2 = min(d2, sum((X∘X)^T (X∘X) / N - S∘S) / N)``; then times ``N / dof``.
* ``shrinkage_diag`` (Schäfer & Strimmer 2005): off-diagonal entries of ``X^T X / dof`` times
  ``1 - lambda``, lambda from the variance of the standardised products, clipped to [0, 1].

The per-row outer products rsatoolbox loops over are two symmetric GEMMs here:
``sum_l x_l x_l^T = X^T X`` and ``sum_l (x_l x_l^T)∘(x_l x_l^T) = (X∘X)^T (X∘X)``. The precision
is the inverse by Cholesky (symmetric positive definite estimates), by LU when that fails.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from l2bg.rsa.distances import symmetric_gram

__all__ = ["METHODS", "covariance", "demean", "precision"]

METHODS = ("shrinkage_diag", "shrinkage_eye", "diag", "full")


def demean(x: Tensor) -> tuple[Tensor, int]:
    """Rows with their mean removed and the natural degrees of freedom, as rsatoolbox: (N, p)
    -> column means removed, N - 1; (C, p, R) (conditions x channels x repetitions) -> the mean
    over repetitions removed, rows (C R, p), (C - 1) R."""
    if x.ndim == 2:
        return x - x.mean(dim=0, keepdim=True), x.shape[0] - 1
    c, p, r = x.shape
    rows = (x - x.mean(dim=2, keepdim=True)).permute(0, 2, 1).reshape(c * r, p)
    return rows, (c - 1) * r


def covariance(x: Tensor, dof: float, method: str) -> Tensor:
    """The ``method`` estimate (p, p) from demeaned rows x (N, p)."""
    n, p = x.shape
    if method == "diag":
        return torch.diag(torch.einsum("ij,ij->j", x, x) / dof)
    s_sum = symmetric_gram(x.T)
    if method == "full":
        return s_sum.div_(dof)
    s2_sum = symmetric_gram((x * x).T)
    eye = torch.eye(p, dtype=x.dtype, device=x.device)
    if method == "shrinkage_eye":
        s = s_sum.div_(n)
        b2 = float((s2_sum.div_(n) - s * s).sum()) / n
        mu = float(torch.trace(s)) / p
        d2 = float(((s - mu * eye) ** 2).sum())
        b2 = min(d2, b2)
        return (s * ((d2 - b2) / d2) + eye * (b2 / d2 * mu)).mul_(n / dof)
    if method != "shrinkage_diag":
        raise ValueError(f"unknown covariance method {method!r}; use one of {', '.join(METHODS)}")
    s = s_sum / dof
    var = torch.diagonal(s).clone()
    std = var.sqrt()
    s_mean = s_sum.div_(std[None, :]).div_(std[:, None]).div_(n - 1)
    s2_mean = s2_sum.div_(var[None, :]).div_(var[:, None]).div_(n - 1)
    sq = s_mean.mul_(s_mean)
    var_hat = s2_mean.sub_(sq).mul_(n / dof**2)
    lamb = float(var_hat.sum() - var_hat.trace()) / float(sq.sum() - sq.trace())
    lamb = max(min(lamb, 1.0), 0.0)
    s.mul_(1.0 - lamb).diagonal().copy_(var)  # off-diagonal entries shrunk, variances kept
    return s


def precision(cov: Tensor, *, diagonal: bool = False) -> Tensor:
    """The inverse of a covariance estimate: elementwise for a ``diagonal`` one, Cholesky for
    positive definite matrices, else LU; a singular matrix raises ``numpy.linalg.LinAlgError``
    as ``numpy.linalg.inv`` does."""
    if diagonal:
        d = torch.diagonal(cov)
        if bool((d == 0).any()):
            raise np.linalg.LinAlgError("Singular matrix")
        return torch.diag(1.0 / d)
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) == 0:
        return torch.cholesky_inverse(chol)
    inv, info = torch.linalg.inv_ex(cov)
    if int(info) != 0:
        raise np.linalg.LinAlgError("Singular matrix")
    return inv
