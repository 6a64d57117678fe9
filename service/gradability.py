"""The gradability decision when an image-quality model is installed: the model and the classic measures
(:mod:`service.quality`) vote, and the classic measures guard what the model has never seen.

Contract of the model (its card, task ``image-quality``): one output ``probabilities`` ``(N, len(classes))``,
``classes`` = ``gradable`` then reason groups named as :data:`service.quality.REASONS`; operating point
``gradable`` (the model alone calls a photograph gradable iff ``p_gradable >= threshold``, chosen on validation
for an ungradable sensitivity of at least 0.90).

Rules (:func:`combine`):

- Each method gives a score with 0.5 at its own boundary: the model's ``p_gradable`` shifted in logit space so
  that its card's threshold maps to 0.5, and the classic gate's score. ``score`` is their mean and the
  photograph is gradable iff ``score >= 0.5``: a photograph one method finds clearly fine and the other finds
  borderline passes; one that either finds clearly bad does not.
- Why a vote and not the model alone: the default model is trained on synthetic photographs only. On 400
  held-out synthetic photographs (145 ungradable; ``data/synthetic-quality-test``) the model alone flags 95.2 %
  of the ungradable ones at 85.5 % specificity, the classic gate 84.1 % / 91.4 %, the vote 93.8 % / 88.6 %
  (score AUC 0.975, 0.927, 0.964) — but the model alone calls scikit-image's real, sharp ``retina.jpg``
  ungradable (p_gradable 0.864 against a threshold of 0.881), which the vote does not (score 0.67). The
  rule was chosen with both facts in view, so those held-out figures are not an unbiased estimate for it.
- A photograph in which the classic measures find no imaged fundus at all (``coverage`` below
  :data:`NO_FIELD_COVERAGE`: black frames, a document, a face) is ungradable with reason ``field`` whatever
  the model says, with score 0.
- ``reasons`` of an ungradable photograph: the model's reason groups whose probability is at least
  :data:`REASON_THRESHOLD` together with the classic gate's reasons, in :data:`service.quality.REASONS` order;
  when there are none, the model's most probable one (an ungradable verdict always says why).
- ``measures`` holds the classic measures, ``p_<class>`` for each model output, and both methods' scores.
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
    model_score = 1.0 / (1.0 + math.exp(-(_logit(probs["gradable"]) - _logit(threshold))))
    no_field = classic.measures.coverage < NO_FIELD_COVERAGE
    score = 0.0 if no_field else (model_score + classic.score) / 2.0
    gradable = score >= 0.5
    reasons: list[str] = []
    if not gradable:
        candidates = {r: probs[r] for r in card.classes[1:]}
        flagged = {r for r, p in candidates.items() if p >= REASON_THRESHOLD} | set(classic.reasons)
        if no_field:
            flagged.add("field")
        reasons = [r for r in REASONS if r in flagged] or [max(candidates, key=candidates.__getitem__)]
    measures = {**classic.measures.as_dict(), **{f"p_{k}": round(v, 5) for k, v in probs.items()},
                "model_score": round(model_score, 4), "classic_score": round(classic.score, 4)}
    return Quality(gradable=gradable, score=round(score, 4), reasons=reasons,
                   method=f"{card.name}:{card.version} with classic measures (mean of both scores; model threshold "
                          f"{threshold:.3f})", measures=measures)
