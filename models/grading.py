"""Turning grader outputs into clinical quantities — one definition shared by training, export and serving
(numpy only, no torch)."""

from __future__ import annotations

import numpy as np

#: Referable diabetic retinopathy: ICDR grade 2 (moderate NPDR) or worse.
REFERABLE_MIN_GRADE = 2


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def referable_probability(probs: np.ndarray) -> np.ndarray:
    """P(grade ≥ 2) from ``(..., 5)`` class probabilities, summed in float64 and clipped to [0, 1] (a float32
    sum can exceed 1 by an ulp, and torchmetrics then treats *all* inputs as logits)."""
    p = np.asarray(probs, dtype=np.float64)[..., REFERABLE_MIN_GRADE:].sum(axis=-1)
    return np.clip(p, 0.0, 1.0)


def is_referable(p_ref: np.ndarray | float, threshold: float) -> np.ndarray | bool:
    """The one decision rule, used when choosing, measuring and serving an operating point: ``p ≥ t``."""
    return np.asarray(p_ref) >= threshold
