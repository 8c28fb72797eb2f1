import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l2bg.base.errors import L2BGError
from l2bg.learn import metrics

R = [[0.9, None, None],
     [0.8, 0.7, None],
     [0.6, 0.75, 0.95]]


def test_average_accuracy_uses_last_row():
    assert metrics.average_accuracy(R) == pytest.approx((0.6 + 0.75 + 0.95) / 3)


def test_bwt_hand_computed():
    assert metrics.bwt(R) == pytest.approx(((0.6 - 0.9) + (0.75 - 0.7)) / 2)
    assert metrics.bwt([[0.5]]) is None


def test_fwt_hand_computed():
    assert metrics.fwt(R, [0.9, 0.8, 0.9]) == pytest.approx(((0.7 - 0.8) + (0.95 - 0.9)) / 2)
    assert metrics.fwt([[0.5]], [0.4]) is None


def test_gain_and_raw_gain_hand_computed():
    indep = [0.2, 0.2]  # 20 errors of 100: smoothed (20.5)/101
    # 10 and 30 errors: smoothed 10.5/101 and 30.5/101, symmetric around 20.5/101 → 0
    assert metrics.gain([0.1, 0.3], indep, [100, 100]) == pytest.approx(0.0, abs=1e-12)
    assert metrics.gain([0.1, 0.1], indep, [100, 100]) == pytest.approx(100 * 10 / 20.5)
    assert metrics.gain_raw([0.1, 0.1], indep, [100, 100]) == pytest.approx(-1.0)
    assert metrics.smoothed_error(0.0, 50) == pytest.approx(0.5 / 51)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5000), st.floats(0, 1)), min_size=1, max_size=6))
def test_a_run_that_matches_its_baselines_gains_exactly_zero(tasks):
    n = [k for k, _ in tasks]
    err = [round(f * k) / k for k, f in tasks]  # error rates on |V| samples, zero errors included
    assert metrics.gain(err, err, n) == 0.0


def test_gain_treats_a_perfect_baseline_like_any_other():
    # 0 errors of 50 → 0.5/51; 1 error → 1.5/51: one error costs −200 %, none costs nothing
    assert metrics.gain([0.0], [0.0], [50]) == 0.0
    assert metrics.gain([0.02], [0.0], [50]) == pytest.approx(-200.0)
    assert metrics.gain([0.0], [0.02], [50]) == pytest.approx(100 * (1 / 1.5))
    # gain_raw keeps the paper's raw errors, the baseline floored at 1/(2|V|) = 0.01
    assert metrics.gain_raw([0.02], [0.0], [50]) == pytest.approx((0.02 - 0.01) / 0.01)


def test_bad_matrices_are_rejected():
    with pytest.raises(L2BGError, match="empty"):
        metrics.average_accuracy([])
    with pytest.raises(L2BGError, match="misses"):
        metrics.bwt([[0.5, None], [None, 0.4]])
    with pytest.raises(L2BGError, match="independent"):
        metrics.fwt(R, [0.1])


def test_nondominated_maximises_accuracy_and_minimises_size():
    pts = [(0.90, 100), (0.95, 200), (0.85, 150), (0.95, 250), (0.80, 50), (0.90, 100)]
    # (0.85, 150) is beaten by (0.90, 100); (0.95, 250) by (0.95, 200); equal points stay
    assert metrics.nondominated(pts) == [True, True, False, False, True, True]
    assert metrics.nondominated([]) == []
    assert metrics.nondominated([(0.5, 1)]) == [True]
