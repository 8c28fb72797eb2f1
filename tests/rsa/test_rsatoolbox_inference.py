"""The drop-in's model evaluation (eval_fixed, the three bootstraps, boot_noise_ceiling) equals
rsatoolbox 0.3.2's for the same seed, to 1e-10 in float64: random RDMs with ties and constant
parts, NaN-producing pattern resamples, grouped RDM descriptors, every covered method; patched
calls through rsatoolbox's own entry points; fall-through for fitted models and other methods."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

rsatoolbox = pytest.importorskip("rsatoolbox")

import l2bg.rsa.rsatoolbox as fast  # noqa: E402
from l2bg.rsa.rsatoolbox.options import original  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]
METHODS = ("cosine", "corr", "spearman", "rho-a", "tau-a", "kendall")
BOOTSTRAPS = ("eval_bootstrap", "eval_bootstrap_pattern", "eval_bootstrap_rdm")


def rdms_and_models(seed: int, n_cond: int = 6, n_rdm: int = 5, ties: bool = True,
                    groups: bool = False):
    """Random data RDMs (rounded: ties) with a constant block, and three fixed models."""
    rng = np.random.default_rng(seed)
    m = n_cond * (n_cond - 1) // 2
    v = rng.random((n_rdm, m)) + 0.1
    if ties:
        v = np.round(v * 4) / 4 + 0.25
    v[0, : m // 3] = 1.0  # a constant part
    desc = {"subj": np.arange(n_rdm) // 2} if groups else None
    data = rsatoolbox.rdm.RDMs(v, rdm_descriptors=desc)
    models = [rsatoolbox.model.ModelFixed(f"m{k}", rng.random(m) + 0.05) for k in range(2)]
    models.append(rsatoolbox.model.ModelFixed("tied", np.round(rng.random(m) * 3) + 1))
    return data, models


def assert_same_result(got, want):
    """rsatoolbox Results with equal evaluations, ceilings, variances and metadata."""
    assert type(got) is type(want)
    for name in ("evaluations", "noise_ceiling", "variances"):
        a, b = getattr(got, name), getattr(want, name)
        if b is None:
            assert a is None, name
            continue
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10, equal_nan=True, err_msg=name)
    for name in ("method", "cv_method", "dof", "n_rdm", "n_pattern", "n_model"):
        assert getattr(got, name) == getattr(want, name), name
    assert [m.name for m in got.models] == [m.name for m in want.models]


def seeded(fn, seed, *args, **kwargs):
    np.random.seed(seed)
    out = fn(*args, **kwargs)
    return out, np.random.randint(0, 2**31)  # the generator's state after the call


@pytest.mark.parametrize("method", METHODS)
def test_eval_fixed_and_ceiling(method):
    data, models = rdms_and_models(1)
    assert_same_result(fast.eval_fixed(models, data, method=method),
                       original("eval_fixed")(models, data, method=method))
    got = fast.boot_noise_ceiling(data, method=method)
    want = original("boot_noise_ceiling")(data, method=method)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("groups", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_boot_noise_ceiling_grouped_and_resampled(method, groups):
    """Repeated RDMs (a resample) and groups: every copy of a left-out group is dropped."""
    data, _ = rdms_and_models(2, groups=groups)
    idx = np.array([0, 0, 1, 3, 3, 4]) if not groups else np.array([0, 0, 2])
    desc = "index" if not groups else "subj"
    sample = data.subsample(desc, idx)
    got = fast.boot_noise_ceiling(sample, method=method, rdm_descriptor=desc)
    want = original("boot_noise_ceiling")(sample, method=method, rdm_descriptor=desc)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", BOOTSTRAPS)
@pytest.mark.parametrize("method", METHODS)
def test_bootstraps_equal_rsatoolbox(name, method):
    """4 conditions: many pattern samples have < 3 distinct patterns (NaN) or repeats."""
    data, models = rdms_and_models(3, n_cond=5, n_rdm=4)
    got, after_got = seeded(getattr(fast, name), 7, models, data, method=method, N=12)
    want, after_want = seeded(original(name), 7, models, data, method=method, N=12)
    assert_same_result(got, want)
    assert after_got == after_want  # the same draws, no more, no fewer


@pytest.mark.parametrize("name", BOOTSTRAPS)
@pytest.mark.parametrize("method", ["corr", "spearman", "tau-b"])
def test_bootstraps_grouped_without_sample_ceiling(name, method):
    data, models = rdms_and_models(4, n_cond=7, n_rdm=6, groups=True)
    kw = {"method": method, "N": 6, "rdm_descriptor": "subj", "boot_noise_ceil": False}
    got, _ = seeded(getattr(fast, name), 11, models[0], data, **kw)
    want, _ = seeded(original(name), 11, models[0], data, **kw)
    assert_same_result(got, want)


def test_patched_entry_points_use_the_drop_in(monkeypatch):
    """After patch(), rsatoolbox's own names run the drop-in and give rsatoolbox's numbers."""
    data, models = rdms_and_models(5)
    want, _ = seeded(original("eval_bootstrap_pattern"), 3, models, data, method="spearman",
                     N=5)
    calls = []
    real = fast.inference.sample_scores
    monkeypatch.setattr(fast.inference, "sample_scores",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    fast.patch()
    try:
        import rsatoolbox.inference as inf

        got, _ = seeded(inf.eval_bootstrap_pattern, 3, models, data, method="spearman", N=5)
        fixed = inf.evaluate.eval_fixed(models, data, method="corr")
    finally:
        fast.unpatch()
    assert calls
    assert_same_result(got, want)
    assert_same_result(fixed, original("eval_fixed")(models, data, method="corr"))
    assert rsatoolbox.inference.eval_fixed is original("eval_fixed")


def test_fall_through_fitted_model_and_unknown_method():
    data, models = rdms_and_models(6)
    fitted = rsatoolbox.model.ModelWeighted("w", np.stack([m.rdm for m in models]))
    for mods, method in (([models[0], fitted], "cosine"), (models, "corr_cov")):
        got, _ = seeded(fast.eval_bootstrap_rdm, 2, mods, data, method=method, N=3)
        want, _ = seeded(original("eval_bootstrap_rdm"), 2, mods, data, method=method, N=3)
        assert_same_result(got, want)


def test_patched_bootstrap_crossval_pools_samples_with_nan_pairs():
    """rsatoolbox's own bootstrap_crossval (k = 1: boot_noise_ceiling on every sample, whose
    resampled conditions are NaN pairs) gives the same result through the patched ceiling."""
    data, models = rdms_and_models(8, n_cond=7)
    kw = {"method": "corr", "N": 4, "k_pattern": 1, "k_rdm": 1, "n_cv": 1,
          "use_correction": False}
    want, _ = seeded(rsatoolbox.inference.bootstrap_crossval, 9, models, data, **kw)
    with fast.patch():
        assert rsatoolbox.inference.evaluate.boot_noise_ceiling is fast.boot_noise_ceiling
        got, _ = seeded(rsatoolbox.inference.bootstrap_crossval, 9, models, data, **kw)
    assert rsatoolbox.inference.evaluate.boot_noise_ceiling is original("boot_noise_ceiling")
    assert_same_result(got, want)


def test_unequal_nan_positions_raise_as_rsatoolbox():
    data, models = rdms_and_models(10)
    v = data.get_vectors().copy()
    v[0, 0] = np.nan
    with pytest.raises(ValueError):
        original("eval_fixed")(models, rsatoolbox.rdm.RDMs(v))
    with pytest.raises(ValueError):
        fast.eval_fixed(models, rsatoolbox.rdm.RDMs(v))


@settings(max_examples=10, deadline=None)
@given(n_cond=st.integers(4, 8), n_rdm=st.integers(1, 5), ties=st.booleans(),
       seed=st.integers(0, 2**16), method=st.sampled_from(METHODS),
       name=st.sampled_from(BOOTSTRAPS))
def test_property_same_numbers(n_cond, n_rdm, ties, seed, method, name):
    """Any shape and seed: rsatoolbox's result, or the same exception where it raises (one
    RDM: rsatoolbox's Result divides by its 0 degrees of freedom)."""
    data, models = rdms_and_models(seed, n_cond=n_cond, n_rdm=n_rdm, ties=ties)
    try:
        want, after_want = seeded(original(name), seed, models, data, method=method, N=4)
    except Exception as exc:  # noqa: BLE001 - whatever rsatoolbox raises, the drop-in must
        with pytest.raises(type(exc)):
            seeded(getattr(fast, name), seed, models, data, method=method, N=4)
        return
    got, after_got = seeded(getattr(fast, name), seed, models, data, method=method, N=4)
    assert_same_result(got, want)
    assert after_got == after_want


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 4), m=st.integers(1, 25), levels=st.integers(1, 6),
       n_cols=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_column_ranks_equal_average_ranks(rows, m, levels, n_cols, seed):
    """The counting ranks over a column selection with repeats (ties, constant rows) are
    exactly the sorted average ranks of the selected columns (their reference)."""
    import torch

    from l2bg.rsa.reference import average_ranks
    from l2bg.rsa.rsatoolbox.ceiling import ColumnRanks

    rng = np.random.default_rng(seed)
    t = torch.as_tensor(rng.integers(0, levels, size=(rows, m)).astype(float))
    cols = torch.as_tensor(rng.integers(0, m, size=n_cols))
    assert torch.equal(ColumnRanks(t).ranks(cols), average_ranks(t[:, cols]))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("groups", [False, True])
def test_eval_dual_bootstrap_equal_rsatoolbox(method, groups):
    """One fold (k = 1): the sample, its RDM part and its pattern part, rsatoolbox's shuffles
    replayed (the generator ends in the same state), NaN for samples of < 3 patterns."""
    data, models = rdms_and_models(12, n_cond=5, n_rdm=6, groups=groups)
    kw = {"method": method, "N": 10, "rdm_descriptor": "subj" if groups else "index"}
    try:
        want, after_want = seeded(original("eval_dual_bootstrap"), 4, models, data, **kw)
    except ValueError:  # corr: rsatoolbox's pool of a constant RDM has other NaN positions
        with pytest.raises(ValueError):
            seeded(fast.eval_dual_bootstrap, 4, models, data, **kw)
        return
    got, after_got = seeded(fast.eval_dual_bootstrap, 4, models, data, **kw)
    assert_same_result(got, want)
    assert after_got == after_want


def test_eval_dual_bootstrap_falls_through_with_folds_and_patched():
    """Another method is rsatoolbox's; patched, rsatoolbox's own name runs the drop-in."""
    data, models = rdms_and_models(13, n_cond=8, n_rdm=4)
    kw = {"method": "corr_cov", "N": 3}
    got, _ = seeded(fast.eval_dual_bootstrap, 1, models, data, **kw)
    want, _ = seeded(original("eval_dual_bootstrap"), 1, models, data, **kw)
    assert_same_result(got, want)
    want, _ = seeded(original("eval_dual_bootstrap"), 1, models, data, method="spearman", N=4)
    with fast.patch():
        assert rsatoolbox.inference.eval_dual_bootstrap is fast.eval_dual_bootstrap
        got, _ = seeded(rsatoolbox.inference.eval_dual_bootstrap, 1, models, data,
                        method="spearman", N=4)
    assert_same_result(got, want)


@pytest.mark.parametrize("gram_safe", [0.0, float("inf")])
@pytest.mark.parametrize("method", ["cosine", "corr"])
def test_ceiling_in_gram_space_and_from_sums_agree(monkeypatch, method, gram_safe):
    """Both ways to score the pools (Gram space, explicit sums) give rsatoolbox's numbers."""
    from l2bg.rsa.rsatoolbox import ceiling

    monkeypatch.setattr(ceiling, "GRAM_SAFE", gram_safe)
    data, models = rdms_and_models(14, n_cond=7, n_rdm=6, ties=False)
    for name in ("eval_bootstrap", "eval_bootstrap_rdm"):
        got, _ = seeded(getattr(fast, name), 3, models, data, method=method, N=6)
        want, _ = seeded(original(name), 3, models, data, method=method, N=6)
        assert_same_result(got, want)
