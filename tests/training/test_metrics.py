"""training.metrics: kappa, referable AUC and the operating-point choice on known inputs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torchmetrics", reason="training extras are not installed")

from training.metrics import choose_operating_point, confusion_matrix, grader_metrics, referable_probability  # noqa: E402


def _onehot(grades: list[int], conf: float = 0.9) -> np.ndarray:
    p = np.full((len(grades), 5), (1 - conf) / 4, np.float32)
    p[np.arange(len(grades)), grades] = conf
    return p


def test_perfect_predictions() -> None:
    y = np.array([0, 1, 2, 3, 4, 0, 2, 4])
    m = grader_metrics(_onehot(list(y)), y, threshold=0.5)
    assert m["quadratic_weighted_kappa"] == pytest.approx(1.0)
    assert m["accuracy"] == 1.0 and m["referable_auc"] == 1.0
    assert m["referable_sensitivity"] == 1.0 and m["referable_specificity"] == 1.0
    assert confusion_matrix(_onehot(list(y)), y).trace() == len(y)


def test_kappa_penalises_distant_errors_more() -> None:
    y = np.array([0, 0, 4, 4])
    near = grader_metrics(_onehot([1, 0, 3, 4]), y)["quadratic_weighted_kappa"]
    far = grader_metrics(_onehot([4, 0, 0, 4]), y)["quadratic_weighted_kappa"]
    assert near > far


def test_operating_point_reaches_the_sensitivity() -> None:
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 2, 400)
    p = np.clip(0.35 * ref + rng.normal(0.3, 0.2, 400), 0, 1)
    op = choose_operating_point(p, ref, 0.9)
    sens = float(((p >= op.threshold) & (ref == 1)).sum() / ref.sum())
    assert op.sensitivity >= 0.9 and sens == pytest.approx(op.sensitivity, abs=1e-6)
    assert 0 <= op.threshold <= 1 and 0 < op.specificity < 1
    assert referable_probability(_onehot([0, 3]))[1] == pytest.approx(0.9 + 2 * 0.025, abs=1e-5)


def test_reported_sensitivity_uses_the_serving_rule_and_survives_rounding() -> None:
    # Three referable images; the threshold equals one of their probabilities: p >= t must count it.
    probs = np.array([[0.0, 0.0, 0.6, 0.2, 0.2], [0.3, 0.1, 0.3, 0.2, 0.1], [0.5, 0.1, 0.2, 0.1, 0.1],
                      [0.9, 0.1, 0.0, 0.0, 0.0], [0.2, 0.5, 0.1, 0.1, 0.1]], np.float32)
    labels = np.array([2, 3, 2, 0, 1])
    p_ref = referable_probability(probs)
    assert p_ref.max() <= 1.0 and p_ref.dtype == np.float64
    op = choose_operating_point(p_ref, (labels >= 2).astype(np.int64), 0.9)
    m = grader_metrics(probs, labels, op.threshold)
    assert m["referable_sensitivity"] == pytest.approx(op.sensitivity) == 1.0
    assert m["referable_specificity"] == pytest.approx(op.specificity)


# Confidence intervals and the pointing game.

from models.preprocess import FundusTransform  # noqa: E402
from training.metrics import (bootstrap_interval, cam_peak, field_centre, grader_intervals,  # noqa: E402
                              pointing_game, pointing_hit)


def test_bootstrap_interval_is_percentile_and_reproducible() -> None:
    values = np.arange(100, dtype=np.float64)
    mean = lambda idx: float(values[idx].mean())  # noqa: E731
    low, high = bootstrap_interval(mean, 100, resamples=500, seed=3)
    assert (low, high) == bootstrap_interval(mean, 100, resamples=500, seed=3)
    # The mean of 100 draws from 0..99 has sd 28.9 / 10: a 95 % interval of about ±5.7 around 49.5.
    assert 42 < low < 46 and 53 < high < 57
    assert bootstrap_interval(lambda idx: 7.0, 10) == (7.0, 7.0)
    nan = bootstrap_interval(lambda idx: float("nan"), 10)
    assert all(np.isnan(v) for v in nan) and all(np.isnan(v) for v in bootstrap_interval(mean, 0))


def test_grader_intervals_bracket_the_metrics() -> None:
    y = np.array([0, 1, 2, 3, 4] * 8)
    perfect = grader_intervals(_onehot(list(y)), y, resamples=200)
    assert perfect["quadratic_weighted_kappa_ci95_low"] == perfect["quadratic_weighted_kappa_ci95_high"] == pytest.approx(1.0)
    assert perfect["referable_auc_ci95_low"] == 1.0
    rng = np.random.default_rng(1)
    noisy_pred = np.clip(y + rng.integers(-1, 2, len(y)), 0, 4)
    probs = _onehot(list(noisy_pred), 0.6)
    m = grader_metrics(probs, y)
    ci = grader_intervals(probs, y, resamples=300)
    assert ci["quadratic_weighted_kappa_ci95_low"] < m["quadratic_weighted_kappa"] < ci["quadratic_weighted_kappa_ci95_high"]
    assert ci["referable_auc_ci95_low"] <= m["referable_auc"] <= ci["referable_auc_ci95_high"] <= 1.0
    assert "referable_auc_ci95_low" not in grader_intervals(_onehot([0, 1, 0]), np.array([0, 1, 1]), resamples=20)


def test_pointing_hit_inside_and_within_tolerance() -> None:
    box = [(10.0, 10.0, 20.0, 20.0)]  # covers pixel indices 10..19
    assert pointing_hit((15, 15), box, 0) and pointing_hit((19, 10), box, 0)
    assert not pointing_hit((20, 15), box, 0) and pointing_hit((20, 15), box, 1)
    assert pointing_hit((25, 15), box, 6) and not pointing_hit((25, 15), box, 5.9)
    assert pointing_hit((22, 23), box, 5) and not pointing_hit((22, 23), box, 4.9)  # 3-4-5 from the corner (19, 19)
    assert pointing_hit((0, 0), [(50, 50, 60, 60), (1, 1, 3, 3)], 1.5)  # any box counts
    assert not pointing_hit(None, box, 100) and not pointing_hit((15, 15), [], 100)


def test_cam_peak_maps_the_maximum_to_original_pixels() -> None:
    t = FundusTransform(x0=100.0, y0=50.0, scale=2.0, size=64, original_width=300, original_height=300)
    cam = np.zeros((8, 8), np.float32)
    cam[2, 5] = 1.0  # cell centre at model pixel (5 + 0.5) * 8 - 0.5 = 43.5, (2 + 0.5) * 8 - 0.5 = 19.5
    x, y = cam_peak(cam, t)
    # original = (u + 0.5) * 2 - 0.5 + offset: 187.5 and 89.5, within one model pixel (2 px) of the peak
    assert abs(x - 187.5) <= 1.0 and abs(y - 89.5) <= 1.0
    assert cam_peak(np.full((8, 8), 3.0, np.float32), t) is None  # flat: serving draws nothing
    assert cam_peak(-np.ones((8, 8), np.float32), t) is None  # only negative evidence: cut, flat


def test_pointing_game_rate_and_interval() -> None:
    m = pointing_game([True, False, True, True], resamples=200)
    assert m["pointing_game_hit_rate"] == 0.75 and m["pointing_game_n"] == 4
    assert 0 <= m["pointing_game_hit_rate_ci95_low"] <= 0.75 <= m["pointing_game_hit_rate_ci95_high"] <= 1
    assert pointing_game([]) == {"pointing_game_n": 0.0}
    assert pointing_game([True, False], [False, False])["pointing_game_centre_baseline"] == 0.0
    with pytest.raises(ValueError, match="1 centre-baseline results for 2 images"):
        pointing_game([True, False], [True])


def test_field_centre_is_the_crop_centre_in_original_pixels() -> None:
    t = FundusTransform(x0=100.0, y0=50.0, scale=2.0, size=64, original_width=300, original_height=300)
    # model centre 31.5 -> (31.5 + 0.5) * 2 - 0.5 + offset
    assert field_centre(t) == (163.5, 113.5)


def test_referable_auc_of_any_probability_and_none_with_one_class() -> None:
    from training.metrics import referable_auc

    labels = np.array([0, 1, 2, 4])
    assert referable_auc(np.array([0.1, 0.2, 0.8, 0.9]), labels) == pytest.approx(1.0)
    assert referable_auc(np.array([0.9, 0.8, 0.2, 0.1]), labels) == pytest.approx(0.0)
    assert referable_auc(np.array([0.1, 0.2]), np.array([0, 1])) is None
