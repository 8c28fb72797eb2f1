"""The rsatoolbox drop-in (l2bg.rsa.rsatoolbox) equals rsatoolbox 0.3.2 itself: every covered
method of calc_rdm, compare and the noise precisions, on random data with ties and constant
patterns and on activations of an MLP trained briefly on real MNIST; the objects' descriptors;
fall-through for everything else; patch()/unpatch() restore rsatoolbox exactly."""

import importlib
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

rsatoolbox = pytest.importorskip("rsatoolbox")

from rsatoolbox.data import Dataset  # noqa: E402

import l2bg.rsa.rsatoolbox as fast  # noqa: E402
from l2bg.base.errors import L2BGError  # noqa: E402
from l2bg.rsa.rsatoolbox.options import original  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
FEW = settings(max_examples=12, deadline=None)
CALC = ("euclidean", "correlation", "mahalanobis", "crossnobis")
COMPARE = ("cosine", "corr", "spearman", "rho-a", "tau-a", "kendall", "tau-b")


def assert_agree(got, want, rtol=1e-6):
    """Same shape, NaN at the same places, elsewhere within rtol of the largest |value| (entries
    near 0 of cancelling sums, crossnobis, are compared on the RDM's scale)."""
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    if ok.any():
        scale = max(np.abs(want[ok]).max(), 1e-300)
        np.testing.assert_allclose(got[ok], want[ok], rtol=rtol, atol=rtol * scale)


def assert_same_rdms(got, want, rtol=1e-6):
    assert type(got) is type(want)
    assert_agree(got.dissimilarities, want.dissimilarities, rtol)
    assert got.dissimilarity_measure == want.dissimilarity_measure
    for name in ("descriptors", "rdm_descriptors", "pattern_descriptors"):
        assert_same_descriptors(getattr(got, name), getattr(want, name))


def assert_same_descriptors(got: dict, want: dict):
    """Same keys in the same order; equal values item by item (items may be arrays)."""
    assert list(got) == list(want)
    for key, value in want.items():
        mine = got[key]
        if isinstance(value, np.ndarray) and value.ndim == 2:  # a noise precision
            assert np.array_equal(mine, value, equal_nan=True)
            continue
        assert isinstance(mine, list | np.ndarray | tuple) == isinstance(
            value, list | np.ndarray | tuple), key
        if not isinstance(value, list | np.ndarray | tuple):
            assert mine == value, key
            continue
        assert len(mine) == len(value), key
        for a, b in zip(mine, value, strict=True):
            assert np.asarray(a).dtype.kind == np.asarray(b).dtype.kind, key
            assert np.array_equal(np.asarray(a), np.asarray(b)), key


def both(name, *args, **kwargs):
    """(drop-in result, rsatoolbox's result) of the same call."""
    return getattr(fast, name)(*args, **kwargs), original(name)(*args, **kwargs)


@st.composite
def datasets(draw):
    """A dataset of conditions x repetitions (shuffled), integer-valued (ties) or not, with
    constant patterns, string or integer condition labels and an offset."""
    n_cond = draw(st.integers(3, 7))
    reps = draw(st.integers(2, 3))
    p = draw(st.integers(2, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = rng.standard_normal((n_cond * reps, p))
    if draw(st.booleans()):
        x = np.round(x)
    x += draw(st.sampled_from([0.0, 10.0]))
    for row in draw(st.lists(st.integers(0, n_cond * reps - 1), max_size=2)):
        x[row] = draw(st.sampled_from([0.0, 2.5]))
    labels = np.repeat(np.arange(n_cond), reps)
    if draw(st.booleans()):
        labels = np.array([f"c{v}" for v in labels])
    order = rng.permutation(n_cond * reps)
    obs = {"conds": labels[order], "run": np.tile(np.arange(reps), n_cond)[order],
           "parity": (labels[order] if labels.dtype.kind == "i" else np.arange(len(order))) % 2}
    return Dataset(x[order], descriptors={"subject": 3}, obs_descriptors=obs,
                   channel_descriptors={"voxel": np.arange(p)})


def precision_of(ds):
    return original("prec_from_measurements")(ds, "conds", method="shrinkage_eye")


# ----------------------------------------------------------------------------- calc_rdm


@FEW
@given(datasets(), st.sampled_from(CALC), st.sampled_from([None, "conds"]), st.booleans(),
       st.booleans())
def test_calc_rdm_equals_rsatoolbox(ds, method, descriptor, remove_mean, with_noise):
    if method == "crossnobis" and descriptor is None:
        descriptor = "conds"
    noise = precision_of(ds) if with_noise else None
    got, want = both("calc_rdm", ds, method=method, descriptor=descriptor, noise=noise,
                     remove_mean=remove_mean)
    assert_same_rdms(got, want)


@FEW
@given(datasets(), st.sampled_from(["list", "dict"]))
def test_crossnobis_per_fold_noise_and_cv_descriptor(ds, container):
    prec = precision_of(ds)
    folds = len(np.unique(ds.obs_descriptors["run"]))
    noises = [prec * (1 + 0.5 * k) for k in range(folds)]
    noise = noises if container == "list" else dict(enumerate(noises))
    for cv in ("run", None):
        got, want = both("calc_rdm", ds, method="crossnobis", descriptor="conds", noise=noise,
                         cv_descriptor=cv)
        assert_same_rdms(got, want)


@pytest.mark.parametrize("method", ["euclidean", "correlation", "mahalanobis"])
def test_calc_rdm_list_of_datasets_in_batches(method):
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c", "d"], 2)
    dss = [Dataset(rng.standard_normal((8, 5 if i < 3 else 6)), descriptors={"center": i},
                   obs_descriptors={"conds": labels}) for i in range(5)]
    prec = np.eye(5) * 2.0
    noise = [prec, prec, prec * 0.5, np.eye(6), np.eye(6)] if method == "mahalanobis" else None
    for descriptor in (None, "conds"):
        got, want = both("calc_rdm", dss, method=method, descriptor=descriptor, noise=noise)
        assert_same_rdms(got, want)


def test_calc_rdm_float32_opt_in():
    rng = np.random.default_rng(1)
    ds = Dataset(rng.standard_normal((12, 30)), obs_descriptors={"conds": np.arange(12)})
    for method in ("euclidean", "correlation"):
        got = fast.calc_rdm(ds, method=method, dtype="float32")
        want = original("calc_rdm")(ds, method=method)
        assert got.dissimilarities.dtype == np.float64
        assert_agree(got.dissimilarities, want.dissimilarities, rtol=1e-5)
        assert not np.array_equal(got.dissimilarities, want.dissimilarities)


def test_calc_rdm_falls_through_to_rsatoolbox(monkeypatch):
    """Other methods and inputs outside the fast path are rsatoolbox's own call, unchanged."""
    rng = np.random.default_rng(2)
    ds = Dataset(rng.random((6, 4)) + 0.5, obs_descriptors={"conds": np.arange(6)})
    calls = []
    real = original("calc_rdm")
    monkeypatch.setitem(sys.modules["l2bg.rsa.rsatoolbox.options"]._ORIGINALS, "calc_rdm",
                        lambda *a: calls.append(a[1]) or real(*a))
    got = fast.calc_rdm(ds, method="poisson", descriptor="conds")
    assert_same_rdms(got, real(ds, method="poisson", descriptor="conds"))
    bad = Dataset(np.where(np.eye(6, 4) > 0, np.nan, 1.0), obs_descriptors={"conds": np.arange(6)})
    fast.calc_rdm(bad, method="euclidean")
    with pytest.raises(ValueError, match="descriptor must be a string"):
        fast.calc_rdm(ds, method="crossnobis")
    assert calls == ["poisson", "euclidean", "crossnobis"]


# ----------------------------------------------------------------------------- compare


def rdm_stack(rng, k, n, kind):
    vectors = rng.standard_normal((k, n * (n - 1) // 2))
    if kind == "ties":
        vectors = np.round(vectors)
    return rsatoolbox.rdm.RDMs(vectors)


@FEW
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 3), st.integers(3, 9),
       st.sampled_from(["floats", "ties"]), st.sampled_from(COMPARE))
def test_compare_equals_rsatoolbox(seed, k1, k2, n, kind, method):
    rng = np.random.default_rng(seed)
    a, b = rdm_stack(rng, k1, n, kind), rdm_stack(rng, k2, n, "floats")
    got, want = both("compare", a, b, method=method)
    assert got.shape == (k1, k2)
    assert_agree(got, want)
    assert_agree(fast.compare(a.dissimilarities[0], b.dissimilarities, method=method),
                 want[:1])


@pytest.mark.parametrize("method", COMPARE)
def test_compare_constant_rdms_and_nan_positions(method):
    """A constant RDM (zero after centring for corr and spearman), a tied one and a pattern
    missing from every RDM: rsatoolbox's whole matrix, pair for pair too; different NaN
    positions are rsatoolbox's error."""
    rng = np.random.default_rng(5)
    v = rng.standard_normal((4, 15))
    v[1] = 1.0
    v[2] = np.round(v[2])
    v[:, 3] = np.nan  # a pattern missing from every RDM
    rdms = rsatoolbox.rdm.RDMs(v)
    got, want = both("compare", rdms, rdms, method=method)
    assert_agree(got, want)
    for i in range(4):
        for j in range(4):
            assert_agree(fast.compare(rdms[i], rdms[j], method=method),
                         original("compare")(rdms[i], rdms[j], method=method))
    if method in ("kendall", "tau-b"):
        assert np.isnan(got[1]).all()
    other = v.copy()
    other[0, 4] = np.nan
    with pytest.raises(ValueError, match="different nan positions"):
        fast.compare(rdms, rsatoolbox.rdm.RDMs(other), method=method)


@pytest.mark.parametrize("method", ["cosine", "corr", "spearman"])
@pytest.mark.parametrize("zeros", [(0,), (1, 3), (2,)])
def test_compare_zero_norm_rows_land_where_rsatoolbox_puts_them(method, zeros):
    """rsatoolbox's ``_cosine`` scatters the similarities of the nonzero vectors with
    ``np.putmask``, which reads its values cyclically by flat position: with a zero-norm vector
    (all zeros for cosine, constant for corr and spearman) the others land shifted. The drop-in
    gives rsatoolbox's matrix, so it differs from the true similarities there."""
    rng = np.random.default_rng(8)
    v1, v2 = rng.standard_normal((4, 10)), rng.standard_normal((3, 10))
    for i in zeros:
        v1[i] = 0.0 if method == "cosine" else 2.5
    v2[1] = 0.0 if method == "cosine" else -1.0
    a, b = rsatoolbox.rdm.RDMs(v1), rsatoolbox.rdm.RDMs(v2)
    got, want = both("compare", a, b, method=method)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    truth = np.array([[original("compare")(a[i], b[j], method=method)[0, 0] for j in range(3)]
                      for i in range(4)])
    assert not np.allclose(got, truth)  # the quirk is there to reproduce
    assert (got[list(zeros)] == 0).all() and (got[:, 1] == 0).all()


def test_compare_falls_through_for_other_methods():
    rng = np.random.default_rng(6)
    a, b = rdm_stack(rng, 2, 6, "floats"), rdm_stack(rng, 3, 6, "floats")
    got, want = both("compare", a, b, method="corr_cov")
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- noise


@pytest.mark.parametrize("method", ["shrinkage_diag", "shrinkage_eye", "diag", "full"])
def test_noise_precisions_equal_rsatoolbox(method):
    rng = np.random.default_rng(7)
    residuals = rng.standard_normal((40, 9)) @ rng.standard_normal((9, 9))
    for args in ((residuals,), ([residuals, residuals[:25] * 2],), (residuals, 30)):
        got, want = both("prec_from_residuals", *args, method=method)
        assert type(got) is type(want)
        for g, w in zip(np.atleast_3d(got).reshape(-1, 9, 9), np.atleast_3d(want).reshape(
                -1, 9, 9), strict=True):
            assert_agree(g, w)
    labels = np.repeat(np.arange(6), 4)
    ds = Dataset(residuals[:24], obs_descriptors={"conds": labels})
    uneven = Dataset(residuals[:23], obs_descriptors={"conds": labels[:23]})
    for data in (ds, [ds, uneven]):
        got, want = both("prec_from_measurements", data, "conds", method=method)
        assert_agree(np.asarray(got), np.asarray(want))


# ----------------------------------------------------------------------------- real activations


@pytest.fixture(scope="module")
def mnist_activations(mnist_dir):
    """Hidden activations of an MLP trained for one epoch on 2,000 real MNIST test digits:
    60 further digits, 6 per class, as a Dataset per layer (conditions = classes)."""
    from l2bg.data.sources import read_idx

    images = torch.from_numpy(read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")[:4000].copy())
    labels = torch.from_numpy(read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")[:4000].copy())
    x = images.reshape(-1, 784).float() / 255.0
    y = labels.long()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32),
                              torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for i in range(0, 2000, 50):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[i:i + 50]), y[i:i + 50]).backward()
        opt.step()
    pick = torch.cat([torch.nonzero(y[2000:] == c).squeeze(1)[:6] + 2000 for c in range(10)])
    out, layers = x[pick], {}
    with torch.no_grad():
        for k, module in enumerate(net):
            out = module(out)
            if isinstance(module, torch.nn.ReLU) or k == len(net) - 1:
                a = out.double().numpy()
                layers[f"layer{k}"] = a[:, np.ptp(a, axis=0) > 0]  # dead units out
    obs = {"digit": y[pick].numpy(), "rep": np.tile(np.arange(6), 10)}
    return {name: Dataset(a, obs_descriptors=obs) for name, a in layers.items()}


def test_real_activations_every_method(mnist_activations):
    for ds in mnist_activations.values():
        assert ds.n_channel >= 10
        prec, want_prec = both("prec_from_measurements", ds, "digit")
        assert np.isfinite(want_prec).all()
        assert_agree(prec, want_prec)
        rdms = {}
        for method in CALC:
            noise = want_prec if method in ("mahalanobis", "crossnobis") else None
            got, want = both("calc_rdm", ds, method=method, descriptor="digit", noise=noise)
            assert_same_rdms(got, want)
            rdms[method] = want
        stack = rsatoolbox.rdm.RDMs(np.vstack([r.dissimilarities for r in rdms.values()]))
        for method in COMPARE:
            got, want = both("compare", stack, rdms["crossnobis"], method=method)
            assert_agree(got, want)


# ----------------------------------------------------------------------------- patch


def bound_objects():
    out = {}
    for module, name in fast.BINDINGS:
        mod = importlib.import_module(module)
        out[(module, name)] = getattr(sys.modules[module] if module in sys.modules else mod, name)
    return out


def test_patch_rebinds_every_binding_and_unpatch_restores_them():
    before = bound_objects()
    assert not fast.is_patched()
    assert all(obj is original(name) for (_, name), obj in before.items())
    with fast.patch(dtype="float32") as handle:
        assert handle.owner and fast.is_patched()
        during = bound_objects()
        for (module, name), obj in during.items():
            assert obj is getattr(fast, name), (module, name)
        from rsatoolbox.rdm import calc as calc_module

        assert calc_module.calc_rdm is fast.calc_rdm
        assert sys.modules["l2bg.rsa.rsatoolbox.options"].OPTIONS[0].dtype == torch.float32
    after = bound_objects()
    assert all(after[key] is before[key] for key in before)
    assert sys.modules["l2bg.rsa.rsatoolbox.options"].OPTIONS[0].dtype == torch.float64
    fast.patch()
    fast.unpatch()
    assert all(bound_objects()[key] is before[key] for key in before)


def test_bindings_list_is_every_binding_in_rsatoolbox():
    """BINDINGS (and the docs) name every attribute of rsatoolbox's modules holding one of the
    functions the drop-in replaces."""
    from l2bg.rsa.rsatoolbox.patch import DROP_INS

    for module, _ in fast.BINDINGS:
        importlib.import_module(module)
    targets = {id(original(n)): n for n in DROP_INS}
    found = {(name, attr) for name, mod in list(sys.modules.items())
             if name.startswith("rsatoolbox") and mod is not None
             for attr, value in vars(mod).items() if id(value) in targets}
    assert found == set(fast.BINDINGS)


def test_patched_rsatoolbox_inference_and_searchlight_agree():
    from rsatoolbox.inference import eval_fixed
    from rsatoolbox.model import ModelFixed
    from rsatoolbox.util.searchlight import get_searchlight_RDMs

    rng = np.random.default_rng(8)
    data = rsatoolbox.rdm.RDMs(rng.standard_normal((5, 21)))
    model = ModelFixed("m", rng.standard_normal(21))
    volume = rng.standard_normal((12, 3 * 3 * 2))
    centers, neighbors = np.arange(18), [np.arange(max(0, c - 2), min(18, c + 3))
                                         for c in range(18)]
    events = np.repeat(np.arange(6), 2)
    want_eval = eval_fixed(model, data, method="spearman").evaluations
    want_sl = get_searchlight_RDMs(volume, centers, neighbors, events, method="correlation")
    with fast.patch():
        got_eval = eval_fixed(model, data, method="spearman").evaluations
        got_sl = get_searchlight_RDMs(volume, centers, neighbors, events, method="correlation")
    assert_agree(got_eval, want_eval)
    assert_same_rdms(got_sl, want_sl)


def test_missing_rsatoolbox_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "rsatoolbox", None)
    with pytest.raises(L2BGError, match="pip install rsatoolbox") as info:
        fast.calc_rdm(None)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("scale,dtype", [(1e200, "float64"), (1e-200, "float64"),
                                         (1e30, "float32"), (1e-30, "float32")])
def test_correlation_rdm_is_scale_free(scale, dtype):
    """Correlation distances of patterns whose squares overflow or underflow (the rows are then
    rescaled by powers of two) equal those of the same patterns at scale 1; constant patterns
    stay NaN."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 40))
    x[3] = 1.0
    base = fast.calc_rdm(Dataset(x), method="correlation", dtype=dtype).dissimilarities
    got = fast.calc_rdm(Dataset(x * scale), method="correlation", dtype=dtype).dissimilarities
    assert np.isnan(base).sum() == 8
    np.testing.assert_allclose(got, base, rtol=1e-5 if dtype == "float32" else 1e-12,
                               atol=1e-6 if dtype == "float32" else 1e-13, equal_nan=True)
