"""The ``Findings`` JSON of ``POST /analyze`` (DESIGN.md names). A field is present only when a real
capability fills it: no placeholder values."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field



class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageInfo(_Out):
    """The analysed image as received (frame 0 of a multi-frame DICOM)."""

    source: Literal["dicom", "jpeg", "png"]
    width: int
    height: int
    laterality: Literal["L", "R"] | None = None
    notes: list[str] = Field(default_factory=list, description="what decoding did, e.g. frames not analysed")
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None


class DrGrade(_Out):
    """ICDR grade with the model's class probabilities (they sum to 1)."""

    grade: int = Field(ge=0, le=4)
    label: str
    probabilities: list[float] = Field(min_length=5, max_length=5)


class ReferableDr(_Out):
    """Referable DR (grade ≥ 2): P(grade ≥ 2) against the model card's operating point."""

    value: bool | None
    probability: float
    operating_point: float


class Saliency(_Out):
    """Class activation map of ``target_grade`` mapped onto the original pixels (``scale`` 1.0)."""

    method: str = "CAM from the exported graph (equal to Grad-CAM for a global-average-pool + linear head)"
    target_grade: int
    scale: float = 1.0
    heatmap_png: str = Field(description="base64 PNG, 8-bit grey, 255 = strongest evidence")
    overlay_png: str = Field(description="base64 PNG, heatmap over the photograph with a caption")


class ModelRef(_Out):
    """Which model produced a result: traceability."""

    name: str
    version: str
    sha256: str
    provider: str


class Findings(_Out):
    """The response of ``POST /analyze``."""

    request_id: str
    disclaimer: str = Field(description="the model card's intended-use statement")
    image: ImageInfo
    dr_grade: DrGrade
    referable_dr: ReferableDr | None = None
    saliency: Saliency
    models: list[ModelRef]
    timing_ms: dict[str, float]
