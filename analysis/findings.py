"""The ``Findings`` JSON of ``POST /analyze`` (DESIGN.md names). Only a real capability fills a field: what
was not assessed is ``null`` (e.g. ``lesions`` without a detector), never a placeholder value; an empty list
means assessed and nothing found."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field



class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageInfo(_Out):
    """The analysed image as received (one frame of a multi-frame DICOM: ``frame`` of ``frames``)."""

    source: Literal["dicom", "jpeg", "png"]
    width: int
    height: int
    laterality: Literal["L", "R"] | None = None
    laterality_source: Literal["dicom", "form"] | None = None
    frame: int = Field(0, ge=0, description="0-based frame index within the upload")
    frames: int = Field(1, ge=1, description="frames analysed from the upload")
    notes: list[str] = Field(default_factory=list, description="what decoding did, e.g. frames not analysed")
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None


class Quality(_Out):
    """Is the photograph gradable? ``score`` ranks quality in [0, 1] (0.5 = the gate's boundary); ``reasons``
    name what makes it ungradable (``field``, ``underexposed``, ``overexposed``, ``blur``, ``haze``, ``uneven``)."""

    gradable: bool
    score: float = Field(ge=0.0, le=1.0)
    reasons: list[str] = Field(default_factory=list)
    method: str = Field(description="what decided: the classic measures, or a model's name:version")
    measures: dict[str, float] = Field(default_factory=dict)


class DrGrade(_Out):
    """ICDR grade with the model's class probabilities (they sum to 1)."""

    grade: int = Field(ge=0, le=4)
    label: str
    probabilities: list[float] = Field(min_length=5, max_length=5)


class ReferableDr(_Out):
    """Referable DR (grade ≥ 2): P(grade ≥ 2) against an operating point. ``value`` is ``null`` when the
    photograph is ungradable ("insufficient quality"): ``reason`` then says why and what to do."""

    value: bool | None
    probability: float
    operating_point: float
    operating_point_source: Literal["model card", "site configuration"] = "model card"
    reason: str | None = None


class LesionFinding(_Out):
    """One lesion found by the detector: ``box`` ``[x0, y0, x1, y1]`` in original pixels (edges)."""

    type: Literal["microaneurysm", "haemorrhage", "hard_exudate", "cotton_wool_spot"]
    score: float = Field(ge=0.0, le=1.0)
    box: list[float] = Field(min_length=4, max_length=4)


class Saliency(_Out):
    """Class activation map of ``target_grade`` on the photograph's pixel grid, at ``scale`` original pixels per
    PNG pixel (1.0 = original size; a large photo is analysed, and its maps drawn, at reduced resolution:
    PNG pixel ``(u, v)`` covers original pixels ``[u*scale, (u+1)*scale)``). The maps are at most
    ``analysis.render.RENDER_MAX_SIDE`` (1024) pixels on their long side."""

    method: str = "CAM from the exported graph (equal to Grad-CAM for a global-average-pool + linear head)"
    target_grade: int
    scale: float = Field(1.0, ge=1.0)
    evidence: bool = Field(True, description="false when the heatmap is blank: the CAM of target_grade is "
                                             "nowhere positive in the fundus field (or, in theory, exactly flat "
                                             "there), i.e. the grader found no region of evidence for that grade")
    heatmap_png: str = Field(description="base64 PNG, 8-bit grey, 255 = strongest evidence")
    overlay_png: str = Field(description="base64 PNG, heatmap over the photograph with a caption")


class ModelRef(_Out):
    """Which model produced a result: traceability."""

    name: str
    version: str
    sha256: str
    provider: str
    task: Literal["dr-grading", "lesion-detection", "image-quality"] | None = Field(
        None, description="what the model did for this result (its card's task)")


def model_for(models: list[ModelRef], task: str) -> ModelRef | None:
    """The model of ``task`` among a result's ``models`` (``None`` when no such model ran). Results written
    before ``ModelRef.task`` existed list the grader first and the detector second."""
    for m in models:
        if m.task == task:
            return m
    if all(m.task is None for m in models):
        legacy = {"dr-grading": 0, "lesion-detection": 1}.get(task)
        if legacy is not None and legacy < len(models):
            return models[legacy]
    return None


class Findings(_Out):
    """The response of ``POST /analyze``: one image (frame 0 of a multi-frame upload, whose other frames are
    in ``additional_frames``, each a complete ``Findings``)."""

    request_id: str
    disclaimer: str = Field(description="the model card's intended-use statement")
    image: ImageInfo
    quality: Quality
    dr_grade: DrGrade
    referable_dr: ReferableDr | None = None
    lesions: list[LesionFinding] | None = Field(
        None, description="present when a lesion detector is loaded (its card's per-class score thresholds)")
    saliency: Saliency
    models: list[ModelRef]
    timing_ms: dict[str, float]
    additional_frames: list[Findings] = Field(default_factory=list)


class EyeResult(_Out):
    """One eye over a study: the worst gradable image decides (grade and referral); ``referable`` is ``null``
    when no image of the eye is gradable. When both eyes are gradable and the grader's card has a fellow-eye
    rule, the other eye's worst photograph informs the grade (``fellow_eye_weight``; :mod:`analysis.study`)."""

    laterality: Literal["L", "R"]
    images: list[int] = Field(description="indices into StudyFindings.images")
    gradable: bool
    dr_grade: int | None = Field(None, ge=0, le=4)
    label: str | None = None
    referable: bool | None = None
    referable_probability: float | None = None
    photograph_grade: int | None = Field(None, ge=0, le=4, description=(
        "the grade of the eye's worst gradable photograph on its own (dr_grade may differ when the fellow eye "
        "informed it)"))
    fellow_eye_weight: float | None = Field(None, gt=0.0, le=0.5, description=(
        "the weight of the other eye's worst photograph in dr_grade (the grader card's fellow-eye rule; an eye "
        "its own photographs do not refer keeps a grade below 2); null when the eye's own photographs alone "
        "graded it. The referral is always the eye's own photographs'"))


class PatientResult(_Out):
    """The patient-level screening outcome: refer if either eye is referable (the worse eye decides);
    ``null`` when no eye is referable but an eye could not be graded (re-photograph or refer, per the
    programme's protocol for ungradable photographs)."""

    referable: bool | None
    decided_by: Literal["L", "R", "unknown"] | None = None
    reason: str


class StudyFindings(_Out):
    """The response of ``POST /analyze_study``: per image, per eye and per patient."""

    request_id: str
    disclaimer: str
    images: list[Findings]
    eyes: list[EyeResult]
    patient: PatientResult
    notes: list[str] = Field(default_factory=list)
    timing_ms: dict[str, float]
