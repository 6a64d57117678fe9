"""Clinical metrics for the DR grader, computed with torchmetrics (not by hand).

Referable DR is ICDR grade ≥ 2 (moderate NPDR or worse); its probability is the sum of the softmax
probabilities of grades 2–4.
"""

from __future__ import annotations

from dataclasses import dataclass

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

__all__ = ["REFERABLE_MIN_GRADE", "choose_operating_point", "confusion_matrix", "grader_metrics",
           "referable_probability"]


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


def grader_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    """Quadratic-weighted kappa, accuracy, calibration error, referable AUC and, given a ``threshold``,
    sensitivity/specificity of referable DR at it."""
    p = torch.from_numpy(np.asarray(probs, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    n_cls = p.shape[1]
    pred = p.argmax(dim=1)
    out = {
        "quadratic_weighted_kappa": float(cohen_kappa(pred, y, task="multiclass", num_classes=n_cls, weights="quadratic")),
        "accuracy": float(multiclass_accuracy(pred, y, num_classes=n_cls, average="micro")),
        "expected_calibration_error": float(multiclass_calibration_error(p, y, num_classes=n_cls, n_bins=10)),
        "n": float(len(y)),
    }
    ref = (y >= REFERABLE_MIN_GRADE).long()
    p_ref_np = referable_probability(probs)
    if 0 < int(ref.sum()) < len(ref):  # AUC needs both classes
        out["referable_auc"] = float(binary_auroc(torch.from_numpy(p_ref_np), ref))
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
