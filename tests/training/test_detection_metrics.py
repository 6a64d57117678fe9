"""training.detection_metrics: FROC against a hand-computed example, the F1 threshold, mAP@0.5 sanity."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("torch", reason="training extras (torch) are not installed")

from models.detection import LESION_CLASSES, Lesion  # noqa: E402
from training.detection_metrics import (Truth, detection_metrics, f1_threshold, froc_curve,  # noqa: E402
                                        froc_sensitivities, mean_average_precision)

H = "haemorrhage"


def _box(cx: float, cy: float, r: float = 2.0) -> tuple[float, float, float, float]:
    return (cx - r, cy - r, cx + r, cy + r)


# Two images: lesions A, B in image 0, C in image 1.
TRUTHS = [Truth(boxes=((0, 0, 10, 10), (20, 20, 30, 30)), types=(H, H)), Truth(boxes=((0, 0, 10, 10),), types=(H,))]
DETECTIONS = [
    [Lesion(H, 0.9, _box(5, 5)), Lesion(H, 0.7, _box(6, 6)), Lesion(H, 0.5, _box(40, 40)), Lesion(H, 0.4, _box(25, 25)),
     Lesion("microaneurysm", 0.95, _box(25, 25))],  # another class: not part of the haemorrhage curve
    [Lesion(H, 0.8, _box(50, 50)), Lesion(H, 0.6, _box(5, 5))],
]


def test_froc_matches_hand_computation() -> None:
    curve = froc_curve(DETECTIONS, TRUTHS, H)
    # By score: .9 hits A; .8 FP; .7 lands on A again (ignored); .6 hits C; .5 FP; .4 hits B.
    assert curve.scores.tolist() == [0.9, 0.8, 0.6, 0.5, 0.4]
    assert curve.hits.tolist() == [1, 1, 2, 2, 3] and curve.false_positives.tolist() == [0, 1, 1, 2, 2]
    assert (curve.lesions, curve.images) == (3, 2)
    # FP/image after each: 0, .5, .5, 1, 1 -> sensitivities 1/3 at 1/8 and 1/4, 2/3 at 1/2, 1 from 1 on.
    sens = froc_sensitivities(curve)
    assert sens == pytest.approx([1 / 3, 1 / 3, 2 / 3, 1, 1, 1, 1])
    metrics = detection_metrics(DETECTIONS, TRUTHS, LESION_CLASSES)
    assert metrics["froc_haemorrhage"] == pytest.approx(16 / 21) and metrics["froc"] == pytest.approx(16 / 21)
    assert "froc_microaneurysm" not in metrics and metrics["n"] == 2


def test_f1_threshold_picks_the_best_f1_point() -> None:
    # F1 = 2h / (h + fp + 3) along the curve: .5, .4, .67, .57, .75 -> the last detection, score .4.
    threshold, sensitivity, fppi = f1_threshold(froc_curve(DETECTIONS, TRUTHS, H))
    assert (threshold, sensitivity, fppi) == (0.4, 1.0, 1.0)
    t, s, f = f1_threshold(froc_curve(DETECTIONS, TRUTHS, "cotton_wool_spot"), default=0.5)
    assert t == 0.5 and math.isnan(s) and math.isnan(f)


def test_map_is_one_for_perfect_and_lower_for_shifted_boxes() -> None:
    perfect = [[Lesion(t, 0.9, b) for b, t in zip(tr.boxes, tr.types)] for tr in TRUTHS]
    assert mean_average_precision(perfect, TRUTHS, LESION_CLASSES) == {"map_50": 1.0, "ap50_haemorrhage": 1.0}
    shifted = [[Lesion(t, 0.9, (b[0] + 6, b[1], b[2] + 6, b[3])) for b, t in zip(tr.boxes, tr.types)] for tr in TRUTHS]
    assert mean_average_precision(shifted, TRUTHS, LESION_CLASSES)["map_50"] == 0.0  # IoU 4/16 < 0.5
    with pytest.raises(ValueError, match="detection lists"):
        froc_curve(DETECTIONS[:1], TRUTHS, H)


def test_f1_threshold_without_any_hit_takes_the_highest_score() -> None:
    misses = [[Lesion(H, 0.9, _box(50, 50)), Lesion(H, 0.2, _box(60, 60))], []]
    assert f1_threshold(froc_curve(misses, TRUTHS, H)) == (0.9, 0.0, 0.5)


def test_map_never_waits_for_other_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun only rank 0 validates: the mAP must use the detections it is given, not gather them from
    ranks that never compute it (that gather waits forever). With a process group seemingly up, a metric that
    synchronised would call into torch.distributed, which has none here, and fail."""
    import torchmetrics.metric

    monkeypatch.setattr(torchmetrics.metric, "jit_distributed_available", lambda: True)
    assert mean_average_precision(DETECTIONS, TRUTHS, LESION_CLASSES)["map_50"] >= 0
