"""The gradability decision when an image-quality model is installed: the model and the classic measures
(:mod:`analysis.quality`) vote, and the classic measures guard what the model has never seen.

Contract of the model (its card, task ``image-quality``): one output ``probabilities`` ``(N, len(classes))``,
``classes`` = ``gradable`` then reason groups named as :data:`analysis.quality.REASONS`; operating point
``gradable`` (the model alone calls a photograph gradable iff ``p_gradable >= threshold``, chosen on validation;
the card says how).

Rules (:func:`combine`):

- Each method gives a score with 0.5 at its own boundary: the model's ``p_gradable`` shifted in logit space so
  that its card's threshold maps to 0.5, and the classic gate's score.
- The classic measures decide alone when they fail (any measure on the wrong side of its threshold) and when
  they pass clearly (classic score at least :data:`CLASSIC_CLEAR`); in between, where they are borderline, the
  model decides. Why not a plain mean of the two scores: the model has seen synthetic photographs and
  256-px enhanced real copies, never a raw camera photograph (dark surround, vignetting, colour casts); on
  those it can be confidently wrong, and a mean let it fail every raw photograph. The classic measures are
  ratios that do not depend on resolution, illumination gradients or colour casts; a photograph they find
  clearly fine is gradable whatever the model says, and the model catches what they only half see (mild
  defocus, compression, haze at the edge of their thresholds). ``score`` = ``min(classic, max(model,
  guard))`` where ``guard`` maps the classic score onto [0, 1] with :data:`CLASSIC_CLEAR` at 0.5, so
  ``score >= 0.5`` is exactly the rule above and the score still ranks photographs.
- The model vetoes a clear classic pass for the reasons in :data:`MODEL_VETO` when it is that sure of one of
  them (``score`` then at most the model's): unevenly lit and underexposed photographs whose dark part is not
  dark enough for the classic ``uneven``/``brightness`` measures. These are the reasons it is not confidently
  wrong about on real photographs; ``haze`` is not among them, because raw camera photographs look hazy to a
  model that has never seen one (docs/quality-gate.md has the distributions).
- A photograph in which the classic measures find no imaged fundus at all (``coverage`` below
  :data:`NO_FIELD_COVERAGE`: black frames, a document, a face) is ungradable with reason ``field`` whatever
  the model says, with score 0.
- ``reasons`` of an ungradable photograph: the model's reason groups whose probability is at least
  :data:`REASON_THRESHOLD` together with the classic gate's reasons, in :data:`analysis.quality.REASONS` order;
  when there are none, the model's most probable one (an ungradable verdict always says why).
- ``measures`` holds the classic measures, ``p_<class>`` for each model output, and both methods' scores.
"""

from __future__ import annotations

import math

import numpy as np

from models.card import CardError, ModelCard
from analysis.findings import Quality
from analysis.quality import REASONS, QualityVerdict

#: A classic score at least this (every measure at least ~25 % clear of its threshold) is gradable whatever the
#: model says, unless the model vetoes it (see the module docstring).
CLASSIC_CLEAR = 0.88
#: Reason -> the model probability at which that reason makes the photograph ungradable even where the classic
#: measures pass it clearly.
MODEL_VETO: dict[str, float] = {"underexposed": 0.8, "uneven": 0.8}
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
    c = classic.score
    guard = 0.5 * c / CLASSIC_CLEAR if c < CLASSIC_CLEAR else 0.5 + 0.5 * (c - CLASSIC_CLEAR) / (1.0 - CLASSIC_CLEAR)
    score = 0.0 if no_field else min(c, max(model_score, guard))
    if any(probs.get(reason, 0.0) >= at for reason, at in MODEL_VETO.items()):
        score = min(score, model_score)
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
                   method=f"{card.name}:{card.version} with classic measures (the model decides where the classic "
                          f"score is in [0.5, {CLASSIC_CLEAR}) or it is sure of {'/'.join(MODEL_VETO)}; model threshold "
                          f"{threshold:.3f})", measures=measures)
