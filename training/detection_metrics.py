"""Lesion-detection metrics: mAP@0.5 per class (torchmetrics, pycocotools back-end) and FROC.

FROC (free-response ROC) is the lesion-level screening measure of the Retinopathy Online Challenge and
e-ophtha: the sensitivity reached at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per image, averaged. A
detection *hits* a ground-truth lesion of its class when its box centre lies inside the lesion's box (the
usual FROC criterion: IoU is meaningless for 2-pixel microaneurysms). Each lesion counts once; further
detections on an already-hit lesion are neither hits nor false positives (CAMELYON's rule).

Neither torchmetrics nor scikit-learn has FROC; MONAI's ``compute_froc_score`` takes already-matched
true/false-positive scores, so the matching — most of the work — would still be ours, and MONAI is a large
dependency for twenty lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.detection import MeanAveragePrecision

from models.detection import Lesion

#: False positives per image at which FROC sensitivities are read.
FROC_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Truth:
    """Ground truth of one image: ``boxes`` and their class names ``types`` (same coordinates as the
    detections they are compared with)."""

    boxes: tuple[Box, ...]
    types: tuple[str, ...]


@dataclass(frozen=True)
class FrocCurve:
    """Detections of one class sorted by descending score with cumulative hit/false-positive counts."""

    scores: np.ndarray
    hits: np.ndarray  # cumulative lesions hit after each detection
    false_positives: np.ndarray  # cumulative false positives after each detection
    lesions: int
    images: int


def froc_curve(detections: Sequence[Sequence[Lesion]], truths: Sequence[Truth], cls: str) -> FrocCurve:
    """The FROC curve of class ``cls`` over images (``detections[i]`` and ``truths[i]`` belong together)."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} detection lists for {len(truths)} images")
    flat = [(d.score, i, d.box) for i, dets in enumerate(detections) for d in dets if d.type == cls]
    flat.sort(key=lambda t: -t[0])
    gts = [np.array([b for b, t in zip(tr.boxes, tr.types) if t == cls], np.float64).reshape(-1, 4) for tr in truths]
    taken = [np.zeros(len(g), bool) for g in gts]
    scores, hits, fps = [], [], []
    n_hit = n_fp = 0
    for score, i, (x0, y0, x1, y1) in flat:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        g = gts[i]
        inside = (g[:, 0] <= cx) & (cx <= g[:, 2]) & (g[:, 1] <= cy) & (cy <= g[:, 3])
        fresh = np.flatnonzero(inside & ~taken[i])
        if fresh.size:
            taken[i][fresh[0]] = True
            n_hit += 1
        elif not inside.any():
            n_fp += 1
        else:
            continue  # a second detection of a lesion already hit: ignored
        scores.append(score)
        hits.append(n_hit)
        fps.append(n_fp)
    return FrocCurve(np.array(scores, np.float64), np.array(hits, np.int64), np.array(fps, np.int64),
                     lesions=int(sum(len(g) for g in gts)), images=len(truths))


def froc_sensitivities(curve: FrocCurve, rates: Sequence[float] = FROC_RATES) -> list[float]:
    """Sensitivity at each false-positive rate: the best sensitivity among score thresholds whose false
    positives per image do not exceed the rate (0 with no such threshold); NaN when the class has no lesion."""
    if curve.lesions == 0:
        return [float("nan")] * len(rates)
    fppi = curve.false_positives / max(curve.images, 1)
    sens = curve.hits / curve.lesions
    return [float(sens[fppi <= r].max()) if (fppi <= r).any() else 0.0 for r in rates]


def f1_threshold(curve: FrocCurve, default: float = 0.5) -> tuple[float, float, float]:
    """The score threshold maximising lesion-level F1 (hits vs. false positives, as in :func:`froc_curve`),
    with the sensitivity and false positives per image it gives: ``(threshold, sensitivity, fp_per_image)``.
    ``default`` with NaN metrics when the class has no lesion or no detection to choose from."""
    if curve.lesions == 0 or curve.scores.size == 0:
        return default, float("nan"), float("nan")
    f1 = 2 * curve.hits / (curve.hits + curve.false_positives + curve.lesions)
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    # Among equal F1 the lowest threshold (more sensitive); when nothing is ever hit (F1 = 0 everywhere) the
    # highest, which admits the fewest false positives.
    i = int(best[-1]) if f1.max() > 0 else 0
    return (float(curve.scores[i]), float(curve.hits[i] / curve.lesions),
            float(curve.false_positives[i] / max(curve.images, 1)))


def torchmetrics_inputs(detections: Sequence[Sequence[Lesion]], truths: Sequence[Truth], classes: Sequence[str]
                        ) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """``(preds, target)`` for torchmetrics' ``MeanAveragePrecision`` (xyxy boxes, label ids by ``classes``)."""
    index = {c: i for i, c in enumerate(classes)}

    def pack(boxes: Sequence[Box], types: Sequence[str], scores: Sequence[float] | None) -> dict[str, torch.Tensor]:
        d = {"boxes": torch.tensor(list(boxes), dtype=torch.float32).reshape(-1, 4),
             "labels": torch.tensor([index[t] for t in types], dtype=torch.int64)}
        if scores is not None:
            d["scores"] = torch.tensor(list(scores), dtype=torch.float32)
        return d

    preds = [pack([d.box for d in dets], [d.type for d in dets], [d.score for d in dets]) for dets in detections]
    return preds, [pack(t.boxes, t.types, None) for t in truths]


def mean_average_precision(detections: Sequence[Sequence[Lesion]], truths: Sequence[Truth],
                           classes: Sequence[str]) -> dict[str, float]:
    """``map_50`` and ``ap50_<class>`` (classes with lesions only) with torchmetrics'
    ``MeanAveragePrecision`` at IoU 0.5 (COCO's 101-point interpolation); ``classes`` gives the label ids."""
    # COCO's default caps (1, 10, 100 detections per image and class); the summary reads the last, which
    # matches models.detection.TOP_K. Other caps make torchmetrics report -1 for "map".
    # sync_on_compute=False: the detections given are all there is. Under torchrun only rank 0 validates, and a
    # metric that gathered from the other ranks would wait for them forever.
    metric = MeanAveragePrecision(iou_thresholds=[0.5], class_metrics=True, box_format="xyxy", backend="pycocotools",
                                  sync_on_compute=False)
    # Its warning counts detections per image over all classes; pycocotools caps them per image *and class*.
    metric.warn_on_many_detections = False

    metric.update(*torchmetrics_inputs(detections, truths, classes))
    res = metric.compute()
    out = {"map_50": float(res["map"])}
    present = {t for tr in truths for t in tr.types}
    for cls_id, ap in zip(res["classes"].reshape(-1).tolist(), res["map_per_class"].reshape(-1).tolist()):
        name = classes[int(cls_id)]
        if name in present:
            out[f"ap50_{name}"] = float(ap)
    return out


def detection_metrics(detections: Sequence[Sequence[Lesion]], truths: Sequence[Truth],
                      classes: Sequence[str]) -> dict[str, float]:
    """mAP@0.5 (overall and per class), FROC per class (``froc_<class>``: mean sensitivity over
    :data:`FROC_RATES`) and ``froc`` (their mean over classes with lesions), and ``n`` images. Classes without
    lesions in ``truths`` are left out rather than reported as NaN."""
    out = mean_average_precision(detections, truths, classes) if truths else {}
    frocs = []
    for cls in classes:
        curve = froc_curve(detections, truths, cls)
        if curve.lesions:
            frocs.append(float(np.mean(froc_sensitivities(curve))))
            out[f"froc_{cls}"] = frocs[-1]
    if frocs:
        out["froc"] = float(np.mean(frocs))
    out["n"] = float(len(truths))
    return out
