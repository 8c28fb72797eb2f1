"""rsatoolbox 0.3.2's ``evaluate_models_searchlight`` with ``eval_fixed``, batched, on l2bg.

rsatoolbox calls ``eval_fixed`` once per searchlight centre (one RDM each): a compare per model
and a ``boot_noise_ceiling`` of the one RDM, whose leave-one-out set is the RDM itself. Here the
centres' RDMs are transformed once, one product scores every model at every centre, and the
ceilings (the RDM's pooled self against itself: 1, below 1 for tau-a with ties) come from one
batched pass over the pairs (centre, its pool). Each centre gets rsatoolbox's own ``Result`` with
eval_fixed's fields. A centre with NaN or a degenerate RDM is evaluated by ``eval_fixed`` (the
drop-in's, which leaves such RDMs to rsatoolbox's arithmetic); fitted models, other evaluation
functions, a theta or other methods go to rsatoolbox unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from l2bg.rsa import comparisons
from l2bg.rsa.rsatoolbox.ceiling import prepare_rows
from l2bg.rsa.rsatoolbox.compare import FAST_METHODS
from l2bg.rsa.rsatoolbox.inference import (
    _fixed_predictions,
    _one_thread,
    _rsa,
    _tensor,
    eval_fixed,
)
from l2bg.rsa.rsatoolbox.options import original

__all__ = ["evaluate_models_searchlight"]


def _dead_rows(kind: str, prep: comparisons.Prepared) -> np.ndarray:
    """Rows that are degenerate (constant, zero norm), as :func:`ceiling.is_dead` per row."""
    dead = prep.dead.clone()
    if prep.unit is not None and kind != "rho-a":
        dead |= prep.unit.abs().sum(dim=1) == 0
    return dead.cpu().numpy()


@_one_thread
def evaluate_models_searchlight(sl_RDM: Any, models: Any, eval_function: Any,  # noqa: N803
                                method: str = "corr", theta: Any = None,
                                n_jobs: int = 1) -> list:
    """``rsatoolbox.util.searchlight.evaluate_models_searchlight`` on l2bg: the list of each
    centre's ``Result`` (``eval_fixed`` of fixed models: batched; ``n_jobs`` is not needed)."""
    rsa = _rsa()
    kind = FAST_METHODS.get(method)
    preds = None
    v = None
    if (kind is not None and theta is None and isinstance(sl_RDM, rsa.rdm.RDMs)
            and sl_RDM.n_rdm > 0
            and (eval_function is eval_fixed or eval_function is original("eval_fixed"))):
        v = sl_RDM.get_vectors()
        finite = np.isfinite(v).all(axis=1) if v.dtype.kind in "fiu" else None
        if finite is not None and finite.any():
            preds = _fixed_predictions(models, sl_RDM[int(np.argmax(finite))], None)
    if preds is None or any(p.n_rdm != 1 for p in preds):
        return original("evaluate_models_searchlight")(sl_RDM, models, eval_function,
                                                       method=method, theta=theta,
                                                       n_jobs=n_jobs)
    models = rsa.util.inference_util.input_check_model(models, None, None, 1)[0]
    mprep = comparisons.prepare(kind, _tensor(np.concatenate([p.get_vectors()
                                                              for p in preds])))[0]
    if _dead_rows(kind, mprep).any():  # a degenerate model: eval_fixed per centre
        return [eval_fixed(models, sl_RDM[c], method=method) for c in range(sl_RDM.n_rdm)]
    rows = np.flatnonzero(finite)
    sample = prepare_rows(kind, _tensor(v[rows]))
    scores = comparisons.cross(kind, mprep, sample.prep, degenerate=float("nan"))
    own = torch.arange(len(rows), device=scores.device)
    pooled = comparisons.prepare(kind, sample.pooled)[0]
    ceiling = comparisons.pairs(kind, pooled, sample.prep, own, own, degenerate=float("nan"))
    scores, ceiling = scores.cpu().numpy(), ceiling.cpu().numpy()
    good = np.zeros(sl_RDM.n_rdm, dtype=bool)
    good[rows[~_dead_rows(kind, sample.prep)]] = True
    where = np.full(sl_RDM.n_rdm, -1)
    where[rows] = np.arange(len(rows))
    results = []
    for c in range(sl_RDM.n_rdm):
        if not good[c]:
            results.append(eval_fixed(models, sl_RDM[c], method=method))
            continue
        k = where[c]
        result = rsa.inference.result.Result(
            models, scores[:, k].reshape(1, len(models), 1), method=method,
            cv_method="fixed", noise_ceiling=np.array([ceiling[k], ceiling[k]]),
            variances=None, dof=0, n_rdm=1, n_pattern=None)
        result.n_pattern = sl_RDM.n_cond
        results.append(result)
    return results
