"""Clinical metrics for the DR grader, computed with torchmetrics (not by hand), their bootstrap confidence
intervals, and the pointing game that checks the grader's saliency against lesion ground truth.

Referable DR is ICDR grade ≥ 2 (moderate NPDR or worse); its probability is the sum of the softmax
probabilities of grades 2–4.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_roc,
    binary_specificity,
    binary_recall,
    cohen_kappa,
    multiclass_accuracy,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
)

from models.grading import REFERABLE_MIN_GRADE, is_referable, referable_probability
from models.preprocess import FundusTransform

__all__ = ["POINTING_TOLERANCE", "REFERABLE_MIN_GRADE", "bootstrap_interval", "cam_peak", "choose_operating_point",
           "confusion_matrix", "field_centre", "grader_intervals", "grader_metrics", "pointing_game", "pointing_hit",
           "referable_auc", "referable_probability"]

#: Bootstrap defaults: resamples, confidence level and the fixed seed that makes a card's intervals reproducible.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_LEVEL = 0.95
BOOTSTRAP_SEED = 0

#: Pointing-game tolerance as a fraction of the model-input side: the 15 px at 224 px input of the standard
#: protocol (Zhang et al. 2018, "Top-down Neural Attention by Excitation Backprop", §5.1), which absorbs the
#: coarseness of a stride-32 map; it scales with the input size and then with the crop into original pixels.
POINTING_TOLERANCE = 15 / 224


@dataclass(frozen=True)
class OperatingPointChoice:
    """A referral threshold and what it achieved on the data it was chosen on."""

    threshold: float
    sensitivity: float
    specificity: float


def choose_operating_point(p_ref: np.ndarray, referable: np.ndarray, min_sensitivity: float) -> OperatingPointChoice:
    """Among thresholds reaching ``min_sensitivity``, the one with the best Youden index (sensitivity +
    specificity), ties going to sensitivity. Taking the *best specificity* instead would sit exactly on the
    sensitivity floor, which new data then undercuts; a screening programme would rather keep the margin.
    Falls back to the most sensitive threshold."""
    # float64 in [0, 1]: torchmetrics would apply a sigmoid to everything if one value left that range.
    fpr, tpr, thr = binary_roc(torch.from_numpy(np.asarray(p_ref, dtype=np.float64)), torch.from_numpy(referable).long())
    fpr, tpr, thr = fpr.numpy(), tpr.numpy(), thr.numpy()
    ok = np.flatnonzero(tpr >= min_sensitivity)
    if ok.size:
        youden = tpr[ok] - fpr[ok]
        best = ok[youden >= youden.max() - 1e-12]
        i = int(best[np.argmax(tpr[best])])
    else:
        i = int(np.argmax(tpr))
    # torchmetrics' first threshold is 1.0 (+inf-like); keep the threshold a probability.
    t = float(np.clip(thr[i], 0.0, 1.0))
    return OperatingPointChoice(threshold=t, sensitivity=float(tpr[i]), specificity=float(1.0 - fpr[i]))


def quadratic_weighted_kappa(labels: np.ndarray, predicted: np.ndarray, num_classes: int = 5) -> float:
    """Cohen's kappa with quadratic weights between integer ``labels`` and ``predicted`` grades (torchmetrics)."""
    return float(cohen_kappa(torch.as_tensor(np.asarray(predicted, dtype=np.int64)),
                             torch.as_tensor(np.asarray(labels, dtype=np.int64)),
                             task="multiclass", num_classes=num_classes, weights="quadratic"))


def referable_auc(p_ref: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC of a referable-DR probability (any: a photograph's, a combination's) against ``labels`` >= 2;
    ``None`` unless both classes are present."""
    ref = torch.from_numpy((np.asarray(labels) >= REFERABLE_MIN_GRADE).astype(np.int64))
    if not 0 < int(ref.sum()) < len(ref):
        return None
    # float64 in [0, 1]: torchmetrics would apply a sigmoid to everything if one value left that range.
    return float(binary_auroc(torch.from_numpy(np.asarray(p_ref, dtype=np.float64)), ref))


def grader_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    """Quadratic-weighted kappa, accuracy, calibration error, referable AUC and, given a ``threshold``,
    sensitivity/specificity of referable DR at it."""
    p = torch.from_numpy(np.asarray(probs, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    n_cls = p.shape[1]
    pred = p.argmax(dim=1)
    out = {
        "quadratic_weighted_kappa": quadratic_weighted_kappa(y.numpy(), pred.numpy(), n_cls),
        "accuracy": float(multiclass_accuracy(pred, y, num_classes=n_cls, average="micro")),
        "expected_calibration_error": float(multiclass_calibration_error(p, y, num_classes=n_cls, n_bins=10)),
        "n": float(len(y)),
    }
    ref = (y >= REFERABLE_MIN_GRADE).long()
    p_ref_np = referable_probability(probs)
    auc = referable_auc(p_ref_np, labels)
    if auc is not None:
        out["referable_auc"] = auc
    if threshold is not None:
        # Hard decisions with the serving rule (p >= t); torchmetrics' own thresholding uses p > t.
        decided = torch.from_numpy(np.asarray(is_referable(p_ref_np, threshold), dtype=np.int64))
        out["referable_sensitivity"] = float(binary_recall(decided, ref))
        out["referable_specificity"] = float(binary_specificity(decided, ref))
    return out


def confusion_matrix(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(C, C)`` counts, rows = truth, columns = prediction."""
    p = torch.from_numpy(np.asarray(probs, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return multiclass_confusion_matrix(p.argmax(1), y, num_classes=p.shape[1]).numpy()


def bootstrap_interval(statistic: Callable[[np.ndarray], float], n: int, *, resamples: int = BOOTSTRAP_RESAMPLES,
                       level: float = BOOTSTRAP_LEVEL, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``resamples`` draws of ``n`` indices with
    replacement (``numpy`` generator seeded with ``seed``: the same data give the same interval).

    Resamples where the statistic is undefined (NaN, e.g. an AUC of a draw with one class only) are left out;
    ``(nan, nan)`` when every one is, or when ``n`` is 0."""
    if n <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(resamples)], dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def grader_intervals(probs: np.ndarray, labels: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES,
                     level: float = BOOTSTRAP_LEVEL, seed: int = BOOTSTRAP_SEED) -> dict[str, float]:
    """Percentile bootstrap intervals (images resampled, see :func:`bootstrap_interval`) of quadratic-weighted
    kappa and referable AUC, as ``<metric>_ci<level>_low`` / ``_high`` (e.g. ``referable_auc_ci95_low``).
    The AUC interval is absent when the data hold one referral class only."""
    p = torch.from_numpy(np.asarray(probs, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    pred = p.argmax(dim=1)
    n_cls = p.shape[1]
    ref = (y >= REFERABLE_MIN_GRADE).long()
    p_ref = torch.from_numpy(referable_probability(probs))

    def kappa(idx: np.ndarray) -> float:
        i = torch.from_numpy(idx)
        return float(cohen_kappa(pred[i], y[i], task="multiclass", num_classes=n_cls, weights="quadratic"))

    def auc(idx: np.ndarray) -> float:
        i = torch.from_numpy(idx)
        r = ref[i]
        # torchmetrics computes in float32: clip its ulp overshoot so an interval never leaves [0, 1]
        return float(binary_auroc(p_ref[i], r).clamp(0, 1)) if 0 < int(r.sum()) < len(r) else float("nan")

    tag = f"ci{round(100 * level)}"
    out: dict[str, float] = {}
    kw = {"resamples": resamples, "level": level, "seed": seed}
    out[f"quadratic_weighted_kappa_{tag}_low"], out[f"quadratic_weighted_kappa_{tag}_high"] = \
        bootstrap_interval(kappa, len(y), **kw)
    if 0 < int(ref.sum()) < len(ref):
        out[f"referable_auc_{tag}_low"], out[f"referable_auc_{tag}_high"] = bootstrap_interval(auc, len(y), **kw)
    return out


def cam_peak(cam: np.ndarray, transform: FundusTransform) -> tuple[float, float] | None:
    """Where the heatmap serving draws from ``cam`` (one grade's ``(h, w)`` map) peaks, as ``(x, y)`` original
    pixel indices; ``None`` when that heatmap is flat (serving then shows nothing, so nothing is pointed at).

    Mirrors :func:`analysis.render.cam_to_heatmap`: negative evidence cut, bicubic upsampling to the model
    input, the fundus field (the inscribed circle) only; the maximum pixel is then mapped to the original."""
    size = transform.size
    grid = cv2.resize(np.maximum(np.asarray(cam, dtype=np.float32), 0.0), (size, size), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2.0
    grid = np.where((xx - c) ** 2 + (yy - c) ** 2 <= (size / 2.0) ** 2, grid, -np.inf)
    inside = grid[np.isfinite(grid)]
    if inside.size == 0 or float(inside.max() - inside.min()) <= 1e-12:
        return None
    v, u = np.unravel_index(int(np.argmax(grid)), grid.shape)
    x, y = transform.to_original(np.array([u, v], dtype=np.float64))
    return float(x), float(y)


def pointing_hit(point: tuple[float, float] | None, boxes: Sequence[tuple[float, float, float, float]],
                 tolerance: float) -> bool:
    """Whether ``point`` (``(x, y)`` pixel indices) lies within ``tolerance`` pixels (Euclidean) of any of the
    ``boxes`` (``(x0, y0, x1, y1)``, x1/y1 exclusive, so the box covers indices ``x0 … x1 − 1``). ``None`` (a
    flat map) never hits."""
    if point is None:
        return False
    x, y = point
    for x0, y0, x1, y1 in boxes:
        dx = max(x0 - x, x - (x1 - 1), 0.0)
        dy = max(y0 - y, y - (y1 - 1), 0.0)
        if dx * dx + dy * dy <= tolerance * tolerance:
            return True
    return False


def field_centre(transform: FundusTransform) -> tuple[float, float]:
    """The centre of the fundus field in original pixel indices: the pointing game's *centre baseline*
    (Zhang et al. 2018), which a saliency map has to beat to show it points at lesions, not at the middle."""
    c = (transform.size - 1) / 2.0
    x, y = transform.to_original(np.array([c, c]))
    return float(x), float(y)


def pointing_game(hits: Sequence[bool], centre_hits: Sequence[bool] | None = None, *,
                  resamples: int = BOOTSTRAP_RESAMPLES, level: float = BOOTSTRAP_LEVEL,
                  seed: int = BOOTSTRAP_SEED) -> dict[str, float]:
    """Pointing-game hit rate over images (one hit/miss each) with its percentile bootstrap interval:
    ``pointing_game_hit_rate``, ``pointing_game_n``, ``pointing_game_hit_rate_ci<level>_low/high``, and given
    ``centre_hits`` (the same images' :func:`field_centre` hits) ``pointing_game_centre_baseline``. Only
    ``pointing_game_n`` = 0 for no images."""
    h = np.asarray(hits, dtype=np.float64)
    if h.size == 0:
        return {"pointing_game_n": 0.0}
    tag = f"ci{round(100 * level)}"
    low, high = bootstrap_interval(lambda idx: float(h[idx].mean()), h.size, resamples=resamples, level=level,
                                   seed=seed)
    out = {"pointing_game_hit_rate": float(h.mean()), "pointing_game_n": float(h.size),
           f"pointing_game_hit_rate_{tag}_low": low, f"pointing_game_hit_rate_{tag}_high": high}
    if centre_hits is not None:
        if len(centre_hits) != h.size:
            raise ValueError(f"{len(centre_hits)} centre-baseline results for {h.size} images")
        out["pointing_game_centre_baseline"] = float(np.mean(np.asarray(centre_hits, dtype=np.float64)))
    return out
