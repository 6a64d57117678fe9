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
