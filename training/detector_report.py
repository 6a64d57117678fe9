"""Evaluate a lesion-detector checkpoint on held-out data: the metrics ``python -m training evaluate`` prints
(:func:`training.detection_metrics.detection_metrics`, boxes in model pixels) and the report page: the AP and FROC table per
class, precision-recall curves at IoU 0.5 (torchmetrics' COCO evaluation), FROC curves, and a grid of model
input crops with the ground-truth boxes beside the predictions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader
from torchmetrics.detection import MeanAveragePrecision
from tqdm import tqdm

from datasets.readers import FundusRecord
from models.detection import LESION_CLASSES, Lesion
from training.config import TrainConfig
from training.detection import LesionDataset, collate, predict_lesions
from training.detection_metrics import (FROC_RATES, Truth, detection_metrics, froc_curve, froc_sensitivities,
                                        torchmetrics_inputs)
from training.report import DETECTOR_CURVES, Curve, froc_figure, pr_figure
from training.report_html import Page, training_curves

#: Detections drawn in the grid: models.detection.decode's default score floor (the card's per-class
#: thresholds are chosen at export, on validation, with the ONNX file).
DISPLAY_THRESHOLD = 0.3
GRID_IMAGES = 8
TILE_SIDE = 384
BATCH = 8


@dataclass(frozen=True)
class DetectorOutputs:
    """Candidate ``detections`` and ``truths`` per image of ``records`` (model pixels) and the dataset holding
    the crops."""

    records: list[FundusRecord]
    dataset: LesionDataset
    detections: list[list[Lesion]]
    truths: list[Truth]


def predict_detector(model: torch.nn.Module, records: Sequence[FundusRecord], size: int) -> DetectorOutputs:
    """Preprocess ``records`` once (serving preprocessing) and run the detector over them."""
    ds = LesionDataset(records, size, train=False, desc="preprocess held-out")
    detections, truths = predict_lesions(model, DataLoader(ds, batch_size=BATCH, collate_fn=collate), size)
    return DetectorOutputs(list(records), ds, detections, truths)


def pr_curves(detections: Sequence[Sequence[Lesion]], truths: Sequence[Truth],
              classes: Sequence[str] = LESION_CLASSES) -> dict[str, Curve]:
    """Per class with ground-truth lesions, the interpolated precision at COCO's 101 recall points (IoU 0.5,
    all areas, 100 detections per image) from torchmetrics' ``MeanAveragePrecision`` extended summary; recall
    points the detector never reaches are left out."""
    metric = MeanAveragePrecision(iou_thresholds=[0.5], extended_summary=True, box_format="xyxy",
                                  backend="pycocotools", sync_on_compute=False)
    metric.warn_on_many_detections = False

    preds, target = torchmetrics_inputs(detections, truths, classes)
    metric.update(preds, target)
    res = metric.compute()
    if "precision" not in res:  # no image at all
        return {}
    precision = res["precision"].numpy()  # (T=1, R=101, K, A, M): K = the sorted class ids seen
    ids = sorted({int(v) for d in preds + target for v in d["labels"].tolist()})
    recall = np.asarray(metric.rec_thresholds, dtype=np.float64)
    present = {t for tr in truths for t in tr.types}
    out = {}
    for k, cid in enumerate(ids):
        name = classes[cid]
        if name not in present:
            continue
        y = precision[0, :, k, 0, -1]
        keep = y >= 0
        out[name] = Curve(recall[keep], y[keep], name)
    return out


def report(out: DetectorOutputs, metrics: dict[str, float], *, cfg: TrainConfig, ck: dict, page: Page,
           grid_images: int = GRID_IMAGES, caption: str) -> Page:
    """Fill ``page`` with the detector's sections; returns it."""
    from analysis.render import draw_lesions, overlay

    counts = {c: sum(t.types.count(c) for t in out.truths) for c in LESION_CLASSES}
    page.section("Metrics", "Held-out images, boxes in model-input pixels. AP at IoU 0.5 (COCO 101-point "
                            "interpolation, torchmetrics); FROC: mean lesion sensitivity at "
                            f"{', '.join(f'{r:g}' for r in FROC_RATES)} false positives per image (a hit is a "
                            "detection centre inside a lesion box). No bootstrap intervals here: re-running the COCO "
                            "evaluation a thousand times costs more than the evaluation itself.")
    rows = [(c, counts[c], metrics.get(f"ap50_{c}", float("nan")), metrics.get(f"froc_{c}", float("nan")))
            for c in LESION_CLASSES]
    rows.append(("all classes", sum(counts.values()), metrics.get("map_50", float("nan")),
                 metrics.get("froc", float("nan"))))
    page.table(("class", "lesions", "AP@0.5", "FROC"), rows, name="ap")
    page.metrics_table(metrics)
    page.section("Precision-recall at IoU 0.5")
    curves = pr_curves(out.detections, out.truths)
    labelled = [Curve(c.x, c.y, f"{name}, AP {metrics.get(f'ap50_{name}', float('nan')):.3f}")
                for name, c in curves.items()]
    page.figure(pr_figure(labelled, f"precision-recall per class (n={len(out.truths)} images)"), name="pr",
                caption="Interpolated precision against recall per lesion class")
    page.section("FROC")
    frocs = []
    for cls in LESION_CLASSES:
        curve = froc_curve(out.detections, out.truths, cls)
        if curve.lesions:
            x = np.concatenate([[0.0], curve.false_positives / max(curve.images, 1)])
            y = np.concatenate([[0.0], curve.hits / curve.lesions])
            score = float(np.mean(froc_sensitivities(curve)))
            frocs.append(Curve(x, y, f"{cls}, FROC {score:.3f}"))
    page.figure(froc_figure(frocs, FROC_RATES, "FROC per class"), name="froc",
                caption="Lesion sensitivity against false positives per image; dotted lines: the rates averaged "
                        "into the FROC score")
    training_curves(page, ck, DETECTOR_CURVES,
                    caption="Training loss (focal heatmap + size + offset) and validation FROC / mAP per epoch")
    page.section("Predictions and ground truth", "Left: ground-truth boxes; right: detections with score >= "
                                                 f"{DISPLAY_THRESHOLD} on the model-input crop. Images with the most "
                                                 "lesions first.")
    order = sorted(range(len(out.truths)), key=lambda i: (-len(out.truths[i].boxes), i))[:grid_images]
    tiles = []
    for i in tqdm(order, desc="detection grid", unit="img", leave=False):
        crop = out.dataset.crops[i]
        scale = crop.shape[1] / TILE_SIDE
        interpolation = cv2.INTER_AREA if scale > 1 else cv2.INTER_LINEAR
        small = cv2.resize(crop, (TILE_SIDE, TILE_SIDE), interpolation=interpolation)
        truth = small.copy()
        draw_lesions(truth, [(t, 1.0, b) for b, t in zip(out.truths[i].boxes, out.truths[i].types)], scale=scale)
        shown = [d for d in out.detections[i] if d.score >= DISPLAY_THRESHOLD]
        # overlay() with an all-zero heat leaves the pixels as they are and burns in the AI caption.
        pred = overlay(small, np.zeros(small.shape[:2], np.uint8), caption=caption)
        draw_lesions(pred, [(d.type, d.score, d.box) for d in shown], scale=scale)
        both = np.concatenate([truth, np.full((TILE_SIDE, 4, 3), 255, np.uint8), pred], axis=1)
        ok, buf = cv2.imencode(".png", cv2.cvtColor(both, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError("PNG encoding failed")
        tiles.append((buf.tobytes(), f"{out.records[i].image.name}: "
                                     f"{len(out.truths[i].boxes)} true lesions, {len(shown)} detections", None))
    page.grid(tiles, name="detections")
    return page


def detector_evaluation_metrics(out: DetectorOutputs) -> dict[str, float]:
    """:func:`training.detection_metrics.detection_metrics` of the outputs (what ``evaluate`` printed before)."""
    return detection_metrics(out.detections, out.truths, LESION_CLASSES)
