"""Evaluate a DR-grader checkpoint on held-out data: the metrics ``python -m training evaluate`` prints and the
report page beside the run (:mod:`training.report_html`).

One pass over the records computes logits *and* CAM (``WithCam``, the exported graph's two outputs; ONNX
Runtime reproduces them within the export's parity tolerance), with :func:`models.preprocess.preprocess` —
the serving function — so the saliency overlays are drawn exactly as serving draws them
(:func:`analysis.render.cam_to_heatmap`, :func:`analysis.render.overlay`) over the original photograph.

The page: metrics with their bootstrap 95 % intervals (:func:`training.metrics.grader_intervals`), the ROC
curve of referable DR with the checkpoint's operating point, the confusion matrix, the reliability diagram
with the calibration error, the training curves from the checkpoint's history, and a grid of saliency overlays
with the ground-truth lesion boxes — referable images with lesion boxes first, each marked hit or miss in the
pointing game (:func:`training.metrics.pointing_game`, the card's protocol).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torchmetrics.functional.classification import binary_roc
from tqdm import tqdm

from datasets.readers import FundusRecord
from models.architectures.classifier import WithCam
from models.card import ICDR_LABELS
from models.grading import REFERABLE_MIN_GRADE, referable_probability
from models.preprocess import DISC_CROP, FundusTransform, Recipe, preprocess
from training.config import TrainConfig
from training.data import load_rgb
from training.metrics import (POINTING_TOLERANCE, cam_peak, confusion_matrix, field_centre, grader_intervals,
                              grader_metrics, pointing_game, pointing_hit)
from training.report import (GRADER_CURVES, Curve, Point, confusion_figure, reliability_bins,
                             reliability_figure, roc_figure)
from training.report_html import Page, training_curves

#: Images in the saliency grid, and the width of each (the overlay is drawn at that size).
GRID_IMAGES = 12
THUMB_WIDTH = 360
BATCH = 16

LABELS = {
    "quadratic_weighted_kappa": "quadratic weighted kappa",
    "referable_auc": "referable-DR AUC",
    "referable_sensitivity": "referable-DR sensitivity at the operating point",
    "referable_specificity": "referable-DR specificity at the operating point",
    "accuracy": "accuracy (5 grades)",
    "expected_calibration_error": "expected calibration error (10 bins)",
    "pointing_game_hit_rate": "pointing game hit rate (CAM)",
    "pointing_game_centre_baseline": "pointing game, centre baseline",
    "pointing_game_n": "pointing game images",
    "n": "images",
}


@dataclass(frozen=True)
class GraderOutputs:
    """What the grader did on ``records``: softmax ``probs`` ``(N, 5)``, true ``labels`` ``(N,)``, ``cams``
    ``(N, 5, h, w)`` and each image's preprocessing transform (to map the CAM back onto the photograph)."""

    records: list[FundusRecord]
    probs: np.ndarray
    labels: np.ndarray
    cams: np.ndarray
    transforms: list[FundusTransform]


@dataclass(frozen=True)
class Pointing:
    """The pointing game on one referable image with lesion boxes: the CAM peak of the grade serving shows
    (``None``: a flat map), whether it hit, whether the field centre would have, and the tolerance (original
    pixels)."""

    target: int
    peak: tuple[float, float] | None
    hit: bool
    centre_hit: bool
    tolerance: float


@torch.inference_mode()
def predict_with_cam(model: torch.nn.Module, records: Sequence[FundusRecord], size: int, *,
                     batch_size: int = BATCH, recipe: Recipe = DISC_CROP, views: int = 1) -> GraderOutputs:
    """Run ``WithCam(model, views)`` (the exported graph) over ``records`` in batches on the serving
    preprocessing with the model's ``recipe`` (on the GPU if there is one); a tqdm bar shows progress."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    wrapper = WithCam(model, views).eval().to(device)
    probs, cams, transforms = [], [], []
    bar = tqdm(total=len(records), desc="evaluate", unit="img", leave=False)
    for start in range(0, len(records), batch_size):
        pres = [preprocess(load_rgb(r.image), size, recipe=recipe) for r in records[start:start + batch_size]]
        x = torch.from_numpy(np.stack([p.tensor for p in pres])).to(device)
        logits, cam = wrapper(x)
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        cams.append(cam.float().cpu().numpy())
        transforms += [p.transform for p in pres]
        bar.update(len(pres))
    bar.close()
    labels = np.array([r.grade for r in records], dtype=np.int64)
    return GraderOutputs(list(records), np.concatenate(probs), labels, np.concatenate(cams), transforms)


def play_pointing_game(out: GraderOutputs) -> list[Pointing | None]:
    """Per record, the pointing game of :func:`training.tasks.grader.onnx_evaluate` (the card's protocol) on
    referable images with at least one lesion box; ``None`` for the others."""
    from analysis.pipeline import saliency_target  # the serving rule itself; service imports no torch

    results: list[Pointing | None] = []
    for record, p, cam, t in zip(out.records, out.probs, out.cams, out.transforms):
        if record.grade is None or record.grade < REFERABLE_MIN_GRADE or not record.lesions:
            results.append(None)
            continue
        target = saliency_target(int(np.argmax(p)), p)
        tolerance = POINTING_TOLERANCE * t.size * t.scale  # model pixels -> original pixels
        boxes = [b.box for b in record.lesions]
        peak = cam_peak(cam[target], t)
        results.append(Pointing(target, peak, pointing_hit(peak, boxes, tolerance),
                                pointing_hit(field_centre(t), boxes, tolerance), tolerance))
    return results


def grader_evaluation_metrics(out: GraderOutputs, threshold: float | None,
                              pointing: Sequence[Pointing | None]) -> dict[str, float]:
    """:func:`training.metrics.grader_metrics` at ``threshold``, the bootstrap intervals, and — when any
    record carries lesion annotation — the pointing game."""
    metrics = grader_metrics(out.probs, out.labels, threshold)
    metrics.update(grader_intervals(out.probs, out.labels))
    if any(r.lesions is not None for r in out.records):
        played = [p for p in pointing if p is not None]
        metrics.update(pointing_game([p.hit for p in played], [p.centre_hit for p in played]))
    return metrics


def roc_png(out: GraderOutputs, metrics: dict[str, float], threshold: float | None) -> bytes | None:
    """The referable-DR ROC curve with the operating point, or ``None`` when the data hold one class only."""
    ref = (out.labels >= REFERABLE_MIN_GRADE).astype(np.int64)
    if "referable_auc" not in metrics:
        return None
    p_ref = referable_probability(out.probs).astype(np.float64)
    fpr, tpr, _ = binary_roc(torch.from_numpy(p_ref), torch.from_numpy(ref))
    points = []
    if threshold is not None:
        sens, spec = metrics["referable_sensitivity"], metrics["referable_specificity"]
        points.append(Point(1.0 - spec, sens, f"operating point p >= {threshold:.3f}: sensitivity {sens:.3f}, "
                                              f"specificity {spec:.3f}"))
    curve = Curve(fpr.numpy(), tpr.numpy(), f"referable DR (grade >= 2), AUC {metrics['referable_auc']:.4f}")
    return roc_figure([curve], f"referable DR, n={len(ref)} ({int(ref.sum())} referable)", points)


def saliency_tile(record: FundusRecord, probs: np.ndarray, cam: np.ndarray, transform: FundusTransform,
                  pointing: Pointing | None, *, caption: str, width: int = THUMB_WIDTH) -> bytes:
    """One grid image as PNG bytes: the served overlay (heatmap of the grade serving shows over the
    photograph, the AI caption burned in) at ``width`` pixels, the ground-truth lesion boxes, and for a
    pointing-game image the CAM peak with its tolerance circle (white ring: hit; red: miss)."""
    from analysis.pipeline import saliency_target
    from analysis.render import cam_to_heatmap, draw_lesions, heat_to_u8, overlay

    rgb = load_rgb(record.image)
    h, w = rgb.shape[:2]
    scale = w / width  # original pixels per tile pixel
    size = (width, max(1, round(h / scale)))
    target = pointing.target if pointing is not None else saliency_target(int(np.argmax(probs)), probs)
    heat = cv2.resize(cam_to_heatmap(cam[target], transform), size, interpolation=cv2.INTER_AREA)
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    img = overlay(small, heat_to_u8(np.clip(heat, 0.0, 1.0)), caption=caption)
    draw_lesions(img, [(b.type, 1.0, b.box) for b in record.lesions or ()], scale=scale)
    if pointing is not None and pointing.peak is not None:
        centre = (round(pointing.peak[0] / scale), round(pointing.peak[1] / scale))
        colour = (255, 255, 255) if pointing.hit else (255, 0, 0)
        cv2.drawMarker(img, centre, colour, cv2.MARKER_CROSS, 12, 2)
        cv2.circle(img, centre, max(2, round(pointing.tolerance / scale)), colour, 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def grid_order(out: GraderOutputs, pointing: Sequence[Pointing | None]) -> list[int]:
    """Record indices for the grid: pointing-game images (referable, with lesion boxes) first, then other
    referable images, then the rest; evaluation order within each group."""
    ref = out.labels >= REFERABLE_MIN_GRADE
    return sorted(range(len(out.records)), key=lambda i: (pointing[i] is None, not ref[i], i))


def report(out: GraderOutputs, metrics: dict[str, float], *, cfg: TrainConfig, ck: dict, threshold: float | None,
           pointing: Sequence[Pointing | None], page: Page, grid_images: int = GRID_IMAGES,
           caption: str | None = None) -> Page:
    """Fill ``page`` with the grader's sections (module docstring); returns it. ``caption`` is burned into the
    saliency overlays (default: the synthetic-model caption, :data:`analysis.render.CAPTION`)."""
    from analysis.render import CAPTION

    page.section("Metrics", "Held-out images; 95 % intervals are percentile bootstrap intervals over images "
                            "(1000 resamples, seed 0). The operating point is the checkpoint's, chosen on the "
                            "validation split during training (best Youden index with sensitivity >= "
                            f"{cfg.referable_min_sensitivity}).")
    page.metrics_table(metrics, LABELS)
    page.section("Referable DR: ROC curve")
    roc = roc_png(out, metrics, threshold)
    if roc is None:
        page.paragraph("No ROC curve: the held-out images hold only one referral class.")
    else:
        page.figure(roc, name="roc", caption="ROC of referable DR (grade >= 2, probability = sum of grades 2-4), "
                                             "the operating point circled")
    page.section("Confusion matrix")
    page.figure(confusion_figure(confusion_matrix(out.probs, out.labels), ICDR_LABELS,
                                 f"{cfg.name} {cfg.version}: held-out confusion (n={len(out.labels)})"),
                name="confusion", caption="Rows: true ICDR grade; columns: predicted grade (arg-max); colour is the "
                                          "row-normalised share, the number the count")
    page.section("Calibration")
    conf = out.probs.max(axis=1)
    correct = out.probs.argmax(axis=1) == out.labels
    page.figure(reliability_figure(reliability_bins(conf, correct), metrics["expected_calibration_error"],
                                   "reliability of the predicted grade"),
                name="calibration", caption="Reliability diagram: accuracy per confidence bin against the diagonal "
                                            "of perfect calibration; below, the images per bin")
    training_curves(page, ck, GRADER_CURVES,
                    caption=f"Training loss ({cfg.objective}) and validation metrics per epoch, from the checkpoint")
    page.section("Saliency", "The heatmap serving shows (in-graph CAM of the predicted grade; for a 'No DR' "
                             "prediction, of the most probable DR grade) over the photograph, with the ground-truth "
                             "lesion boxes. Referable images with lesion boxes come first, marked hit or miss: the "
                             "cross is the CAM peak, the ring the pointing-game tolerance "
                             f"({POINTING_TOLERANCE * cfg.input_size:.1f} model pixels).")
    caption = caption or CAPTION
    tiles = []
    chosen = grid_order(out, pointing)[:grid_images]
    for i in tqdm(chosen, desc="saliency grid", unit="img", leave=False):
        p, pt = out.probs[i], pointing[i]
        grade = int(np.argmax(p))
        text = (f"{out.records[i].image.name}: true {ICDR_LABELS[out.labels[i]]}, predicted {ICDR_LABELS[grade]} "
                f"({p[grade]:.2f}); referable p {float(referable_probability(p[None])[0]):.2f}")
        mark = None if pt is None else ("hit" if pt.hit else "miss")
        tiles.append((saliency_tile(out.records[i], p, out.cams[i], out.transforms[i], pt, caption=caption),
                      text, mark))
    page.grid(tiles, name="saliency")
    return page
