import pytest

from l2bg import metrics
from l2bg.errors import L2BGError

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
    final = [0.1, 0.3]
    indep = [0.2, 0.2]
    # 100/2 * ((0.2-0.1)/0.2 + (0.2-0.3)/0.2) = 50 * (0.5 - 0.5) = 0
    assert metrics.gain(final, indep, [100, 100]) == pytest.approx(0.0)
    assert metrics.gain([0.1, 0.1], indep, [100, 100]) == pytest.approx(50.0)
    assert metrics.gain_raw([0.1, 0.1], indep, [100, 100]) == pytest.approx(-1.0)


def test_gain_floors_a_perfect_baseline():
    # E_phi = 0 is floored at 1/(2*50) = 0.01
    assert metrics.gain([0.02], [0.0], [50]) == pytest.approx(100 * (0.01 - 0.02) / 0.01)
    assert metrics.gain([0.0], [0.0], [50]) == pytest.approx(100.0)


def test_bad_matrices_are_rejected():
    with pytest.raises(L2BGError, match="empty"):
        metrics.average_accuracy([])
    with pytest.raises(L2BGError, match="misses"):
        metrics.bwt([[0.5, None], [None, 0.4]])
    with pytest.raises(L2BGError, match="independent"):
        metrics.fwt(R, [0.1])
