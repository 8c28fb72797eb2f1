"""``prec_from_residuals`` and ``prec_from_measurements`` with rsatoolbox 0.3.2's signatures.

The estimators (``shrinkage_diag``, ``shrinkage_eye``, ``diag``, ``full``) run as two symmetric
GEMMs and a Cholesky inverse in torch (:mod:`l2bg.rsa.noise`) instead of rsatoolbox's loop of
p x p outer products (its #214: 1,800 x 7,000 measurements). Inputs the fast path does not know
(other methods, ragged or non-finite arrays, ``dof`` lists, other Dataset classes) go to
rsatoolbox unchanged. Results are numpy arrays, or lists of them, as rsatoolbox returns them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from l2bg.rsa import noise as noise_math
from l2bg.rsa.rsatoolbox.calc import as_tensor, group_means
from l2bg.rsa.rsatoolbox.options import fast_input, on_blas_threads, original, require, resolve

__all__ = ["prec_from_measurements", "prec_from_residuals"]


class _Degenerate(Exception):
    """The estimate divides by zero (all-zero data, one channel, one observation per
    condition, no degrees of freedom): rsatoolbox answers such input (NaN matrices, or its own
    error), so it computes it."""


def _precision(rows: torch.Tensor, dof: Any, natural: int, method: str) -> np.ndarray:
    try:
        cov = noise_math.covariance(rows, natural if dof is None else dof, method)
    except ZeroDivisionError:
        raise _Degenerate from None
    if not bool(torch.isfinite(cov).all()):
        raise _Degenerate
    prec = noise_math.precision(cov, diagonal=method == "diag")
    return prec.to("cpu", torch.float64).numpy()


def _finite(a: Any, ndim: tuple[int, ...]) -> bool:
    return fast_input(a) and a.ndim in ndim


def _scalar_dof(dof: Any) -> bool:
    return dof is None or (isinstance(dof, int | float | np.integer | np.floating)
                           and not isinstance(dof, bool))


@on_blas_threads
def prec_from_residuals(residuals: Any, dof: Any = None, method: str = "shrinkage_diag", *,
                        dtype: object = None, device: str | None = None) -> Any:
    """``rsatoolbox.data.prec_from_residuals`` on l2bg: the precision (p, p) of residuals
    (N, p), or a list of them for a list (or (k, N, p) array) of residual matrices."""
    require()
    if method not in noise_math.METHODS or not _scalar_dof(dof):
        return original("prec_from_residuals")(residuals, dof, method)
    single = isinstance(residuals, np.ndarray) and residuals.ndim == 2
    parts = [residuals] if single else (list(residuals) if isinstance(residuals, Iterable)
                                        else None)
    if parts is None or not parts or not all(_finite(r, (2,)) and r.shape[0] > 1 for r in parts):
        return original("prec_from_residuals")(residuals, dof, method)
    dt, dev = resolve(dtype, device)
    out = []
    try:
        for r in parts:
            rows, natural = noise_math.demean(as_tensor(r, dt, dev))
            out.append(_precision(rows, dof, natural, method))
    except _Degenerate:
        return original("prec_from_residuals")(residuals, dof, method)
    return out[0] if single else out


@on_blas_threads
def prec_from_measurements(dataset: Any, obs_desc: str, dof: Any = None,
                           method: str = "shrinkage_diag", *, dtype: object = None,
                           device: str | None = None) -> Any:
    """``rsatoolbox.data.prec_from_measurements`` on l2bg: the precision of the measurements
    around their condition means (``obs_desc``); a list of datasets gives a list, estimated
    as rsatoolbox does for lists (around each dataset's condition means, N - C dof)."""
    rsa = require()
    if method not in noise_math.METHODS or not _scalar_dof(dof):
        return original("prec_from_measurements")(dataset, obs_desc, dof, method)
    single = not isinstance(dataset, Iterable)
    parts = [dataset] if single else list(dataset)
    if not parts or not all(type(d) is rsa.data.Dataset and obs_desc in d.obs_descriptors
                            and _finite(d.measurements, (2,)) for d in parts):
        return original("prec_from_measurements")(dataset, obs_desc, dof, method)
    try:
        return _measurements(rsa, dataset, parts, single, obs_desc, dof, method,
                             *resolve(dtype, device))
    except _Degenerate:
        return original("prec_from_measurements")(dataset, obs_desc, dof, method)


def _measurements(rsa: Any, dataset: Any, parts: list, single: bool, obs_desc: str, dof: Any,
                  method: str, dt: torch.dtype, dev: torch.device) -> Any:
    if single:
        try:
            tensor, _ = dataset.get_measurements_tensor(obs_desc)
        except ValueError:  # unequal repetitions: rsatoolbox's own error
            return original("prec_from_measurements")(dataset, obs_desc, dof, method)
        rows, natural = noise_math.demean(as_tensor(tensor, dt, dev))
        return _precision(rows, dof, natural, method)
    from rsatoolbox.util.data_utils import get_unique_inverse

    out = []
    for d in parts:
        values, inverse = get_unique_inverse(d.obs_descriptors[obs_desc])
        x = as_tensor(d.measurements, dt, dev)
        means = group_means(x.unsqueeze(0), inverse, len(values))[0]
        rows, _ = noise_math.demean(x - means[torch.from_numpy(inverse).to(dev)])
        out.append(_precision(rows, dof, x.shape[0] - len(values), method))
    return out
