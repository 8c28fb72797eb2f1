"""The drop-in's bootstrap_crossval and cv_noise_ceiling equal rsatoolbox 0.3.2's for the same
seed, to 1e-10 in float64, and leave numpy's random state where rsatoolbox leaves it: every
covered method, the three boot types, several k and n_cv, grouped RDMs, tied RDMs with constant
parts; rsatoolbox's own error where it raises; fall-through for fitted models, a fitter and
other methods; patched calls through rsatoolbox's entry points."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

rsatoolbox = pytest.importorskip("rsatoolbox")

import l2bg.rsa.rsatoolbox as fast  # noqa: E402
from l2bg.rsa.rsatoolbox.crossval import _Rep  # noqa: E402
from l2bg.rsa.rsatoolbox.options import original  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]
METHODS = ("cosine", "corr", "spearman", "rho-a", "tau-a", "kendall")


def rdms_and_models(seed: int, n_cond: int = 9, n_rdm: int = 6, groups: bool = False,
                    constant: bool = True):
    """Tied random data RDMs (with a constant block), and three fixed models (one tied)."""
    rng = np.random.default_rng(seed)
    m = n_cond * (n_cond - 1) // 2
    v = np.round(rng.random((n_rdm, m)) * 4) / 4 + 0.25
    if constant:
        v[0, : m // 3] = 1.0
    desc = {"subj": np.arange(n_rdm) // 2} if groups else None
    data = rsatoolbox.rdm.RDMs(v, rdm_descriptors=desc)
    models = [rsatoolbox.model.ModelFixed(f"m{k}", rng.random(m) + 0.05) for k in range(2)]
    models.append(rsatoolbox.model.ModelFixed("tied", np.round(rng.random(m) * 3) + 1))
    return data, models


def run(fn, seed, *args, **kwargs):
    """(result or the exception's repr, the generator's next draw after the call)."""
    np.random.seed(seed)
    try:
        out = fn(*args, **kwargs)
    except (ValueError, AssertionError) as exc:
        return repr(exc), None
    return out, np.random.randint(0, 2**31)


def assert_same(got, want):
    (a, after_a), (b, after_b) = got, want
    assert after_a == after_b  # the same draws, no more, no fewer
    if isinstance(b, str):
        assert a == b
        return
    for name in ("evaluations", "noise_ceiling", "variances"):
        x, y = np.asarray(getattr(a, name), float), np.asarray(getattr(b, name), float)
        assert x.shape == y.shape, name
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-10, equal_nan=True, err_msg=name)
    for name in ("method", "cv_method", "dof", "n_rdm", "n_pattern"):
        assert getattr(a, name) == getattr(b, name), name


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("boot_type,kw", [
    ("both", {}), ("pattern", {"k_rdm": 1}), ("rdm", {"k_pattern": 1}),
    ("both", {"k_pattern": 2, "k_rdm": 2, "n_cv": 3}),
    ("both", {"k_pattern": 2, "k_rdm": 3, "n_cv": 1, "use_correction": False})])
def test_bootstrap_crossval_equals_rsatoolbox(method, boot_type, kw):
    data, models = rdms_and_models(3)
    args = (models, data)
    kw = {"method": method, "N": 5, "boot_type": boot_type, **kw}
    assert_same(run(fast.bootstrap_crossval, 5, *args, **kw),
                run(original("bootstrap_crossval"), 5, *args, **kw))


@pytest.mark.parametrize("method", ["cosine", "corr"])
@pytest.mark.parametrize("k", [(2, 2), (3, 1), (1, 3)])
def test_bootstrap_crossval_without_degenerate_rdms(method, k):
    """Untied data: every repetition takes the batched (Gram) path for cosine and corr."""
    _, models = rdms_and_models(9, n_cond=10, constant=False)
    data = rsatoolbox.rdm.RDMs(np.random.default_rng(9).random((6, 45)) + 0.1)
    kw = {"method": method, "N": 4, "k_pattern": k[0], "k_rdm": k[1]}
    got = run(fast.bootstrap_crossval, 4, models, data, **kw)
    assert not isinstance(got[0], str)
    assert_same(got, run(original("bootstrap_crossval"), 4, models, data, **kw))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_cond=st.integers(6, 14), n_rdm=st.integers(2, 7),
       k=st.sampled_from([(2, 2), (3, 2), (2, 1), (1, 3), (3, 3)]),
       kind=st.sampled_from(["continuous", "ties", "zero rows", "scaled"]),
       boot_type=st.sampled_from(["both", "pattern", "rdm"]))
def test_cosine_folds_batched_equal_fold_by_fold(seed, n_cond, n_rdm, k, kind, boot_type):
    """All folds of a cosine repetition at once (``_cosine_folds``) give the fold-by-fold
    path's result (``_gram_fold``) and rsatoolbox's, for untied, tied, partly zero and
    1e-200-scaled data; samples with too few patterns are NaN in all three."""
    rng = np.random.default_rng(seed)
    m = n_cond * (n_cond - 1) // 2
    v = rng.random((n_rdm, m)) + 0.01
    if kind == "ties":
        v = np.round(v * 3) / 3 + 0.1
    elif kind == "zero rows":
        v[0, : m // 2] = 0.0
    elif kind == "scaled":
        v *= 1e-200
    data = rsatoolbox.rdm.RDMs(v)
    models = [rsatoolbox.model.ModelFixed(f"m{i}", rng.random(m)) for i in range(2)]
    kw = {"method": "cosine", "N": 3, "k_pattern": k[0], "k_rdm": k[1], "boot_type": boot_type}
    if boot_type == "pattern":
        kw["k_rdm"] = 1
    elif boot_type == "rdm":
        kw["k_pattern"] = 1
    got = run(fast.bootstrap_crossval, seed % 1000, models, data, **kw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_Rep, "batched", False)
        assert_same(got, run(fast.bootstrap_crossval, seed % 1000, models, data, **kw))
    assert_same(got, run(original("bootstrap_crossval"), seed % 1000, models, data, **kw))


@pytest.mark.parametrize("method", ["cosine", "spearman", "tau-b"])
def test_bootstrap_crossval_grouped_rdms_and_small_samples(method):
    """RDM groups; 7 conditions with k_pattern 2 leave many samples below 3k patterns (NaN)."""
    data, models = rdms_and_models(4, n_cond=7, n_rdm=8, groups=True)
    kw = {"method": method, "N": 6, "rdm_descriptor": "subj", "k_pattern": 2, "k_rdm": 2}
    assert_same(run(fast.bootstrap_crossval, 8, models[2], data, **kw),
                run(original("bootstrap_crossval"), 8, models[2], data, **kw))


@pytest.mark.parametrize("method", METHODS)
def test_cv_noise_ceiling_equals_rsatoolbox(method):
    data, _ = rdms_and_models(6)
    np.random.seed(1)
    _, test_set, ceil_set = rsatoolbox.inference.sets_k_fold(data, k_rdm=2, k_pattern=2)
    got = fast.cv_noise_ceiling(data, ceil_set, test_set, method=method)
    want = original("cv_noise_ceiling")(data, ceil_set, test_set, method=method)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_fall_through_fitter_fitted_model_unknown_method():
    data, models = rdms_and_models(7)
    fitted = rsatoolbox.model.ModelWeighted("w", np.stack([m.rdm for m in models]))
    cases = [([models[0], fitted], "cosine", {}), (models, "corr_cov", {}),
             (models, "cosine", {"fitter": rsatoolbox.model.fitter.fit_mock}),
             (models, "cosine", {"k_pattern": 1, "k_rdm": 1, "n_cv": 1,
                                 "use_correction": False})]
    for mods, method, kw in cases:
        kw = {"method": method, "N": 3, **kw}
        assert_same(run(fast.bootstrap_crossval, 2, mods, data, **kw),
                    run(original("bootstrap_crossval"), 2, mods, data, **kw))


def test_patched_entry_points():
    """After patch(), rsatoolbox's own names are the drop-in's and give rsatoolbox's numbers;
    unpatch() restores rsatoolbox's objects."""
    data, models = rdms_and_models(8)
    kw = {"method": "spearman", "N": 4, "k_pattern": 2, "k_rdm": 2}
    want = run(original("bootstrap_crossval"), 3, models, data, **kw)
    fast.patch()
    try:
        import rsatoolbox.inference as inf

        assert inf.bootstrap_crossval is fast.bootstrap_crossval
        assert inf.noise_ceiling.cv_noise_ceiling is fast.cv_noise_ceiling
        got = run(inf.evaluate.bootstrap_crossval, 3, models, data, **kw)
    finally:
        fast.unpatch()
    assert_same(got, want)
    assert rsatoolbox.inference.bootstrap_crossval is original("bootstrap_crossval")
    assert rsatoolbox.inference.evaluate.cv_noise_ceiling is original("cv_noise_ceiling")


@settings(max_examples=40, deadline=None)
@given(desc=st.lists(st.integers(0, 6), min_size=1, max_size=15), data=st.data(),
       as_str=st.booleans())
def test_selection_by_counts_equals_one_comparison_per_value(desc, data, as_str):
    """``_selection`` (each position repeated as often as its descriptor is drawn) equals the
    loop it replaces (positions of each drawn value, concatenated, sorted), for integer and
    string descriptors, grouped (repeated) descriptors and repeated draws."""
    from l2bg.rsa.rsatoolbox.inference import _selection

    d = np.asarray([f"c{v}" for v in desc] if as_str else desc)
    uniq = np.unique(d)
    values = uniq[data.draw(st.lists(st.integers(0, len(uniq) - 1), min_size=1, max_size=12))]
    want = np.sort(np.concatenate([np.asarray(d == v).nonzero()[0] for v in values]))
    np.testing.assert_array_equal(_selection(d, values), want)
