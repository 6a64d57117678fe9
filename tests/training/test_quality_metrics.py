"""training.quality_metrics: the gradability threshold and the quality metrics."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="training extras (torch) are not installed")

from training.quality_metrics import choose_gradable_threshold, is_gradable, quality_metrics  # noqa: E402

CLASSES = ("gradable", "blur", "haze")


def test_threshold_reaches_the_sensitivity_with_the_best_youden() -> None:
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    gradable = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    op = choose_gradable_threshold(p, gradable, 0.75)
    # Ungradable iff p < T. T = 0.4 flags 0.1-0.3 (0.75, 1.0); T = 0.7 also catches 0.6 at the cost of the
    # gradable 0.4 (1.0, 0.75): the same Youden index, and a tie goes to sensitivity.
    assert op.threshold == pytest.approx(0.7) and op.sensitivity == 1.0 and op.specificity == 0.75
    assert (~is_gradable(p, op.threshold))[gradable == 0].all()
    # Without a tie the Youden index decides: catching 0.6 would now cost two gradable photos.
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.55, 0.8, 0.9])
    op = choose_gradable_threshold(p, gradable, 0.5)
    assert op.threshold == pytest.approx(0.5) and (op.sensitivity, op.specificity) == (0.75, 1.0)
    op = choose_gradable_threshold(p, gradable, 1.0)
    assert op.threshold == pytest.approx(0.8) and (op.sensitivity, op.specificity) == (1.0, 0.5)


def test_threshold_can_flag_everything() -> None:
    op = choose_gradable_threshold(np.array([0.5, 0.9, 0.9]), np.array([1, 0, 1]), 0.9)
    assert op.sensitivity == 1.0 and not is_gradable(np.array([0.9]), op.threshold).any()
    with pytest.raises(ValueError, match="as many"):
        choose_gradable_threshold(np.array([0.5]), np.array([1, 0]), 0.9)


def test_metrics_auc_per_output_and_decisions() -> None:
    targets = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1]], np.float32)
    perfect = np.where(targets > 0, 0.9, 0.1)
    m = quality_metrics(perfect, targets, CLASSES, threshold=0.5)
    assert m["quality_auc"] == 1.0 and m["auc_blur"] == 1.0 and m["auc_haze"] == 1.0
    assert (m["n"], m["ungradable"]) == (5.0, 3.0)
    assert m["ungradable_sensitivity"] == 1.0 and m["ungradable_specificity"] == 1.0
    inverted = quality_metrics(1 - perfect, targets, CLASSES, threshold=0.5)
    assert inverted["quality_auc"] == 0.0 and inverted["ungradable_sensitivity"] == 0.0
    one_class = quality_metrics(perfect[:2], targets[:2], CLASSES)
    assert "quality_auc" not in one_class and "ungradable_sensitivity" not in one_class
    with pytest.raises(ValueError, match="gradable first"):
        quality_metrics(perfect, targets, ("blur", "gradable", "haze"))
