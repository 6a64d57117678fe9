"""The Fovea BentoML service: HTTP adapter only; the logic lives in :mod:`analysis.pipeline`.

Run: ``make serve`` (or ``bentoml serve service.service:Fovea``). Models are loaded by tag from the BentoML
model store; the embedded defaults are imported into the store first if it has none.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse

from models.store import exact_dir, get_exact, load_verified
from service.audit import AuditLog
from service.audit_http import AuditMiddleware
from service.auth import AuthMiddleware
from analysis.decode import DecodeLimits
from service.dicomweb import create_service_app as dicomweb_app
from analysis.errors import FoveaError
from service.form_inputs import laterality as _laterality
from service.form_inputs import read_upload, study_uploads
from service.http_errors import ErrorShapeMiddleware
from service.inference import Inference, unpack
from analysis.runtime import WORKERS_ENV, choose_providers, worker_count
from analysis.pipeline import Analyzer
from service.request_guard import RequestGuardMiddleware, RequestLimits
from service.settings import load_settings
from service import log_policy, task_store
from service.webapp import WebPageMiddleware

log = logging.getLogger("fovea")
SETTINGS = load_settings()
# "service": the grader runs in the batchable inference service (bentoml.depends, its own process, adaptive
# batching: what a GPU wants). "local": in this process (on a CPU batching does not lower the cost per image,
# and one hop fewer is faster). "auto" picks "service" when CUDA is available.
INFERENCE_MODE = SETTINGS.inference if SETTINGS.inference != "auto" else (
    "service" if "CUDAExecutionProvider" in choose_providers() else "local")
WORKERS = worker_count(WORKERS_ENV)
AUDIT = AuditLog.from_settings(SETTINGS)  # one append-only record per API call (service/audit.py)
# BentoML keeps each job's whole request (uploads, headers) and response in a SQLite file: sealed, purged.
task_store.install(SETTINGS.job_retention_hours)


# No patient data in the service log: BentoML's validation tracebacks and pydicom's warnings are reduced.
log_policy.install()


@bentoml.service(name="fovea", workers=WORKERS, traffic={"timeout": 300}, http={"port": 3000})
class Fovea:
    """Diabetic-retinopathy screening on fundus photographs (JPEG, PNG, DICOM)."""

    grader_ref = bentoml.models.BentoModel(SETTINGS.grader_tag)
    if INFERENCE_MODE == "service":
        inference = bentoml.depends(Inference)

    def __init__(self) -> None:
        # One upload limit: the decoder enforces the same one the HTTP layer does.
        limits = DecodeLimits(max_frames=SETTINGS.max_frames, max_bytes=SETTINGS.max_upload_bytes)
        common: dict[str, Any] = {"limits": limits, "rules": SETTINGS.quality.rules(),
                                  "referable_threshold": SETTINGS.referable_threshold}
        detector = _installed(SETTINGS.detector_tag)
        quality = _installed(SETTINGS.quality_tag)
        if INFERENCE_MODE == "service":
            # The card is verified here too (the front trusts nothing it did not check); the session lives in
            # the inference service, which can only be asked for its provider once it is up. The detector (if
            # any) runs in this process.
            card, _ = load_verified(exact_dir(str(self.grader_ref.tag)))
            self.analyzer = Analyzer(grader_card=card, run_grader=self._grade_remote,
                                     provider=lambda: str(self.inference.provider()),
                                     detector=Analyzer.load_detector(detector) if detector else None,
                                     quality_model=Analyzer.load_detector(quality) if quality else None, **common)
        else:
            self.analyzer = Analyzer.load(exact_dir(str(self.grader_ref.tag)), workers=WORKERS, detector=detector,
                                          quality=quality, **common)
        if detector is None:
            log.info("no lesion detector %s in the model store: findings carry no lesions", SETTINGS.detector_tag)
        log.info("audit trail: %s", AUDIT.open().describe())  # fail at start, not on the first request
        card = self.analyzer.grader_card
        log.info("loaded %s (sha256 %s…); inference %s", card.tag, card.sha256[:12], INFERENCE_MODE)

    def _grade_remote(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return unpack(np.asarray(self.inference.grade(batch)))

    @bentoml.api(route="/analyze")
    def analyze(self, image: Path, laterality: str = "") -> Any:
        """Screen one fundus photograph (multipart field ``image``: DICOM Part 10, JPEG or PNG; optional
        ``laterality`` L or R when the file does not carry it) and return ``Findings`` JSON: quality, grade,
        referral, saliency. Errors are ``{"error": {"code", "message"}}`` with a 4xx."""
        request_id = uuid.uuid4().hex
        return _respond(request_id, "/analyze", [image], lambda: self.analyzer.analyze(
            read_upload(image, SETTINGS.max_upload_bytes), request_id=request_id,
            laterality=_laterality(laterality)))

    @bentoml.api(route="/analyze_study")
    def analyze_study(self, images: list[Path], laterality: str = "") -> Any:
        """Screen one patient's visit: several ``images`` (repeat the field) and optionally ``laterality``, one
        L/R per image in the same order, comma-separated (``R,L``; omit it when the files carry it). Returns
        per-image findings, a per-eye result and the patient-level referral (the worse eye decides)."""
        request_id = uuid.uuid4().hex
        return _respond(request_id, "/analyze_study", images, lambda: self.analyzer.analyze_study(
            _study(images, laterality), request_id=request_id))

    @bentoml.task(route="/jobs/analyze_study")
    def analyze_study_job(self, images: list[Path], laterality: str = "") -> Any:
        """``/analyze_study`` as a background job: ``POST /jobs/analyze_study/submit`` returns a ``task_id``;
        ``GET .../status?task_id=`` and ``GET .../get?task_id=`` give its state and result. The job runs to the
        end even if the client disconnects."""
        request_id = uuid.uuid4().hex
        return _respond(request_id, "/jobs/analyze_study", images, lambda: self.analyzer.analyze_study(
            _study(images, laterality), request_id=request_id))

    @bentoml.api(route="/info")
    def info(self) -> dict[str, Any]:
        """The models in use (name, version, sha256, provider), their intended use and the limits."""
        card = self.analyzer.grader_card
        op = card.operating_point("referable_dr")
        models = [{"name": card.name, "version": card.version, "sha256": card.sha256, "task": card.task,
                   "provider": self.analyzer.provider_name, "inference": INFERENCE_MODE,
                   "intended_use": card.intended_use}]
        for extra in (self.analyzer.detector, self.analyzer.quality_model):
            if extra is not None:
                d = extra.card
                models.append({"name": d.name, "version": d.version, "sha256": d.sha256, "task": d.task,
                               "provider": extra.provider, "inference": "local", "intended_use": d.intended_use})
        return {
            "models": models,
            "referable_operating_point": {
                "threshold": SETTINGS.referable_threshold if SETTINGS.referable_threshold is not None
                else (op.threshold if op else None),
                "source": "site configuration" if SETTINGS.referable_threshold is not None else "model card"},
            "limits": {"max_upload_bytes": SETTINGS.max_upload_bytes, "max_frames": SETTINGS.max_frames,
                       "max_study_images": SETTINGS.max_study_images},
        }


def _installed(tag: str) -> Path | None:
    """The model-store folder of ``tag``, or ``None`` when the store has no such model."""
    model = get_exact(tag)  # exact versions: BentoML alone would accept a version prefix
    return Path(model.path) if model is not None else None


def _study(images: list[Path], laterality: str) -> list[tuple[bytes, str | None]]:
    return study_uploads(images, laterality, max_images=SETTINGS.max_study_images,
                         max_bytes=SETTINGS.max_upload_bytes)


def _respond(request_id: str, endpoint: str, inputs: list[Path], work: Callable[[], BaseModel]) -> Any:
    """Run ``work``; typed client errors become their JSON 4xx, the result its JSON. Either way the audit
    record is committed before the answer leaves (service/audit.py)."""
    with AUDIT.recording(request_id, endpoint, inputs) as record:
        try:
            result = work()
        except ValidationError as exc:
            # Our own schema rejecting our own output is a server fault: BentoML would answer it with a 400.
            raise RuntimeError(f"request {request_id}: findings failed schema validation") from exc
        except FoveaError as exc:
            # The message describes the file, never the patient: safe to log and return.
            log.info("request %s refused: %s %s", request_id, exc.status, exc.code)
            record.refused(exc)
            return JSONResponse(exc.to_json(), status_code=exc.status)
        record.answered(result)
    return result.model_dump(mode="json")


# DICOMweb (STOW-RS, QIDO-RS, WADO-RS) at /dicomweb (service/dicomweb.py); received instances are analysed in a
# background thread of this process with this service's analyzer, each analysis audited in AUDIT.
Fovea.mount_asgi_app(dicomweb_app(SETTINGS, lambda instance, *, request_id: bentoml.get_current_service()
                                  .analyzer.analyze(instance, request_id=request_id), audit=AUDIT),
                     path="/dicomweb")
# Outermost first. Per-site API keys on every route but the probes and the page (service/auth.py), then an
# audit record for every answer the endpoints did not record themselves, and jobs kept per site (audit_http).
Fovea.add_asgi_middleware(AuthMiddleware, keys_file=SETTINGS.api_keys_file, on_refusal=AUDIT.refusal)
Fovea.add_asgi_middleware(AuditMiddleware, audit=AUDIT)
_MAX_BODY = SETTINGS.max_upload_bytes * SETTINGS.max_study_images + 1024 * 1024
Fovea.add_asgi_middleware(ErrorShapeMiddleware, max_body=_MAX_BODY)
# Security: Content-Type allow-list (no pickle: BentoML RCE CVEs), body cap while streaming, multipart limits
# (service/request_guard.py). Parts: the study's images plus a few form fields.
Fovea.add_asgi_middleware(RequestGuardMiddleware, limits=RequestLimits(
    max_body=_MAX_BODY, max_parts=SETTINGS.max_study_images + 8))
# The reader's web page at / (assets under /ui/); BentoML's own API page moves to /docs (service/webapp.py).
Fovea.add_asgi_middleware(WebPageMiddleware)
