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


def expected_grade(probs: np.ndarray) -> np.ndarray:
    """E[grade] = sum_k k * p_k from ``(..., 5)`` class probabilities (float64)."""
    p = np.asarray(probs, dtype=np.float64)
    return (p * np.arange(p.shape[-1])).sum(axis=-1)


def grade_from(probs: np.ndarray, cutpoints: tuple[float, ...] | None = None) -> np.ndarray:
    """The ICDR grade shown for ``(..., 5)`` class probabilities: with ``cutpoints`` (ascending, one fewer than
    the grades) the number of cut-points at or below the expected grade, an ordinal decision that uses the
    whole distribution; without them the most probable grade."""
    p = np.asarray(probs)
    if cutpoints is None:
        return np.argmax(p, axis=-1)
    return np.digitize(expected_grade(p), np.asarray(cutpoints, dtype=np.float64))
