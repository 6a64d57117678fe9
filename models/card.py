"""The model card: the contract between training and serving.

A card is a JSON file beside each ONNX model. Training writes it only after the ONNX-vs-PyTorch parity check
passed; serving reads it, checks the ONNX file's sha256 and the preprocessing version *before* creating an
inference session, and takes classes, input size and the operating point from it — never from code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models import preprocess
from models.views import VIEW_COUNTS, VIEWS

#: ICDR severity scale (International Clinical Diabetic Retinopathy), grades 0–4.
ICDR_LABELS = ("No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR", "Proliferative DR")

SYNTHETIC_WARNING = (
    "Trained on synthetic fundus photographs only; not clinically validated. "
    "Not for diagnostic use: retrain on real, labelled data before any clinical use."
)
#: The intended-use statement of a model trained on other (e.g. real, published) data: still research output.
RESEARCH_WARNING = (
    "Research model trained outside a clinical quality system; not clinically validated. "
    "Not for diagnostic use: every result is to be confirmed by a qualified reader."
)


#: How the statement of a model trained on real (published) data begins: serving keys its short statements
#: (overlay caption, DICOM, FHIR) on this phrase (:func:`statement_kind`).
RESEARCH_USE = "Research use, not for clinical use"

#: What an intended-use statement says about the model, for the short statements serving derives from it.
StatementKind = Literal["synthetic", "research", "unstated"]


def intended_use_for(trained_on_synthetic: bool, *, data: str | None = None, terms: str | None = None) -> str:
    """The card's ``intended_use`` for a model trained on synthetic data or not.

    Synthetic: :data:`SYNTHETIC_WARNING`. Otherwise :data:`RESEARCH_USE`, then what it was trained on
    (``data``) and under which terms (``terms``, e.g. a dataset's non-commercial licence) when known, then
    :data:`RESEARCH_WARNING`. Never contains the word "synthetic" unless ``data`` does (which errs on the
    side of the stronger warning).
    """
    if trained_on_synthetic:
        return SYNTHETIC_WARNING
    source = f"Trained on {data}" if data else "Trained on data outside a clinical quality system"
    if terms:
        source += f" under its terms: {terms}"
    return f"{RESEARCH_USE}. {source}. {RESEARCH_WARNING}"


def statement_kind(intended_use: str) -> StatementKind:
    """``"synthetic"`` when the statement says the model was trained on synthetic data, ``"research"`` when it
    is a :func:`intended_use_for` research-use statement, ``"unstated"`` otherwise (a card whose
    statement is neither). The overlay caption and the DICOM/FHIR AI-output statement follow it."""
    text = intended_use.lower()
    if "synthetic" in text:
        return "synthetic"
    return "research" if RESEARCH_USE.lower() in text else "unstated"


class CardError(ValueError):
    """A model file does not match its card, or the card asks for something serving cannot provide."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputSpec(_Frozen):
    """The ONNX input: ``name`` with shape ``[batch, 3, size, size]`` float32, RGB, normalised."""

    name: str = "image"
    size: int = Field(gt=0)
    channels: Literal["RGB"] = "RGB"
    dtype: Literal["float32"] = "float32"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dynamic_batch: bool = True


class PreprocessingSpec(_Frozen):
    """Name and version of :mod:`models.preprocess` the model was trained with."""

    name: str
    version: str


class OperatingPoint(_Frozen):
    """A threshold on a probability, chosen on held-out data, with the metrics it achieved there."""

    name: str
    threshold: float = Field(ge=0.0, le=1.0)
    sensitivity: float
    specificity: float
    chosen_on: str


Cutpoints = tuple[float, float, float, float]


def _ascending_cutpoints(v: Cutpoints) -> Cutpoints:
    if any(b <= a for a, b in zip(v, v[1:], strict=False)) or not (0.0 <= v[0] and v[-1] <= 4.0):
        raise ValueError("cut-points must ascend within [0, 4]")
    return v


class GradeRule(_Frozen):
    """How a grader's probabilities become the grade it shows: :func:`models.grading.grade_from` with
    ``cutpoints`` on the expected grade, chosen on ``chosen_on`` to maximise quadratic weighted kappa. A card
    without a rule shows the most probable grade."""

    cutpoints: Cutpoints
    chosen_on: str

    _ascending = field_validator("cutpoints")(_ascending_cutpoints)


class FellowEyeRule(_Frozen):
    """Graders: an eye's grade in a study that has both eyes of the patient. The expected grades of the eye's
    photograph and of its fellow eye's are combined with ``weight`` (:func:`models.grading.with_fellow_eye`)
    and cut at ``cutpoints``, both chosen on ``chosen_on``. The referral is not combined (it stays the
    photographs': :mod:`analysis.study` says why), and a single photograph's own result never uses the rule."""

    weight: float = Field(gt=0.0, le=0.5)
    cutpoints: Cutpoints
    chosen_on: str

    _ascending = field_validator("cutpoints")(_ascending_cutpoints)


class ScoreThreshold(_Frozen):
    """The lesion detector's score threshold for one lesion class (``name``), chosen on held-out data, with the
    lesion-level sensitivity and false positives per image it gave there (``None`` when that data had no
    lesion of the class)."""

    name: str
    threshold: float = Field(ge=0.0, le=1.0)
    sensitivity: float | None
    fp_per_image: float | None
    chosen_on: str


class TrainingProvenance(_Frozen):
    """Where the weights came from: reproducible by ``command`` at ``code_commit`` on ``data``."""

    data: str
    command: str
    code_commit: str
    config: dict[str, object]
    torch_version: str
    seconds: float | None = None
    #: The terms the training data were published under (e.g. "non-commercial research use only (Kaggle
    #: EyePACS terms)"); the model inherits them. ``None``: not stated (synthetic data, or older cards).
    data_terms: str | None = None


class Quantization(_Frozen):
    """How an int8 model was derived from its fp32 parent, and what the clinical-metric gate measured
    (``python -m training quantize``): both metric sets on the same held-out data, their deltas (int8 - fp32),
    and median batch-1 latency of both on the quantizing machine."""

    method: str
    calibration: str
    parent_version: str
    parent_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    metrics_fp32: dict[str, float]
    metrics_int8: dict[str, float]
    metric_deltas: dict[str, float]
    gate: str
    latency_ms: dict[str, float]
    command: str = ""


class ServedMetrics(_Frozen):
    """A lesion detector's mAP@0.5 measured *as served*: computed from the lesions ``POST /analyze`` returned
    for photographs of one ``size`` (``"WIDTHxHEIGHT"`` of the files sent), with ``thresholds`` saying which
    per-class score thresholds the service applied (the card's, which cut each precision-recall curve where
    serving stops reporting, or a stated floor). ``ap50`` is per class name (classes with lesions in ``data``
    only); ``code_version`` is the commit of the serving code measured; ``command`` reruns it."""

    data: str
    size: str = Field(pattern=r"^[1-9][0-9]*x[1-9][0-9]*$")
    images: int = Field(gt=0)
    thresholds: str
    map_50: float
    ap50: dict[str, float]
    code_version: str
    date: str
    command: str


class ModelCard(_Frozen):
    """A versioned ONNX model and everything needed to use it correctly."""

    schema_version: Literal[1] = 1
    name: str
    version: str
    task: Literal["dr-grading", "lesion-detection", "image-quality"]
    architecture: str
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    opset: int
    input: InputSpec
    outputs: tuple[str, ...]
    preprocessing: PreprocessingSpec
    classes: tuple[str, ...]
    operating_points: tuple[OperatingPoint, ...] = ()
    #: Graders: the test-time views the graph averages (:mod:`models.views`), built in: serving feeds one image.
    test_time_views: tuple[str, ...] = ("identity",)
    #: Graders: how the shown grade is decided (``None``: the most probable grade).
    grade_rule: GradeRule | None = None
    #: Graders: how a study's per-eye result uses the fellow eye (``None``: each eye on its own photographs).
    fellow_eye: FellowEyeRule | None = None
    score_thresholds: tuple[ScoreThreshold, ...] = ()  # lesion detectors: one per class
    metrics: dict[str, float]
    metrics_data: str
    training: TrainingProvenance
    intended_use: str = SYNTHETIC_WARNING
    created: str
    #: Set on an int8 model derived from an fp32 parent (``training.quantize``); ``None`` for trained models.
    quantization: Quantization | None = None
    #: Figures measured through the service (``python -m bench.served_detector``), beside the model-level
    #: ``metrics``; empty on a fresh export.
    served_metrics: tuple[ServedMetrics, ...] = ()

    @field_validator("test_time_views")
    @classmethod
    def _known_views(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) not in VIEW_COUNTS or tuple(v) != VIEWS[:len(v)]:
            raise ValueError(f"test_time_views must be the first 1, 2, 4 or 8 of {', '.join(VIEWS)}")
        return v

    @property
    def tag(self) -> str:
        """The BentoML model-store tag ``name:version``."""
        return f"{self.name}:{self.version}"

    def operating_point(self, name: str) -> OperatingPoint | None:
        """The operating point called ``name``, if the card has one."""
        return next((op for op in self.operating_points if op.name == name), None)

    def save(self, path: Path) -> None:
        """Write the card as indented JSON."""
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        """Read and validate a card; :class:`CardError` if it is malformed."""
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:  # pydantic.ValidationError is a ValueError
            raise CardError(f"model card {path.name} is unreadable or invalid: {exc}") from exc


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_verified(card: ModelCard, model_dir: Path) -> bytes:
    """The model file's bytes, read once and checked against the card (see :func:`verify`)."""
    path = _checked_path(card, model_dir)
    data = path.read_bytes()
    _check_digest(card, hashlib.sha256(data).hexdigest())
    _check_preprocessing(card)
    return data


def verify(card: ModelCard, model_dir: Path) -> Path:
    """Check the model file against its card before anything loads it; return the file's path.

    Raises :class:`CardError` when the file is missing, its sha256 differs from the card's, or the card needs
    a preprocessing this code does not implement.
    """
    path = _checked_path(card, model_dir)
    _check_digest(card, sha256_file(path))
    _check_preprocessing(card)
    return path


def _checked_path(card: ModelCard, model_dir: Path) -> Path:
    path = model_dir / card.file
    # The card's file name is data: keep it inside the model directory (no path traversal).
    if path.resolve().parent != model_dir.resolve():
        raise CardError(f"model card {card.tag} names a file outside its directory: {card.file!r}")
    if not path.is_file():
        raise CardError(f"model {card.tag}: file {card.file} is missing")
    return path


def _check_digest(card: ModelCard, digest: str) -> None:
    if digest != card.sha256:
        raise CardError(f"model {card.tag}: sha256 of {card.file} is {digest}, the card says {card.sha256}")


def _check_preprocessing(card: ModelCard) -> None:
    recipe = preprocess.RECIPES.get(card.preprocessing.name)
    if recipe is None or recipe.version != card.preprocessing.version:
        provides = ", ".join(f"{r.name} v{r.version}" for r in preprocess.RECIPES.values())
        raise CardError(
            f"model {card.tag} needs preprocessing {card.preprocessing.name} v{card.preprocessing.version}; "
            f"this code provides {provides}"
        )
    if (tuple(card.input.mean), tuple(card.input.std)) != (recipe.mean, recipe.std):
        raise CardError(f"model {card.tag} was trained with a normalisation this code does not apply")


def recipe_of(card: ModelCard) -> preprocess.Recipe:
    """The :class:`models.preprocess.Recipe` a verified card's model expects (its input tensors must come
    from ``preprocess(..., recipe=recipe_of(card))``)."""
    _check_preprocessing(card)
    return preprocess.recipe_for(card.preprocessing.name)
