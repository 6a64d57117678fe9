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
    return grade_at(expected_grade(p), cutpoints)


def grade_at(expected: np.ndarray | float, cutpoints: tuple[float, ...]) -> np.ndarray:
    """The grade an expected grade (or a combination of them, :func:`with_fellow_eye`) falls in: the number of
    ascending ``cutpoints`` at or below it."""
    return np.digitize(expected, np.asarray(cutpoints, dtype=np.float64))


#: Referable probabilities are clipped to this distance from 0 and 1 before their logits are blended (a grader
#: can output 0 or 1 exactly in float32; its logit would be infinite).
_LOGIT_CLIP = 1e-6


def logit(p: np.ndarray | float) -> np.ndarray:
    """``log(p / (1 - p))`` of probabilities clipped to ``[1e-6, 1 - 1e-6]`` (float64)."""
    q = np.clip(np.asarray(p, dtype=np.float64), _LOGIT_CLIP, 1.0 - _LOGIT_CLIP)
    return np.log(q / (1.0 - q))


def with_fellow_eye(own: np.ndarray, fellow: np.ndarray, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """An eye's expected grade and referable probability informed by the patient's other eye.

    ``own`` and ``fellow`` are ``(..., 5)`` class probabilities of a photograph of each eye. Diabetic
    retinopathy is a disease of both eyes, and a photograph's grade is noisy: the fellow eye's evidence is
    added with ``weight`` (0 < ``weight`` ≤ 0.5; the grader card's :class:`models.card.FellowEyeRule`), on the
    expected grade (``(1 - w) E_own + w E_fellow``) and on the referable logit (``sigmoid((1 - w) logit p_own
    + w logit p_fellow)``). At 0.5 both eyes would get the same result; below it the eye's own photograph
    weighs more. Returns ``(expected grade, referable probability)``, float64."""
    if not 0.0 < weight <= 0.5:
        raise ValueError(f"the fellow-eye weight must lie in (0, 0.5], not {weight}")
    expected = (1.0 - weight) * expected_grade(own) + weight * expected_grade(fellow)
    z = (1.0 - weight) * logit(referable_probability(own)) + weight * logit(referable_probability(fellow))
    return expected, 1.0 / (1.0 + np.exp(-z))
