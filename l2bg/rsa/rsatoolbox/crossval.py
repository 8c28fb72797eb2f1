"""rsatoolbox 0.3.2's ``bootstrap_crossval`` for fixed models, batched, on l2bg.

Every sample and every cross-validation split is drawn with the numpy calls rsatoolbox makes,
in its order: the bootstrap (``np.random.randint`` over RDM groups, then patterns), then per
repetition ``sets_k_fold``'s ``np.random.shuffle`` of the sample's RDM groups and one shuffle of
its patterns per RDM fold. A shuffle's permutation depends only on the array's length, so the
positions are shuffled and the values read through them. Each pattern fold's columns are the
kept (non-NaN) pairs of the original vectors; every data RDM and model is prepared once per
pattern fold and one product gives all folds' scores; the ceilings pool the training RDMs (the
fold's columns) and the whole sample (all its columns, then the fold's) as weighted sums of
transformed rows, as ``cv_noise_ceiling`` does. A repetition with a degenerate RDM or a
cancelling pool is redone by rsatoolbox's own ``_internal_cv`` from the same random state.
Fitted models, a fitter, k = 1 on both axes, other methods go to rsatoolbox unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from l2bg.rsa import comparisons
from l2bg.rsa.rsatoolbox.ceiling import ILL_CONDITIONED, RANK_KINDS, prepare_rows
from l2bg.rsa.rsatoolbox.compare import FAST_METHODS
from l2bg.rsa.rsatoolbox.inference import (
    _fixed_predictions,
    _kept_columns,
    _one_thread,
    _rsa,
    _selection,
    _tensor,
)
from l2bg.rsa.rsatoolbox.options import original

__all__ = ["bootstrap_crossval", "cv_noise_ceiling"]


def _folds(n: int, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(test, train) positions of sets_k_fold's k groups of n shuffled items."""
    size, extra = n // k, n % k
    out = []
    for g in range(k):
        test = np.arange(g * size, (g + 1) * size)
        if g < extra:
            test = np.concatenate([test, [n - (g + 1)]])
        rest = np.ones(n, dtype=bool)
        rest[test] = False
        train = test if k <= 1 else np.flatnonzero(rest)  # np.setdiff1d(arange(n), test)
        out.append((test.astype(np.int64), train.astype(np.int64)))
    return out


@functools.lru_cache(maxsize=256)
def _triu(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.triu_indices(n, 1)``, kept (a sample's folds ask for the same few sizes)."""
    i, j = np.triu_indices(n, 1)
    i.flags.writeable = j.flags.writeable = False
    return i, j


def _shuffled(values: np.ndarray) -> np.ndarray:
    """``values`` permuted by the same ``np.random.shuffle`` draw rsatoolbox makes on them."""
    order = np.arange(len(values))
    np.random.shuffle(order)
    return values[order]


class _Rep:
    """One repetition of rsatoolbox's ``_internal_cv`` on one bootstrap sample, in batch."""

    batched = True
    """cosine: all folds of a repetition at once (``_cosine_folds``); False: fold by fold
    (``_gram_fold``, the reference the property tests compare it with)."""

    def __init__(self, kind: str, data: torch.Tensor, models: torch.Tensor, model_rows: list,
                 n_cond: int, rdm_desc: np.ndarray, pat_desc: np.ndarray) -> None:
        self.kind, self.data, self.models, self.model_rows = kind, data, models, model_rows
        self.n_cond, self.rdm_desc, self.pat_desc = n_cond, rdm_desc, pat_desc
        self._cached: tuple | None = None
        self.rows = torch.cat([data, models]).T.contiguous()  # every column as a row, once
        self._pairs: tuple | None = None  # (a, the sample's (i, j) -> kept column table)

    def run(self, rdm_idx: np.ndarray, pattern_idx: np.ndarray, k_pattern: int,
            k_rdm: int) -> tuple[np.ndarray, tuple[float, float]] | None:
        """(n_models, folds) scores and (lower, upper) ceiling; None where degenerate (the
        random draws are made either way)."""
        values = np.unique(rdm_idx)
        rdm_folds = []
        rdm_select = _shuffled(values)
        pat_values = np.unique(pattern_idx)
        for test, train in _folds(len(rdm_select), k_rdm):
            pats = _shuffled(pat_values)
            rdm_folds.append((np.isin(self.rdm_desc, rdm_select[test]),
                              np.isin(self.rdm_desc, rdm_select[train]),
                              [(pats[t], pats[r]) for t, r in _folds(len(pats), k_pattern)]))
        key = (rdm_idx.tobytes(), pattern_idx.tobytes())
        if self._cached is None or self._cached[0] != key:  # the n_cv repetitions share it
            self._cached = key, self._sample(rdm_idx, pattern_idx)
        sample = self._cached[1]
        if sample is None:
            return None
        weight, sel, a, b, y, x, wt, total, cols = sample
        dev = self.data.device
        pats = self.pat_desc[sel]
        if self.kind == "cosine" and self.batched:  # every fold at once, a few products
            return self._cosine_folds(rdm_folds, weight, wt, pats, a, b, y, x, total, cols)
        evals, ceil, flags = [], [], []
        for test_rows, train_rows, pattern_folds in rdm_folds:
            w_test = torch.as_tensor(weight * test_rows / (weight * test_rows).sum(), device=dev)
            w_train = torch.as_tensor(weight * train_rows, device=dev)
            for test_pats, train_pats in pattern_folds:
                in_test = np.isin(pats, test_pats)
                n_test, n_train = int(in_test.sum()), int(np.isin(pats, train_pats).sum())
                mask = torch.as_tensor((in_test[a] & in_test[b]).nonzero()[0], device=dev)
                if mask.numel() < 3:
                    return None
                if self.kind in ("cosine", "pearson"):
                    scores, s, flag = self._gram_fold(y[:, mask], x[:, mask], w_train,
                                                      total[mask], float(wt.sum()),
                                                      mask.numel() / max(len(a), 1))
                    flags.append(flag)
                else:
                    scores, s = self._fold(y[:, mask], x[:, mask], w_train, total[mask],
                                           float(wt.sum()), mask.numel() / max(len(a), 1),
                                           flags)
                if n_train <= 2 or n_test <= 2:
                    scores = torch.full_like(scores, float("nan"))
                evals.append(scores @ w_test)
                ceil.append(s @ w_test)
        if bool(torch.stack(flags).any()):
            return None
        per_row = torch.stack(evals, dim=1).cpu().numpy()  # (model rows, folds)
        lower, upper = torch.stack(ceil, dim=1).cpu().numpy()
        return self._per_model(per_row), (float(np.mean(lower)), float(np.mean(upper)))

    def _sample(self, rdm_idx: np.ndarray, pattern_idx: np.ndarray) -> tuple | None:
        """What every repetition of one bootstrap sample shares: the RDM weights, the pattern
        selection and its kept pairs (a, b), the data and model columns, and the whole sample's
        pool; None where a row is degenerate."""
        values, counts = np.unique(rdm_idx, return_counts=True)
        weight = np.zeros(len(self.rdm_desc))
        for v, c in zip(values, counts, strict=True):
            weight[self.rdm_desc == v] = c
        sel = _selection(self.pat_desc, pattern_idx)
        i, j = np.triu_indices(len(sel), 1)
        keep = sel[i] != sel[j]
        a, b = i[keep], j[keep]  # the sample's kept pairs, in rsatoolbox's column order
        dev = self.data.device
        cols = torch.as_tensor(_kept_columns(self.n_cond, sel), device=dev)
        y, x = self.data[:, cols], self.models[:, cols]
        wt = torch.as_tensor(weight, device=dev)
        if self.kind in ("cosine", "pearson"):  # the whole sample's pool: sum of w / norm rows
            yc = y - y.mean(dim=1, keepdim=True) if self.kind == "pearson" else y
            norms = torch.linalg.vector_norm(yc, dim=1)
            if not bool(torch.isfinite(norms).all() and (norms >= 2.0**-500).all()) or (
                    self.kind == "pearson" and bool((y.amax(1) == y.amin(1)).any())):
                return None
            total = (wt / norms) @ yc
        else:
            full = prepare_rows(self.kind, y)
            if full.dead:
                return None
            total = wt @ full.pooled
        return weight, sel, a, b, y, x, wt, total, cols

    def _cosine_folds(self, rdm_folds: list, weight: np.ndarray, wt: torch.Tensor,
                      pats: np.ndarray, a: np.ndarray, b: np.ndarray, y: torch.Tensor,
                      x: torch.Tensor, total: torch.Tensor, cols: torch.Tensor
                      ) -> tuple | None:
        """Every (RDM fold, pattern fold) of a cosine repetition at once: :meth:`_gram_fold`'s
        arithmetic batched over the F folds. Each fold's kept columns (the pairs of its test
        positions) of data and models are gathered as rows (``rows``: the vectors transposed
        once) by one index (F, L), padded with zeros to the largest fold, so norms are one
        reduction and Grams and scores one batched product. None where a fold has fewer than
        3 columns, a row is degenerate or a pool cancels (as ``_gram_fold``)."""
        dev, p = y.device, len(a)
        values, codes = np.unique(pats, return_inverse=True)  # np.isin by a lookup table
        member = np.zeros(len(values), dtype=bool)

        def among(some: np.ndarray) -> np.ndarray:
            member[:] = False
            member[np.searchsorted(values, some)] = True
            return member[codes]

        in_test, w_test, w_train, n_small = [], [], [], []
        for test_rows, train_rows, pattern_folds in rdm_folds:
            wte = weight * test_rows
            for test_pats, train_pats in pattern_folds:
                t = among(test_pats)
                in_test.append(t)
                w_test.append(wte / wte.sum())
                w_train.append(weight * train_rows)
                n_small.append(min(int(t.sum()), int(among(train_pats).sum())) <= 2)
        if self._pairs is None or self._pairs[0] is not a:  # once per sample
            pair = np.full((len(pats), len(pats)), -1, dtype=np.int64)
            pair[a, b] = np.arange(p)  # kept pair (i, j) of the selection -> its column
            self._pairs = a, pair
        pair = self._pairs[1]
        lists = []
        for t in in_test:  # a fold's kept pairs: pairs of its test positions, in column order
            at = np.flatnonzero(t)
            i, j = _triu(len(at))
            c = pair[at[i], at[j]]
            lists.append(c[c >= 0])
        count = np.array([len(c) for c in lists])
        if int(count.min()) < 3:
            return None
        index = np.zeros((len(count), int(count.max())), dtype=np.int64)
        for f, c in enumerate(lists):
            index[f, :len(c)] = c
        pad = torch.as_tensor(np.arange(index.shape[1]) >= count[:, None], device=dev)
        flat = torch.as_tensor(index.reshape(-1), device=dev)
        nd = y.shape[0]
        # (F, L, nd + nm): every fold's columns of data and models as rows, padding zeroed
        got = self.rows.index_select(0, cols.index_select(0, flat)).view(*index.shape, -1)
        got.masked_fill_(pad[:, :, None], 0.0)
        up = total.index_select(0, flat).view(index.shape).masked_fill_(pad, 0.0)
        yf = got[..., :nd]
        w_test_t = torch.as_tensor(np.stack(w_test), device=dev)
        w_train_t = torch.as_tensor(np.stack(w_train), device=dev)
        products = got.mT @ got  # (F, nd + nm, nd + nm): Grams, scores, squared norms
        norms = products.diagonal(dim1=1, dim2=2).sqrt()
        ny, nx = norms[:, :nd], norms[:, nd:]
        n_up = (up * up).sum(dim=1).sqrt()
        flag = torch.zeros((), dtype=torch.bool, device=dev)
        for n in (ny, nx):  # zero, or beyond float64's squares: comparisons' rescaling path
            flag = flag | ~torch.isfinite(n).all() | (n < 2.0**-500).any()
        gram, xy = products[:, :nd, :nd], products[:, nd:, :nd]
        yu = (up[:, None, :] @ yf)[:, 0]  # (F, nd): the whole sample's pool against each row
        scores = (xy / (nx[:, :, None] * ny[:, None, :])).clamp_(-1.0, 1.0)
        c = w_train_t / ny
        cg = (c[:, None, :] @ gram)[:, 0]  # (F, nd): the lower pool against each row
        n_lo = (cg * c).sum(dim=1).clamp(min=0).sqrt()
        frac = torch.as_tensor(count / max(p, 1), device=dev)
        flag = flag | (n_lo < ILL_CONDITIONED * w_train_t.sum(dim=1)).any() | (
            n_up < ILL_CONDITIONED * float(wt.sum()) * frac.sqrt()).any()
        if bool(flag):
            return None
        small = torch.as_tensor(np.asarray(n_small), device=dev)
        scores = torch.where(small[:, None, None], float("nan"), scores)
        per_row = (scores @ w_test_t[:, :, None])[..., 0].T.cpu().numpy()  # (model rows, F)
        s_lo = (cg / (ny * n_lo[:, None])).clamp_(-1.0, 1.0)
        s_up = (yu / (ny * n_up[:, None])).clamp_(-1.0, 1.0)
        lower = (s_lo * w_test_t).sum(dim=1).cpu().numpy()
        upper = (s_up * w_test_t).sum(dim=1).cpu().numpy()
        return self._per_model(per_row), (float(np.mean(lower)), float(np.mean(upper)))

    def _per_model(self, per_row: np.ndarray) -> np.ndarray:
        """(n_models, folds): the mean over each model's rows."""
        return np.stack([per_row[lo:lo + n].mean(axis=0) for lo, n in
                         zip(np.cumsum([0, *self.model_rows[:-1]]), self.model_rows,
                             strict=True)])

    def _fold(self, yf: torch.Tensor, xf: torch.Tensor, w_train: torch.Tensor,
              up: torch.Tensor, n_all: float, frac: float, flags: list) -> tuple:
        """Models' scores and the (lower, upper) pools' scores of one fold: each side prepared
        by :mod:`l2bg.rsa.comparisons` (the rank methods)."""
        fold = prepare_rows(self.kind, yf)
        mprep = comparisons.prepare(self.kind, xf)[0]
        flags.append(self._dead(fold.prep))
        flags.append(self._dead(mprep))
        scores = comparisons.cross(self.kind, mprep, fold.prep, degenerate=float("nan"))
        pools = torch.stack([w_train @ fold.pooled, up])
        if self.kind not in RANK_KINDS:
            flags.append(self._cancels(pools, float(w_train.sum()), n_all, frac))
        s = comparisons.cross(self.kind, comparisons.prepare(self.kind, pools)[0], fold.prep,
                              degenerate=float("nan"))
        return scores, s

    def _gram_fold(self, yf: torch.Tensor, xf: torch.Tensor, w_train: torch.Tensor,
                   up: torch.Tensor, n_all: float, frac: float) -> tuple:
        """:meth:`_fold` for cosine and corr from the fold's Gram matrix: the lower pool is
        ``c @ Y`` with ``c = w / norms``, so its products with the data rows are ``c @ G`` and
        its norm ``sqrt(c G c)``; a flag where a row is degenerate or a pool cancels."""
        flag = torch.zeros((), dtype=torch.bool, device=yf.device)
        if self.kind == "pearson":
            flag = (yf.amax(1) == yf.amin(1)).any() | (xf.amax(1) == xf.amin(1)).any()
            yf = yf - yf.mean(dim=1, keepdim=True)
            xf = xf - xf.mean(dim=1, keepdim=True)
            up = up - up.mean()
        ny, nx = torch.linalg.vector_norm(yf, dim=1), torch.linalg.vector_norm(xf, dim=1)
        for n in (ny, nx):  # zero, or beyond float64's squares: comparisons' rescaling path
            flag = flag | ~torch.isfinite(n).all() | (n < 2.0**-500).any()
        scores = ((xf @ yf.T) / (nx[:, None] * ny[None, :])).clamp_(-1.0, 1.0)
        c = w_train / ny
        cg = c @ (yf @ yf.T)
        n_lo, n_up = (cg @ c).clamp(min=0).sqrt(), torch.linalg.vector_norm(up)
        flag = flag | (n_lo < ILL_CONDITIONED * w_train.sum()) | (
            n_up < ILL_CONDITIONED * n_all * frac ** 0.5)
        s = torch.stack([cg / (ny * n_lo), (yf @ up) / (ny * n_up)]).clamp_(-1.0, 1.0)
        return scores, s, flag

    def _dead(self, prep: comparisons.Prepared) -> torch.Tensor:
        """A degenerate row (constant, zero norm), as :func:`ceiling.is_dead`, without a sync."""
        dead = prep.dead.any()
        if prep.unit is not None and self.kind != "rho-a":
            dead = dead | (prep.unit.abs().sum(dim=1) == 0).any()
        return dead

    def _cancels(self, pools: torch.Tensor, n_train: float, n_all: float,
                 frac: float) -> torch.Tensor:
        """Whether a pool of unit rows nearly cancels (its direction is rounding noise); the
        whole sample's pool is judged on the fold's share ``frac`` of its columns."""
        c = pools - pools.mean(dim=1, keepdim=True) if self.kind == "pearson" else pools
        norm = torch.linalg.vector_norm(c, dim=1)
        return (norm[0] < ILL_CONDITIONED * n_train) | (norm[1] < ILL_CONDITIONED * n_all
                                                         * frac ** 0.5)


def _draw(boot_type: str, rdm_desc: np.ndarray, pat_desc: np.ndarray) -> tuple:
    """rsatoolbox's bootstrap draw for ``boot_type``: (rdm_idx, pattern_idx)."""
    rdm_select, pattern_select = np.unique(rdm_desc), np.unique(pat_desc)
    rdm_idx, pattern_idx = rdm_select, pattern_select
    if boot_type in ("both", "rdm"):
        rdm_idx = rdm_select[np.random.randint(0, len(rdm_select), size=len(rdm_select))]
    if boot_type in ("both", "pattern"):
        pattern_idx = pattern_select[np.random.randint(0, len(pattern_select),
                                                       size=len(pattern_select))]
    return rdm_idx, pattern_idx


@_one_thread
def bootstrap_crossval(models: Any, data: Any, method: str = "cosine", fitter: Any = None,
                       k_pattern: int | None = None, k_rdm: int | None = None, N: int = 1000,
                       n_cv: int = 2, pattern_descriptor: str = "index",
                       rdm_descriptor: str = "index", boot_type: str = "both",
                       use_correction: bool = True) -> Any:
    """``rsatoolbox.inference.bootstrap_crossval`` on l2bg (fixed models: batched)."""
    args = (models, data, method, fitter, k_pattern, k_rdm, N, n_cv, pattern_descriptor,
            rdm_descriptor, boot_type, use_correction)
    kind = FAST_METHODS.get(method)
    rsa = _rsa()
    util = rsa.util.inference_util
    if k_pattern is None:
        n_pattern = len(np.unique(data.pattern_descriptors[pattern_descriptor]))
        k_pattern = util.default_k_pattern((1 - 1 / np.exp(1)) * n_pattern)
    if k_rdm is None:
        n_rdm = len(np.unique(data.rdm_descriptors[rdm_descriptor]))
        k_rdm = 1 if n_rdm == 1 else util.default_k_rdm((1 - 1 / np.exp(1)) * n_rdm)
    preds = None
    if (kind is not None and fitter is None and boot_type in ("both", "pattern", "rdm")
            and (k_rdm > 1 or k_pattern > 1) and not (use_correction and n_cv <= 1)):
        preds = _fixed_predictions(models, data, pattern_descriptor)
    if preds is None:
        return original("bootstrap_crossval")(*args)
    if isinstance(models, rsa.model.Model):
        models = [models]
    vecs = [p.get_vectors() for p in preds]
    rdm_desc = np.asarray(data.rdm_descriptors[rdm_descriptor])
    pat_desc = np.asarray(data.pattern_descriptors[pattern_descriptor])
    rep = _Rep(kind, _tensor(data.get_vectors()), _tensor(np.concatenate(vecs)),
               [v.shape[0] for v in vecs], data.n_cond, rdm_desc, pat_desc)
    evaluations = np.empty((N, len(models), k_pattern * k_rdm, n_cv))
    noise_ceil = np.empty((2, N, n_cv))
    for i in range(N):
        rdm_idx, pattern_idx = _draw(boot_type, rdm_desc, pat_desc)
        if len(np.unique(rdm_idx)) < k_rdm or len(np.unique(pattern_idx)) < 3 * k_pattern:
            evaluations[i] = np.nan
            noise_ceil[:, i] = np.nan
            continue
        for r in range(n_cv):
            state = np.random.get_state()
            out = rep.run(rdm_idx, pattern_idx, k_pattern, k_rdm)
            if out is None:  # rsatoolbox's own arithmetic, from the same random state
                np.random.set_state(state)
                sample = data
                if boot_type != "pattern":
                    sample = sample.subsample(rdm_descriptor, rdm_idx)
                if boot_type != "rdm":
                    sample = sample.subsample_pattern(pattern_descriptor, pattern_idx)
                ev, nc = rsa.inference.evaluate._internal_cv(
                    models, sample, pattern_descriptor, rdm_descriptor, pattern_idx,
                    k_pattern, k_rdm, method, None)
                out = (ev[0], nc)
            evaluations[i, :, :, r] = out[0]
            noise_ceil[:, i, r] = out[1]
    return _result(rsa, models, evaluations, noise_ceil, data, method, boot_type, n_cv,
                   use_correction)


def _result(rsa: Any, models: list, evaluations: np.ndarray, noise_ceil: np.ndarray,
            data: Any, method: str, boot_type: str, n_cv: int, use_correction: bool) -> Any:
    """rsatoolbox's Result of bootstrap_crossval, its variances corrected for the n_cv
    repetitions (extrapolated to infinitely many) where asked."""
    ok = ~np.isnan(evaluations[:, 0, 0, 0])
    means = np.concatenate([evaluations[ok].mean(-1).mean(-1).T, noise_ceil[:, ok].mean(-1)])
    variances = np.cov(means)
    if use_correction and n_cv > 1:
        per_rep = evaluations[ok].mean(-2)
        var_1 = np.mean([np.cov(np.concatenate([per_rep[:, :, r].T, noise_ceil[:, ok, r]]))
                         for r in range(n_cv)], axis=0)
        variances = (n_cv * variances - var_1) / (n_cv - 1)
    n_rdm, n_cond = data.n_rdm, data.n_cond
    dof = min(n_rdm, n_cond) - 1
    cv_method = "bootstrap_crossval"
    if boot_type == "pattern":
        cv_method, dof, n_rdm = "bootstrap_crossval_pattern", data.n_cond - 1, None
    elif boot_type == "rdm":
        cv_method, dof, n_cond = "bootstrap_crossval_rdm", data.n_rdm - 1, None
    return rsa.inference.result.Result(
        models, evaluations, method=method, cv_method=cv_method, noise_ceiling=noise_ceil,
        variances=variances, dof=dof, n_rdm=n_rdm, n_pattern=n_cond)


def cv_noise_ceiling(rdms: Any, ceil_set: list, test_set: list, method: str = "cosine",
                     pattern_descriptor: str = "index") -> tuple[float, float]:
    """``rsatoolbox.inference.cv_noise_ceiling`` on l2bg: the whole set is pooled once (not
    once per fold, as in rsatoolbox: the same numbers) and the comparisons are the drop-in's."""
    if FAST_METHODS.get(method) is None:
        return original("cv_noise_ceiling")(rdms, ceil_set, test_set, method=method,
                                            pattern_descriptor=pattern_descriptor)
    from l2bg.rsa.rsatoolbox.compare import compare

    assert len(ceil_set) == len(test_set), "train_set and test_set must have the same length"
    pool_rdm = _rsa().util.pooling.pool_rdm
    whole = pool_rdm(rdms, method=method)
    lower, upper = [], []
    for (train, _), (test, values) in zip(ceil_set, test_set, strict=True):
        pred_train = pool_rdm(train, method=method).subsample_pattern(
            by=pattern_descriptor, value=values)
        pred_test = whole.subsample_pattern(by=pattern_descriptor, value=values)
        lower.append(np.mean(compare(pred_train, test, method)))
        upper.append(np.mean(compare(pred_test, test, method)))
    return np.mean(np.array(lower)), np.mean(np.array(upper))
