"""The gradability decision when an image-quality model is installed: the model decides, the classic measures
(:mod:`service.quality`) stay in the answer and guard what the model has never seen.

Contract of the model (its card, task ``image-quality``): one output ``probabilities`` ``(N, len(classes))``,
``classes`` = ``gradable`` then reason groups named as :data:`service.quality.REASONS`; operating point
``gradable`` (gradable iff ``p_gradable >= threshold``, chosen on validation for an ungradable sensitivity of at
least 0.90).

Rules (:func:`combine`):

- ``gradable`` is the model's verdict at the card's threshold, except that a photograph in which the classic
  measures find no imaged fundus at all (``coverage`` below :data:`NO_FIELD_COVERAGE`: black frames, a document,
  a face) is ungradable with reason ``field`` whatever the model says — the default model was trained on
  synthetic fundus photographs only, and out-of-distribution inputs must not pass the gate on its word.
- ``reasons`` of an ungradable photograph are the reason groups whose probability is at least
  :data:`REASON_THRESHOLD`; when none reaches it, the most probable one (an ungradable verdict always says why).
- ``score`` is the model's ``p_gradable`` moved so that 0.5 is the card's threshold (a shift in logit space:
  monotone in ``p_gradable``), keeping the :class:`service.findings.Quality` meaning "0.5 = the gate's boundary".
- ``measures`` holds the classic measures and ``p_<class>`` for each model output.
"""

from __future__ import annotations

import math

import numpy as np

from models.card import CardError, ModelCard
from service.findings import Quality
from service.quality import REASONS, QualityVerdict

#: A reason group is reported when its probability reaches this.
REASON_THRESHOLD = 0.5
#: Below this imaged fraction of the field-of-view disc there is no fundus to grade (the classic gate's own
#: threshold for "field" is far higher, 0.85; this one only catches inputs that are not fundus photographs).
NO_FIELD_COVERAGE = 0.25


def check_quality_card(card: ModelCard) -> float:
    """The card's gradable threshold; :class:`CardError` if the card is not an image-quality model whose
    classes are ``gradable`` followed by reasons the service knows."""
    op = card.operating_point("gradable")
    if (card.task != "image-quality" or tuple(card.outputs) != ("probabilities",) or not card.classes
            or card.classes[0] != "gradable" or not set(card.classes[1:]) <= set(REASONS) or op is None):
        raise CardError(f"{card.tag} is not an image-quality model (output 'probabilities', classes 'gradable' "
                        f"then reasons among {', '.join(REASONS)}, operating point 'gradable')")
    return op.threshold


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def combine(probabilities: np.ndarray, card: ModelCard, classic: QualityVerdict) -> Quality:
    """The :class:`Quality` of one photograph from the model's ``probabilities`` (``(len(classes),)``) and the
    classic verdict (see the module docstring for the rules)."""
    threshold = check_quality_card(card)
    probs = {name: float(p) for name, p in zip(card.classes, probabilities, strict=True)}
    p_gradable = probs["gradable"]
    no_field = classic.measures.coverage < NO_FIELD_COVERAGE
    gradable = p_gradable >= threshold and not no_field
    reasons: list[str] = []
    if not gradable:
        candidates = {r: probs[r] for r in card.classes[1:]}
        reasons = [r for r in REASONS if candidates.get(r, 0.0) >= REASON_THRESHOLD]
        if no_field and "field" not in reasons:
            reasons.insert(0, "field")
        if not reasons:
            reasons = [max(candidates, key=candidates.__getitem__)]
    score = 0.0 if no_field else 1.0 / (1.0 + math.exp(-(_logit(p_gradable) - _logit(threshold))))
    measures = {**classic.measures.as_dict(), **{f"p_{k}": round(v, 5) for k, v in probs.items()}}
    return Quality(gradable=gradable, score=round(score, 4), reasons=reasons,
                   method=f"{card.name}:{card.version} (model at threshold {threshold:.3f}; classic measures reported)",
                   measures=measures)
