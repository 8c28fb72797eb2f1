"""rsatoolbox 0.3.2's ``eval_dual_bootstrap`` for fixed models without inner cross-validation
(``k_pattern = k_rdm = 1``), batched, on l2bg.

Each sample is rsatoolbox's ``bootstrap_sample`` (RDM groups, then patterns); the sample, its
RDM-only part and its pattern-only part are each evaluated as rsatoolbox's ``_internal_cv``
does with one fold: ``sets_k_fold`` shuffles the part's RDM groups, then its pattern groups (a
shuffle's draws depend only on the length, so a shuffle of positions replays them), the models'
mean score over the part's RDMs (what ``crossval`` gives for one fold of a fixed model) and
``boot_noise_ceiling`` of the part. Scores and ceilings come from the batched path of
:mod:`l2bg.rsa.rsatoolbox.inference`. Other folds, a fitter, fitted models, other methods go to
rsatoolbox unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from l2bg.rsa.rsatoolbox.compare import FAST_METHODS
from l2bg.rsa.rsatoolbox.inference import (
    _Batch,
    _fixed_predictions,
    _kept_columns,
    _one_thread,
    _rows,
    _rsa,
    _sample_object,
    _scores,
    _selection,
)
from l2bg.rsa.rsatoolbox.options import original

__all__ = ["eval_dual_bootstrap"]


def _shuffled(values: np.ndarray) -> np.ndarray:
    """``values`` in the order ``np.random.shuffle`` leaves them (the same draws)."""
    order = np.arange(len(values))
    np.random.shuffle(order)
    return values[order]


def _test_object(make: Any, rdm_descriptor: str, groups: np.ndarray) -> Any:
    """The test RDMs of rsatoolbox's one fold: the part, its RDM groups in shuffled order."""
    return make().subsample(rdm_descriptor, groups)


@_one_thread
def eval_dual_bootstrap(models: Any, data: Any, method: str = "cosine", fitter: Any = None,
                        k_pattern: int = 1, k_rdm: int = 1, N: int = 1000, n_cv: int = 2,
                        pattern_descriptor: str = "index", rdm_descriptor: str = "index",
                        use_correction: bool = True) -> Any:
    """``rsatoolbox.inference.eval_dual_bootstrap`` on l2bg (fixed models, one fold)."""
    kind = FAST_METHODS.get(method)
    preds = None
    if kind is not None and fitter is None and k_pattern == 1 and k_rdm == 1:
        preds = _fixed_predictions(models, data, pattern_descriptor)
    if preds is None:
        return original("eval_dual_bootstrap")(
            models, data, method=method, fitter=fitter, k_pattern=k_pattern, k_rdm=k_rdm, N=N,
            n_cv=n_cv, pattern_descriptor=pattern_descriptor, rdm_descriptor=rdm_descriptor,
            use_correction=use_correction)
    rsa = _rsa()
    if isinstance(models, rsa.model.Model):
        models = [models]
    batch = _Batch(kind, data, preds)
    rdm_desc = np.asarray(data.rdm_descriptors[rdm_descriptor])
    pat_desc = np.asarray(data.pattern_descriptors[pattern_descriptor])
    rdm_select, pattern_select = np.unique(rdm_desc), np.unique(pat_desc)
    evaluations = np.zeros((N, len(models), 1, 1, 3))
    noise_ceil = np.zeros((2, N, 1, 3))
    for i in range(N):
        rdm_idx = rdm_select[np.random.randint(0, len(rdm_select), size=len(rdm_select))]
        pattern_idx = pattern_select[np.random.randint(0, len(pattern_select),
                                                       size=len(pattern_select))]
        n_pat = len(np.unique(pattern_idx))
        if n_pat < 3:
            evaluations[i] = np.nan
            noise_ceil[:, i] = np.nan
            continue
        rows_rdm = _rows(rdm_desc, rdm_idx)
        cols = _kept_columns(batch.n_cond, _selection(pat_desc, pattern_idx))
        parts = (  # (rows, columns, rdm_idx, pattern_idx, distinct patterns)
            (rows_rdm, cols, rdm_idx, pattern_idx, n_pat),
            (rows_rdm, None, rdm_idx, None, len(pattern_select)),
            (np.arange(data.n_rdm), cols, None, pattern_idx, n_pat),
        )
        for v, (rows, part_cols, r_idx, p_idx, n_patterns) in enumerate(parts):
            groups = _shuffled(np.unique(rdm_desc[rows]))  # sets_k_fold's two shuffles
            np.random.shuffle(np.arange(n_patterns))
            make = functools.partial(_sample_object, data, rdm_descriptor, r_idx,
                                     pattern_descriptor, p_idx)
            sample, prep = batch.prepared(part_cols)
            evals, nc = _scores(batch, sample, prep, batch.rdm_objs, rows, rdm_desc[rows], make,
                                method, rdm_descriptor, pattern_descriptor, p_idx,
                                make_test=functools.partial(_test_object, make, rdm_descriptor,
                                                            groups))
            evaluations[i, :, 0, 0, v] = evals
            noise_ceil[:, i, 0, v] = nc
    ok = ~np.isnan(evaluations[:, 0, 0, 0, 0])
    matrix = np.concatenate([np.mean(np.mean(evaluations[ok], -2), -2),
                             np.mean(noise_ceil[:, ok], -2).transpose([1, 0, 2])], 1)
    matrix -= np.mean(matrix, 0, keepdims=True)
    variances = np.einsum("ijk,ilk->kjl", matrix, matrix) / (matrix.shape[0] - 1)
    return rsa.inference.result.Result(
        models, evaluations, method=method, cv_method="dual_bootstrap",
        noise_ceiling=noise_ceil, variances=variances, dof=min(data.n_rdm, data.n_cond) - 1,
        n_rdm=data.n_rdm, n_pattern=data.n_cond)
