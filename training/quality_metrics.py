"""Metrics of the image-quality model (torchmetrics) and the choice of its gradability threshold.

Decision rule (the card's ``gradable`` operating point, as serving must apply it): a photograph is gradable iff
``p_gradable >= threshold``; "ungradable" is the positive class of sensitivity and specificity, because a
screening programme must not let an unreadable photograph pass as a reassuring negative.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, binary_recall, binary_specificity

from training.metrics import OperatingPointChoice


def is_gradable(p_gradable: np.ndarray, threshold: float) -> np.ndarray:
    """The decision rule of the module docstring, elementwise."""
    return np.asarray(p_gradable, dtype=np.float64) >= threshold


def choose_gradable_threshold(p_gradable: np.ndarray, gradable: np.ndarray, min_sensitivity: float
                              ) -> OperatingPointChoice:
    """The threshold on ``p_gradable`` whose "ungradable" sensitivity reaches ``min_sensitivity`` with the best
    Youden index (ties to sensitivity), as the grader's referral threshold is chosen; else the most sensitive.
    ``sensitivity``/``specificity`` are those of "ungradable" under :func:`is_gradable` on the given data."""
    p = np.asarray(p_gradable, dtype=np.float64).ravel()
    bad = np.asarray(gradable).ravel() < 0.5
    if p.size == 0 or p.size != bad.size:
        raise ValueError(f"need as many probabilities as labels, at least one; got {p.size} and {bad.size}")
    # Candidates: every distinct probability (those below it are ungradable) and one just above the largest.
    cand = np.unique(np.concatenate([p, [np.nextafter(p.max(), np.inf)]]))
    p_bad, p_good = np.sort(p[bad]), np.sort(p[~bad])
    sens = np.searchsorted(p_bad, cand, side="left") / max(p_bad.size, 1)  # share of ungradable with p < T
    spec = 1.0 - np.searchsorted(p_good, cand, side="left") / max(p_good.size, 1)  # share of gradable with p >= T
    ok = np.flatnonzero(sens >= min_sensitivity - 1e-12)
    if ok.size:
        youden = sens[ok] + spec[ok]
        best = ok[youden >= youden.max() - 1e-12]
        i = int(best[np.argmax(sens[best])])
    else:
        i = int(np.argmax(sens))
    t = float(np.clip(cand[i], 0.0, 1.0))
    decided = ~is_gradable(p, t)
    return OperatingPointChoice(threshold=t, sensitivity=float(decided[bad].mean()) if bad.any() else float("nan"),
                                specificity=float((~decided[~bad]).mean()) if (~bad).any() else float("nan"))


def quality_metrics(probs: np.ndarray, targets: np.ndarray, classes: Sequence[str], threshold: float | None = None
                    ) -> dict[str, float]:
    """``quality_auc`` (ROC AUC of "ungradable" scored by ``1 - p_gradable``), ``auc_<reason>`` per reason
    output (when the data holds both classes), ``n``, ``ungradable`` (count) and, given a ``threshold``,
    ``ungradable_sensitivity``/``ungradable_specificity`` under :func:`is_gradable`.

    ``probs`` and ``targets``: ``(N, len(classes))``, column 0 being ``gradable``."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets) >= 0.5
    if p.ndim != 2 or p.shape != y.shape or p.shape[1] != len(classes) or classes[0] != "gradable":
        raise ValueError(f"probs {p.shape} and targets {y.shape} must be (N, {len(classes)}) with gradable first")
    bad = ~y[:, 0]
    out = {"n": float(len(p)), "ungradable": float(bad.sum())}
    # float64 in [0, 1]: torchmetrics applies a sigmoid to everything if one value leaves that range.
    if 0 < bad.sum() < len(bad):
        out["quality_auc"] = float(binary_auroc(torch.from_numpy(1.0 - p[:, 0]), torch.from_numpy(bad).long()))
    known = np.asarray(targets) >= 0  # a negative target is an output the data does not label
    for j, name in enumerate(classes[1:], start=1):
        k = known[:, j]
        if 0 < y[k, j].sum() < k.sum():
            out[f"auc_{name}"] = float(binary_auroc(torch.from_numpy(p[k, j]), torch.from_numpy(y[k, j]).long()))
    if threshold is not None:
        flagged = torch.from_numpy(~is_gradable(p[:, 0], threshold)).long()
        truth = torch.from_numpy(bad).long()
        out["ungradable_sensitivity"] = float(binary_recall(flagged, truth))
        out["ungradable_specificity"] = float(binary_specificity(flagged, truth))
    return out
