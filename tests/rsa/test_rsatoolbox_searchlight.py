"""The drop-in's evaluate_models_searchlight equals rsatoolbox 0.3.2's (eval_fixed per centre) to
1e-10: every covered method, tied RDMs, a constant centre (rsatoolbox's own result or error),
both eval_fixed functions; fall-through for other evaluation functions and fitted models;
patched calls through rsatoolbox's entry point."""

import numpy as np
import pytest

rsatoolbox = pytest.importorskip("rsatoolbox")

import l2bg.rsa.rsatoolbox as fast  # noqa: E402
from l2bg.rsa.rsatoolbox.options import original  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]
METHODS = ("cosine", "corr", "spearman", "rho-a", "tau-a", "kendall")


def centres_and_models(seed: int, constant: bool = False, n_cond: int = 7, n: int = 12):
    rng = np.random.default_rng(seed)
    m = n_cond * (n_cond - 1) // 2
    v = np.round(rng.random((n, m)) * 4) / 4 + 0.25
    if constant:
        v[3] = 1.0
    models = [rsatoolbox.model.ModelFixed(f"m{k}", rng.random(m) + 0.1) for k in range(2)]
    models.append(rsatoolbox.model.ModelFixed("tied", np.round(rng.random(m) * 3) + 1))
    return rsatoolbox.rdm.RDMs(v), models


def outcome(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ValueError as exc:
        return repr(exc)


def assert_same(got, want):
    if isinstance(want, str):
        assert got == want
        return
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        for name in ("evaluations", "noise_ceiling"):
            x, y = np.asarray(getattr(a, name), float), np.asarray(getattr(b, name), float)
            assert x.shape == y.shape, name
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-10, equal_nan=True, err_msg=name)
        assert a.variances is None and b.variances is None
        for name in ("method", "cv_method", "dof", "n_rdm", "n_pattern", "n_model"):
            assert getattr(a, name) == getattr(b, name), name


@pytest.mark.parametrize("constant", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_searchlight_equals_rsatoolbox(method, constant):
    sl, models = centres_and_models(1, constant)
    want = outcome(original("evaluate_models_searchlight"), sl, models,
                   original("eval_fixed"), method=method)
    for eval_function in (original("eval_fixed"), fast.eval_fixed):
        got = outcome(fast.evaluate_models_searchlight, sl, models, eval_function,
                      method=method)
        assert_same(got, want)


def test_fall_through_other_function_and_fitted_model():
    sl, models = centres_and_models(2, n=4)
    calls = []

    def mean_of_fixed(models, data, method, theta):
        calls.append(data.n_rdm)
        return original("eval_fixed")(models, data, method=method, theta=theta)

    got = fast.evaluate_models_searchlight(sl, models, mean_of_fixed, method="corr")
    assert calls == [1] * sl.n_rdm
    assert_same(got, original("evaluate_models_searchlight")(sl, models, mean_of_fixed,
                                                             method="corr"))
    fitted = rsatoolbox.model.ModelWeighted("w", np.stack([m.rdm for m in models]))
    args = (sl, [models[0], fitted], original("eval_fixed"))
    assert_same(fast.evaluate_models_searchlight(*args, method="cosine"),
                original("evaluate_models_searchlight")(*args, method="cosine"))


def test_patched_entry_point():
    sl, models = centres_and_models(3)
    want = original("evaluate_models_searchlight")(sl, models, original("eval_fixed"),
                                                   method="spearman")
    fast.patch()
    try:
        from rsatoolbox.util import searchlight

        assert searchlight.evaluate_models_searchlight is fast.evaluate_models_searchlight
        got = searchlight.evaluate_models_searchlight(sl, models, rsatoolbox.inference.eval_fixed,
                                                      method="spearman")
    finally:
        fast.unpatch()
    assert_same(got, want)
    from rsatoolbox.util import searchlight

    assert searchlight.evaluate_models_searchlight is original("evaluate_models_searchlight")
