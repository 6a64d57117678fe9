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

REFERABLE_MIN_GRADE = 2


def referable_probability(probs: np.ndarray) -> np.ndarray:
    """P(grade ≥ 2) from ``(N, 5)`` class probabilities."""
    return probs[:, REFERABLE_MIN_GRADE:].sum(axis=1)


@dataclass(frozen=True)
class OperatingPointChoice:
    """A referral threshold and what it achieved on the data it was chosen on."""

    threshold: float
    sensitivity: float
    specificity: float


def choose_operating_point(p_ref: np.ndarray, referable: np.ndarray, min_sensitivity: float) -> OperatingPointChoice:
    """The threshold with the best specificity among those reaching ``min_sensitivity`` (screening favours
    sensitivity, as the cleared products report). Falls back to the most sensitive threshold."""
    fpr, tpr, thr = binary_roc(torch.from_numpy(p_ref).float(), torch.from_numpy(referable).long())
    fpr, tpr, thr = fpr.numpy(), tpr.numpy(), thr.numpy()
    ok = np.flatnonzero(tpr >= min_sensitivity)
    i = int(ok[np.argmin(fpr[ok])]) if ok.size else int(np.argmax(tpr))
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
    p_ref = torch.from_numpy(referable_probability(np.asarray(probs, dtype=np.float32)))
    if 0 < int(ref.sum()) < len(ref):  # AUC needs both classes
        out["referable_auc"] = float(binary_auroc(p_ref, ref))
    if threshold is not None:
        out["referable_sensitivity"] = float(binary_recall(p_ref, ref, threshold=threshold))
        out["referable_specificity"] = float(binary_specificity(p_ref, ref, threshold=threshold))
    return out


def confusion_matrix(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(C, C)`` counts, rows = truth, columns = prediction."""
    p = torch.from_numpy(np.asarray(probs, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return multiclass_confusion_matrix(p.argmax(1), y, num_classes=p.shape[1]).numpy()
