"""Service settings: environment variables, optionally a YAML file (``FOVEA_CONFIG``) for the rest.

Every setting has a safe default, so ``make serve`` needs none. Environment variables win over the file.

=============================  ======================================================  =================
variable / YAML key            meaning                                                 default
=============================  ======================================================  =================
FOVEA_GRADER_TAG grader_tag    model-store tag of the DR grader                        dr-grader:latest
FOVEA_DETECTOR_TAG             model-store tag of the lesion detector (used when the   lesion-detector:latest
  detector_tag                 store has it; otherwise findings carry no lesions)
FOVEA_QUALITY_TAG              model-store tag of the image-quality model (used when   image-quality:latest
  quality_tag                  the store has it; otherwise the classic measures decide)
FOVEA_MAX_UPLOAD_BYTES         largest accepted upload (HTTP and decoder)              64 MiB
FOVEA_MAX_FRAMES max_frames    frames of a multi-frame upload analysed                 8
FOVEA_MAX_STUDY_IMAGES         uploads accepted by one study request                   8
FOVEA_REFERABLE_THRESHOLD      site operating point for referable DR (replaces the     the model card's
  referable_threshold          card's; e.g. a programme that wants higher specificity)
FOVEA_INFERENCE inference      ``service``: grader in the batchable inference service  auto (service with
                               (own process, adaptive batching); ``local``: in the     CUDA, else local)
                               front process
FOVEA_API_KEYS_FILE            per-site API keys (hashed; ``service/auth.py``); unset:  none (auth off,
  api_keys_file                no keys required, loopback only, logged loudly)         loopback only)
FOVEA_DATABASE_URL             SQLAlchemy URL of the audit trail (e.g.                 SQLite at
  database_url                 ``postgresql+psycopg://user@host/db``)                  FOVEA_AUDIT_PATH
FOVEA_AUDIT_PATH audit_path    SQLite file of the audit trail (WAL mode)               $BENTOML_HOME/fovea-audit.sqlite
FOVEA_AUDIT_SALT audit_salt    secret salt of the source-UID hashes in the audit       a random salt kept
                               trail (set it to keep it out of the database)           in the database
FOVEA_JOB_RETENTION_HOURS      hours a background job (its sealed upload and result)   24
  job_retention_hours          stays in BentoML's task store (service/task_store.py)
FOVEA_CONCURRENT_STAGES        run the lesion detector and the quality gate beside the  true
  concurrent_stages            grader (``false``: every stage in turn, e.g. with as
                               many workers as cores; analysis.pipeline.STAGE_THREADS)
``quality:`` (YAML only)       overrides of :class:`analysis.quality.QualityRules`      calibrated rules
=============================  ======================================================  =================
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from analysis.quality import QualityRules

CONFIG_ENV = "FOVEA_CONFIG"
_ENV = {
    "grader_tag": "FOVEA_GRADER_TAG",
    "detector_tag": "FOVEA_DETECTOR_TAG",
    "quality_tag": "FOVEA_QUALITY_TAG",
    "max_upload_bytes": "FOVEA_MAX_UPLOAD_BYTES",
    "max_frames": "FOVEA_MAX_FRAMES",
    "max_study_images": "FOVEA_MAX_STUDY_IMAGES",
    "referable_threshold": "FOVEA_REFERABLE_THRESHOLD",
    "inference": "FOVEA_INFERENCE",
    "api_keys_file": "FOVEA_API_KEYS_FILE",
    "database_url": "FOVEA_DATABASE_URL",
    "audit_path": "FOVEA_AUDIT_PATH",
    "audit_salt": "FOVEA_AUDIT_SALT",
    "job_retention_hours": "FOVEA_JOB_RETENTION_HOURS",
    "concurrent_stages": "FOVEA_CONCURRENT_STAGES",
}


class QualitySettings(BaseModel):
    """Optional overrides of the quality gate's thresholds (names as in :class:`QualityRules`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    coverage_min: float | None = Field(None, gt=0)
    brightness_min: float | None = Field(None, gt=0)
    clipped_max: float | None = Field(None, gt=0)
    sharpness_min: float | None = Field(None, gt=0)
    contrast_min: float | None = Field(None, gt=0)
    illumination_max: float | None = Field(None, gt=0)

    def rules(self) -> QualityRules:
        return QualityRules(**{k: v for k, v in self.model_dump().items() if v is not None})


class Settings(BaseModel):
    """The resolved settings of one service process."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grader_tag: str = "dr-grader:latest"
    detector_tag: str = "lesion-detector:latest"
    quality_tag: str = "image-quality:latest"
    max_upload_bytes: int = Field(64 * 1024 * 1024, gt=0)
    max_frames: int = Field(8, ge=1, le=256)
    max_study_images: int = Field(8, ge=1, le=64)
    referable_threshold: float | None = Field(None, ge=0.0, le=1.0)
    inference: Literal["auto", "local", "service"] = "auto"
    quality: QualitySettings = QualitySettings()
    api_keys_file: Path | None = None
    database_url: str | None = None
    audit_path: Path | None = None
    audit_salt: str | None = Field(None, min_length=16, repr=False)
    job_retention_hours: float = Field(24.0, gt=0, allow_inf_nan=False)
    concurrent_stages: bool = True


class SettingsError(ValueError):
    """The configuration cannot be used; the message names the variable or file and the problem."""


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read ``FOVEA_CONFIG`` (if set) and the ``FOVEA_*`` variables; :class:`SettingsError` when invalid."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = env.get(CONFIG_ENV)
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"{CONFIG_ENV}={path}: cannot read the file ({exc.__class__.__name__})") from exc
        if not isinstance(loaded, dict):
            raise SettingsError(f"{CONFIG_ENV}={path}: expected a mapping of settings at the top level")
        values.update(loaded)
    for key, var in _ENV.items():
        if env.get(var, "").strip():
            values[key] = env[var].strip()
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"invalid Fovea settings: {problems}") from exc
