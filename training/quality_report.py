"""Evaluate an image-quality checkpoint on held-out data: the metrics ``python -m training evaluate`` prints
(:func:`training.quality_metrics.quality_metrics` at the checkpoint's gradable threshold, plus a bootstrap 95 %
interval of the quality AUC) and the report page: ROC curves of "ungradable" and of every reason with the
gradable operating point, the confusion at that threshold, and example photographs with their predicted
reasons."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import binary_auroc, binary_confusion_matrix, binary_roc
from tqdm import tqdm

from training.config import TrainConfig
from training.data import load_rgb
from training.metrics import bootstrap_interval
from training.quality_metrics import is_gradable, quality_metrics
from training.quality_model import QUALITY_CLASSES, QualityDataset, QualityItem, quality_probabilities
from training.report import QUALITY_CURVES, Curve, Point, confusion_figure, roc_figure
from training.report_html import Page, training_curves

#: A reason is listed for a photograph when its probability reaches this (the outputs are independent sigmoids).
REASON_THRESHOLD = 0.5
GRID_IMAGES = 12
THUMB_WIDTH = 300
BATCH = 32

LABELS = {
    "quality_auc": "quality AUC (ungradable, scored by 1 - p_gradable)",
    "ungradable_sensitivity": "ungradable sensitivity at the gradable threshold",
    "ungradable_specificity": "ungradable specificity at the gradable threshold",
    "ungradable": "ungradable images",
    "n": "images",
}


@dataclass(frozen=True)
class QualityOutputs:
    """Sigmoid ``probs`` and 0/1 ``targets`` ``(N, len(QUALITY_CLASSES))`` of ``items``."""

    items: list[QualityItem]
    probs: np.ndarray
    targets: np.ndarray


def predict_quality(model: torch.nn.Module, items: Sequence[QualityItem], size: int,
                    preprocessing: str = "fovea.fundus-disc-crop") -> QualityOutputs:
    """Preprocess ``items`` once (serving preprocessing, the recipe called ``preprocessing``) and run the model."""
    from models.preprocess import recipe_for

    ds = QualityDataset(items, size, train=False, desc="preprocess held-out", recipe=recipe_for(preprocessing))
    probs, targets = quality_probabilities(model, DataLoader(ds, batch_size=BATCH))
    return QualityOutputs(list(items), probs, targets)


def quality_evaluation_metrics(out: QualityOutputs, threshold: float | None) -> dict[str, float]:
    """:func:`~training.quality_metrics.quality_metrics` and the percentile bootstrap 95 % interval of
    ``quality_auc`` (:func:`training.metrics.bootstrap_interval`, images resampled)."""
    metrics = quality_metrics(out.probs, out.targets, QUALITY_CLASSES, threshold)
    if "quality_auc" in metrics:
        score = torch.from_numpy(1.0 - out.probs[:, 0].astype(np.float64))
        bad = torch.from_numpy(out.targets[:, 0] < 0.5).long()

        def auc(idx: np.ndarray) -> float:
            i = torch.from_numpy(idx)
            y = bad[i]
            return float(binary_auroc(score[i], y).clamp(0, 1)) if 0 < int(y.sum()) < len(y) else float("nan")

        metrics["quality_auc_ci95_low"], metrics["quality_auc_ci95_high"] = bootstrap_interval(auc, len(bad))
    return metrics


def roc_curves(out: QualityOutputs, metrics: dict[str, float]) -> list[Curve]:
    """ROC of "ungradable" (scored by ``1 - p_gradable``) and of every reason with both classes present."""
    curves = []
    columns = [("ungradable", 1.0 - out.probs[:, 0], out.targets[:, 0] < 0.5, metrics.get("quality_auc"))]
    columns += [(name, out.probs[:, j], out.targets[:, j] >= 0.5, metrics.get(f"auc_{name}"))
                for j, name in enumerate(QUALITY_CLASSES[1:], start=1)]
    for name, score, truth, auc in columns:
        if auc is None:
            continue
        fpr, tpr, _ = binary_roc(torch.from_numpy(np.asarray(score, np.float64)), torch.from_numpy(truth).long())
        curves.append(Curve(fpr.numpy(), tpr.numpy(), f"{name}, AUC {auc:.3f} ({int(truth.sum())} positive)"))
    return curves


def report(out: QualityOutputs, metrics: dict[str, float], *, cfg: TrainConfig, ck: dict, threshold: float | None,
           page: Page, grid_images: int = GRID_IMAGES) -> Page:
    """Fill ``page`` with the quality model's sections; returns it."""
    page.section("Metrics", "Held-out images. A photograph is gradable iff p_gradable >= the checkpoint's threshold "
                            f"({'none' if threshold is None else f'{threshold:.4f}'}, chosen on the validation split "
                            f"for an ungradable sensitivity >= {cfg.ungradable_min_sensitivity}); 'ungradable' is "
                            "the positive class. The quality-AUC interval is a percentile bootstrap over images "
                            "(1000 resamples, seed 0).")
    page.metrics_table(metrics, LABELS)
    page.section("ROC curves: ungradable and each reason")
    points = []
    if threshold is not None and "ungradable_sensitivity" in metrics:
        points.append(Point(1.0 - metrics["ungradable_specificity"], metrics["ungradable_sensitivity"],
                            f"gradable operating point p >= {threshold:.3f}"))
    page.figure(roc_figure(roc_curves(out, metrics), f"image quality, n={len(out.items)}", points), name="roc",
                caption="ROC of 'ungradable' and of every reason output; the gradable operating point circled")
    if threshold is not None:
        page.section("Confusion at the gradable threshold")
        flagged = torch.from_numpy(~is_gradable(out.probs[:, 0], threshold)).long()
        truth = torch.from_numpy(out.targets[:, 0] < 0.5).long()
        cm = binary_confusion_matrix(flagged, truth).numpy()  # rows truth (gradable, ungradable)
        page.figure(confusion_figure(cm, ("gradable", "ungradable"), f"gradable iff p >= {threshold:.3f}"),
                    name="confusion", caption="Rows: truth; columns: the model's decision at the threshold")
    training_curves(page, ck, QUALITY_CURVES,
                    caption="Training loss (binary cross-entropy) and validation metrics per epoch")
    page.section("Examples", f"Photographs with the model's decision and the reasons with probability >= "
                             f"{REASON_THRESHOLD}; ungradable ones first.")
    bad = out.targets[:, 0] < 0.5
    first = [i for i in range(len(out.items)) if bad[i]][: (grid_images + 1) // 2]
    rest = [i for i in range(len(out.items)) if not bad[i]]
    chosen = (first + rest)[:grid_images]
    chosen += [i for i in range(len(out.items)) if bad[i] and i not in chosen][: grid_images - len(chosen)]
    tiles = []
    for i in tqdm(chosen, desc="quality grid", unit="img", leave=False):
        item, p, y = out.items[i], out.probs[i], out.targets[i]
        rgb = load_rgb(item.record.image)
        h, w = rgb.shape[:2]
        small = cv2.resize(rgb, (THUMB_WIDTH, max(1, round(h * THUMB_WIDTH / w))), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".png", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError("PNG encoding failed")
        true_reasons = [n for j, n in enumerate(QUALITY_CLASSES[1:], start=1) if y[j] >= 0.5]
        said = [f"{n} {p[j]:.2f}" for j, n in enumerate(QUALITY_CLASSES[1:], start=1) if p[j] >= REASON_THRESHOLD]
        truth = "gradable" if not bad[i] else "ungradable" + (f" ({', '.join(true_reasons)})" if true_reasons else "")
        text = f"{item.record.image.name}: truth {truth}; p_gradable {p[0]:.2f}"
        if threshold is not None:
            text += " -> " + ("gradable" if p[0] >= threshold else "ungradable")
        text += "; reasons: " + (", ".join(said) if said else "none")
        mark = None if threshold is None else ("correct" if (p[0] >= threshold) != bool(bad[i]) else "wrong")
        tiles.append((buf.tobytes(), text, mark))
    page.grid(tiles, name="examples")
    return page
