"""The rsatoolbox drop-in on degenerate input and narrow dtypes (issue 22, items 25 and 26): it
answers what rsatoolbox 0.3.2 answers, checked against rsatoolbox itself here: the same arrays
(NaN at the same places) or the same exception type, never a crash of its own and never a
number rsatoolbox would not give."""

import numpy as np
import pytest

rsatoolbox = pytest.importorskip("rsatoolbox")

from rsatoolbox.data import Dataset  # noqa: E402

import l2bg.rsa.rsatoolbox as fast  # noqa: E402
from l2bg.rsa.rsatoolbox.options import original  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
NOISE = ("shrinkage_diag", "shrinkage_eye", "diag", "full")
RNG = np.random.default_rng(0)


def outcome(fn):
    """The result as arrays (a list for a list), or the exception's type."""
    try:
        got = fn()
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return type(exc)
    if isinstance(got, list):
        return [np.asarray(g) for g in got]
    return np.asarray(getattr(got, "dissimilarities", got))


def assert_same(name, *args, **kwargs):
    mine = outcome(lambda: getattr(fast, name)(*args, **kwargs))
    theirs = outcome(lambda: original(name)(*args, **kwargs))
    if isinstance(theirs, type):
        assert mine is theirs, (mine, theirs)
        return theirs
    mine_l, theirs_l = (mine, theirs) if isinstance(theirs, list) else ([mine], [theirs])
    assert not isinstance(mine, type), mine
    assert len(mine_l) == len(theirs_l)
    for a, b in zip(mine_l, theirs_l, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        ok = ~np.isnan(b)  # elsewhere within rounding, on the result's scale
        if ok.any():
            scale = float(np.abs(b[ok]).max())
            np.testing.assert_allclose(a[ok], b[ok], rtol=1e-9, atol=1e-9 * scale)
    return theirs


_RESIDUALS = {
    "all zero": np.zeros((5, 3)),
    "one channel": RNG.standard_normal((5, 1)),
    "no channels": np.zeros((5, 0)),
    "one observation": RNG.standard_normal((1, 3)),
    "a zero channel": np.c_[RNG.standard_normal((6, 2)), np.zeros(6)],
}


@pytest.mark.parametrize("method", NOISE)
@pytest.mark.parametrize("case", list(_RESIDUALS))
def test_prec_from_residuals_on_degenerate_input(method, case):
    assert_same("prec_from_residuals", _RESIDUALS[case], method=method)


def _dataset(x, labels):
    return Dataset(np.asarray(x), obs_descriptors={"c": np.asarray(labels)})


_DATASETS = {
    "all zero": _dataset(np.zeros((4, 3)), [0, 1, 0, 1]),
    "one channel": _dataset(RNG.standard_normal((4, 1)), [0, 1, 0, 1]),
    "one observation per condition": _dataset(RNG.standard_normal((3, 4)), [0, 1, 2]),
    "identical repetitions": _dataset(np.tile(RNG.standard_normal((2, 3)), (2, 1)),
                                      [0, 1, 0, 1]),
}


@pytest.mark.parametrize("as_list", [False, True])
@pytest.mark.parametrize("method", NOISE)
@pytest.mark.parametrize("case", list(_DATASETS))
def test_prec_from_measurements_on_degenerate_input(method, case, as_list):
    ds = _DATASETS[case]
    assert_same("prec_from_measurements", [ds, ds] if as_list else ds, "c", method=method)


@pytest.mark.parametrize("method", ["euclidean", "correlation", "mahalanobis", "crossnobis"])
@pytest.mark.parametrize("case", ["no channels", "all zero", "constant rows"])
def test_calc_rdm_on_degenerate_input(method, case):
    x = {"no channels": np.zeros((4, 0)), "all zero": np.zeros((4, 3)),
         "constant rows": np.repeat(RNG.standard_normal((4, 1)), 3, axis=1)}[case]
    ds = _dataset(x, [0, 1, 0, 1])
    assert_same("calc_rdm", ds, method, descriptor="c" if method == "crossnobis" else None)


def test_a_correlation_rdm_of_no_channels_is_rsatoolboxs_ones():
    """The issue's repro: IndexError where rsatoolbox answers 1.0."""
    got = assert_same("calc_rdm", _dataset(np.zeros((4, 0)), [0, 1, 2, 3]), "correlation")
    assert np.array_equal(got, np.ones((1, 6)))


_NARROW = ["bool", "uint8", "int8", "int16", "uint16", "int32", "int64", "float16"]


def _narrow(dtype, seed):
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.integers(0, 2, (6, 9)).astype(bool)
    info = np.finfo(dtype) if dtype == "float16" else np.iinfo(dtype)
    hi = min(int(info.max), 2**40)  # large enough to wrap int8..int32 squares, float16 to inf
    lo = 0 if dtype.startswith("u") else -hi
    return rng.integers(lo, hi, (6, 9), endpoint=True).astype(dtype)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("method", ["euclidean", "correlation", "mahalanobis", "crossnobis"])
@pytest.mark.parametrize("dtype", _NARROW)
def test_calc_rdm_of_narrow_dtypes_is_rsatoolboxs_number(dtype, method, seed):
    """Item 26: rsatoolbox computes a bool matmul, wraps integers and overflows float16 where
    l2bg would compute in float; the drop-in hands such measurements to rsatoolbox."""
    ds = _dataset(_narrow(dtype, seed), [0, 1, 2, 0, 1, 2])
    assert_same("calc_rdm", ds, method, descriptor="c" if method == "crossnobis" else None)


def test_bool_euclidean_differs_from_the_float_answer_and_the_drop_in_gives_rsatoolboxs():
    """The arithmetic really differs (so the test above can fail): the float answer is not
    rsatoolbox's for bool measurements."""
    x = _narrow("bool", 0)
    want = assert_same("calc_rdm", Dataset(x), "euclidean")
    as_float = original("calc_rdm")(Dataset(x.astype(float)), "euclidean").dissimilarities
    assert not np.allclose(want, as_float)


@pytest.mark.parametrize("method", NOISE)
@pytest.mark.parametrize("dtype", ["int8", "int16", "uint8", "float16"])
def test_noise_of_narrow_dtypes_is_rsatoolboxs_number(method, dtype):
    assert_same("prec_from_residuals", _narrow(dtype, 1), method=method)
    assert_same("prec_from_measurements", _dataset(_narrow(dtype, 2), [0, 1, 2, 0, 1, 2]),
                "c", method=method)


def test_float_input_still_takes_the_fast_path(monkeypatch):
    """The fall-through is for what rsatoolbox computes differently, not for ordinary input."""
    import l2bg.rsa.rsatoolbox.calc as calc_mod
    import l2bg.rsa.rsatoolbox.noise as noise_mod

    def refuse(name):
        raise AssertionError(f"{name} fell through to rsatoolbox")
    monkeypatch.setattr(calc_mod, "original", refuse)
    monkeypatch.setattr(noise_mod, "original", refuse)
    x = RNG.standard_normal((6, 5))
    for dt in (np.float32, np.float64):
        fast.calc_rdm(_dataset(x.astype(dt), [0, 1, 2, 0, 1, 2]), "correlation")
        fast.prec_from_residuals(x.astype(dt))
