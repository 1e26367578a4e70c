"""Metrics against scikit-learn / mir_eval on fixed inputs, and against hand computations."""
import mir_eval
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, r2_score, roc_auc_score

from mertkit.eval import metrics


def test_accuracy_by_hand():
    # 3 of 5 agree.
    assert metrics.accuracy(np.array([0, 1, 2, 2, 1]), np.array([0, 1, 1, 2, 0])) == pytest.approx(0.6)


def test_r2_by_hand():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.0, 2.0, 2.0, 5.0])
    # SS_res = 0 + 0 + 1 + 1 = 2; mean 2.5, SS_tot = 2.25 + 0.25 + 0.25 + 2.25 = 5.
    assert metrics.r2_mean(y, pred) == pytest.approx(1 - 2 / 5)


def test_r2_per_target_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(40, 3))
    pred = y + rng.normal(scale=[0.1, 0.5, 2.0], size=(40, 3))
    np.testing.assert_allclose(metrics.r2_per_target(y, pred), r2_score(y, pred, multioutput="raw_values"))
    assert metrics.r2_mean(y, pred) == pytest.approx(r2_score(y, pred))


def test_constant_target_raises():
    with pytest.raises(metrics.MetricError, match="constant"):
        metrics.r2_per_target(np.ones(5), np.arange(5.0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_and_ap_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((60, 5)) < 0.3).astype(int)
    y[0], y[1] = 1, 0  # every class has both values
    scores = np.round(rng.random((60, 5)) + 0.5 * y, 1)  # rounding creates ties
    assert metrics.roc_auc_macro(y, scores) == pytest.approx(roc_auc_score(y, scores, average="macro"))
    assert metrics.average_precision_macro(y, scores) == pytest.approx(
        average_precision_score(y, scores, average="macro")
    )


def test_roc_auc_by_hand():
    # Positives scored 0.9, 0.4; negatives 0.5, 0.1: 3 of 4 pairs ordered right.
    assert metrics.roc_auc_binary(np.array([1, 0, 1, 0]), np.array([0.9, 0.5, 0.4, 0.1])) == pytest.approx(0.75)


def test_degenerate_class_raises_or_is_skipped():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    scores = np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.5]])
    with pytest.raises(metrics.MetricError, match="class 1"):
        metrics.roc_auc_macro(y, scores)
    assert metrics.roc_auc_macro(y, scores, ignore_degenerate=True) == pytest.approx(1.0)


def test_frame_accuracy_ignores_padding():
    truth = np.array([[1, 2, -1], [0, 0, 0]])
    pred = np.array([[1, 0, 5], [0, 0, 1]])
    assert metrics.frame_accuracy(truth, pred) == pytest.approx(3 / 5)


def test_beat_f_measure_matches_mir_eval_and_hand():
    reference = np.array([1.0, 2.0, 3.0, 4.0, 6.0, 7.0])
    estimated = np.array([1.05, 2.09, 3.0, 5.0, 6.02, 8.0])
    # 0.07 s window: hits at 1.05, 3.0, 6.02 -> P = 3/6, R = 3/6, F = 0.5.
    assert metrics.beat_f_measure(reference, estimated) == pytest.approx(0.5)
    assert metrics.beat_f_measure(reference, estimated) == pytest.approx(
        mir_eval.beat.f_measure(reference, estimated, 0.07)
    )
    # Wider window also catches 2.09.
    assert metrics.beat_f_measure(reference, estimated, tolerance=0.1) == pytest.approx(4 / 6)
    # Trim keeps beats at or after 5 s: reference 6, 7; estimated 5, 6.02, 8 -> 1 hit,
    # P = 1/3, R = 1/2, F = 2PR / (P + R) = 0.4.
    assert metrics.beat_f_measure(reference, estimated, trim=True) == pytest.approx(0.4)
    trimmed = mir_eval.beat.trim_beats
    assert metrics.beat_f_measure(reference, estimated, trim=True) == pytest.approx(
        mir_eval.beat.f_measure(trimmed(reference), trimmed(estimated), 0.07)
    )


def test_shape_mismatch_raises():
    with pytest.raises(metrics.MetricError, match="shapes differ"):
        metrics.accuracy(np.zeros(3), np.zeros(4))


def test_beat_f_measure_empty_sides():
    assert metrics.beat_f_measure(np.array([1.0, 2.0]), np.array([])) == 0.0
    assert metrics.beat_f_measure(np.array([]), np.array([1.0])) == 0.0
    assert metrics.beat_f_measure(np.array([]), np.array([])) == 1.0
    assert metrics.mean_beat_f_measure([np.array([1.0]), np.array([2.0])], [np.array([1.01]), np.array([])]) == 0.5
