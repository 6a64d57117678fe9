"""The Fovea BentoML service: HTTP adapter only; the logic lives in :mod:`analysis.pipeline`.

Run: ``make serve`` (or ``bentoml serve service.service:Fovea``). Models are loaded by tag from the BentoML
model store; the embedded defaults are imported into the store first if it has none.

Importing this module defines things and does nothing else. The service class is built by
:func:`create_service` from the settings when ``Fovea`` is first looked up (``bentoml serve`` and
``bentoml build`` do that, in every process they start): only then are the settings read, the embedded
defaults imported into the store, BentoML's job store sealed and the log policy attached.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response

from analysis.decode import DecodeLimits
from analysis.errors import FoveaError
from analysis.pipeline import Analyzer
from analysis.runtime import WORKERS_ENV, choose_providers, worker_count
from models.store import ensure_defaults, exact_dir, get_exact, load_verified
from service import log_policy, task_store
from service.audit import AuditLog
from service.audit_http import AuditMiddleware
from service.auth import AuthMiddleware
from service.dicomweb import create_service_app as dicomweb_app
from service.form_inputs import laterality as _laterality
from service.get_alias import GetAliasMiddleware
from service.form_inputs import read_upload, study_uploads
from service.http_errors import ErrorShapeMiddleware
from service.inference import create_inference, unpack
from service.request_guard import RequestGuardMiddleware, RequestLimits
from service.settings import Settings, load_settings
from service.webapp import WebPageMiddleware

__all__ = ["create_service", "inference_mode"]

log = logging.getLogger("fovea")


def inference_mode(settings: Settings) -> str:
    """Where the grader runs. ``"service"``: in the batchable inference service (``bentoml.depends``, its own
    process, adaptive batching: what a GPU wants). ``"local"``: in this process (on a CPU batching does not
    lower the cost per image, and one hop fewer is faster). ``"auto"`` picks ``"service"`` when CUDA is
    available."""
    if settings.inference != "auto":
        return settings.inference
    return "service" if "CUDAExecutionProvider" in choose_providers() else "local"


def create_service(settings: Settings) -> Any:
    """The ``Fovea`` BentoML service class for ``settings``, with its DICOMweb app and middleware mounted.

    Side effects, in order: the embedded default models are imported into the store if it lacks them (a
    ``BentoModel`` reference is resolved when its class is defined); BentoML's job store is replaced by the
    sealed one with the configured retention (:mod:`service.task_store`); the log policy that keeps patient data
    out of the service log is attached (:mod:`service.log_policy`)."""
    ensure_defaults()
    task_store.install(settings.job_retention_hours)
    log_policy.install()
    mode = inference_mode(settings)
    workers = worker_count(WORKERS_ENV)
    audit = AuditLog.from_settings(settings)  # one append-only record per API call (service/audit.py)
    inference_service = create_inference(settings) if mode == "service" else None

    @bentoml.service(name="fovea", workers=workers, traffic={"timeout": 300}, http={"port": 3000})
    class Fovea:
        """Diabetic-retinopathy screening on fundus photographs (JPEG, PNG, DICOM)."""

        grader_ref = bentoml.models.BentoModel(settings.grader_tag)
        if mode == "service":
            inference = bentoml.depends(inference_service)

        def __init__(self) -> None:
            # One upload limit: the decoder enforces the same one the HTTP layer does.
            limits = DecodeLimits(max_frames=settings.max_frames, max_bytes=settings.max_upload_bytes)
            common: dict[str, Any] = {"limits": limits, "rules": settings.quality.rules(),
                                      "referable_threshold": settings.referable_threshold}
            detector = _installed(settings.detector_tag)
            quality = _installed(settings.quality_tag)
            if mode == "service":
                # The card is verified here too (the front trusts nothing it did not check); the session lives in
                # the inference service, which can only be asked for its provider once it is up. The detector (if
                # any) runs in this process.
                card, _ = load_verified(exact_dir(str(self.grader_ref.tag)))
                self.analyzer = Analyzer(grader_card=card, run_grader=self._grade_remote,
                                         provider=lambda: str(self.inference.provider()),
                                         detector=Analyzer.load_detector(detector) if detector else None,
                                         quality_model=Analyzer.load_detector(quality) if quality else None, **common)
            else:
                self.analyzer = Analyzer.load(exact_dir(str(self.grader_ref.tag)), workers=workers, detector=detector,
                                              quality=quality, **common)
            self.analyzer.concurrent_stages = settings.concurrent_stages
            if detector is None:
                log.info("no lesion detector %s in the model store: findings carry no lesions", settings.detector_tag)
            log.info("audit trail: %s", audit.open().describe())  # fail at start, not on the first request
            card = self.analyzer.grader_card
            log.info("loaded %s (sha256 %s…); inference %s", card.tag, card.sha256[:12], mode)

        def _grade_remote(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            return unpack(np.asarray(self.inference.grade(batch)))

        @bentoml.api(route="/analyze")
        def analyze(self, image: Path, laterality: str = "") -> Any:
            """Screen one fundus photograph (multipart field ``image``: DICOM Part 10, JPEG or PNG; optional
            ``laterality`` L or R when the file does not carry it) and return ``Findings`` JSON: quality, grade,
            referral, saliency. Errors are ``{"error": {"code", "message"}}`` with a 4xx."""
            request_id = uuid.uuid4().hex
            return _respond(audit, request_id, "/analyze", [image], lambda: self.analyzer.analyze(
                read_upload(image, settings.max_upload_bytes), request_id=request_id,
                laterality=_laterality(laterality)))

        @bentoml.api(route="/analyze_study")
        def analyze_study(self, images: list[Path], laterality: str = "") -> Any:
            """Screen one patient's visit: several ``images`` (repeat the field) and optionally ``laterality``, one
            L/R per image in the same order, comma-separated (``R,L``; omit it when the files carry it). Returns
            per-image findings, a per-eye result and the patient-level referral (the worse eye decides)."""
            request_id = uuid.uuid4().hex
            return _respond(audit, request_id, "/analyze_study", images, lambda: self.analyzer.analyze_study(
                _study(settings, images, laterality), request_id=request_id))

        @bentoml.task(route="/jobs/analyze_study")
        def analyze_study_job(self, images: list[Path], laterality: str = "") -> Any:
            """``/analyze_study`` as a background job: ``POST /jobs/analyze_study/submit`` returns a ``task_id``;
            ``GET .../status?task_id=`` and ``GET .../get?task_id=`` give its state and result. The job runs to the
            end even if the client disconnects."""
            request_id = uuid.uuid4().hex
            return _respond(audit, request_id, "/jobs/analyze_study", images, lambda: self.analyzer.analyze_study(
                _study(settings, images, laterality), request_id=request_id), encoded=False)

        @bentoml.api(route="/info")
        def info(self) -> dict[str, Any]:
            """The models in use (name, version, sha256, provider), their intended use and the limits."""
            point = self.analyzer.referable_operating_point()
            return {
                "models": [{"name": card.name, "version": card.version, "sha256": card.sha256, "task": card.task,
                            "provider": provider,
                            "inference": mode if card is self.analyzer.grader_card else "local",
                            "intended_use": card.intended_use} for card, provider in self.analyzer.served()],
                "referable_operating_point": {"threshold": point[0] if point else None,
                                              "source": point[1] if point else "model card"},
                "limits": {"max_upload_bytes": settings.max_upload_bytes, "max_frames": settings.max_frames,
                           "max_study_images": settings.max_study_images},
            }

    # DICOMweb (STOW-RS, QIDO-RS, WADO-RS) at /dicomweb (service/dicomweb.py); received instances are analysed in a
    # background thread of this process with this service's analyzer, each analysis audited.
    Fovea.mount_asgi_app(dicomweb_app(settings, lambda instance, *, request_id: bentoml.get_current_service()
                                      .analyzer.analyze(instance, request_id=request_id), audit=audit),
                         path="/dicomweb")
    # Outermost first. Per-site API keys on every route but the probes and the page (service/auth.py), then an
    # audit record for every answer the endpoints did not record themselves, and jobs kept per site (audit_http).
    Fovea.add_asgi_middleware(AuthMiddleware, keys_file=settings.api_keys_file, on_refusal=audit.refusal)
    Fovea.add_asgi_middleware(AuditMiddleware, audit=audit)
    _MAX_BODY = settings.max_upload_bytes * settings.max_study_images + 1024 * 1024
    Fovea.add_asgi_middleware(ErrorShapeMiddleware, max_body=_MAX_BODY)
    # Security: Content-Type allow-list (no pickle: BentoML RCE CVEs), body cap while streaming, multipart limits
    # (service/request_guard.py). Parts: the study's images plus a few form fields.
    Fovea.add_asgi_middleware(RequestGuardMiddleware, limits=RequestLimits(
        max_body=_MAX_BODY, max_parts=settings.max_study_images + 8))
    # The reader's web page at / (assets under /ui/); BentoML's own API page moves to /docs (service/webapp.py).
    Fovea.add_asgi_middleware(WebPageMiddleware)
    # GET /info as well as BentoML's POST (service/get_alias.py).
    Fovea.add_asgi_middleware(GetAliasMiddleware)
    return Fovea


def _installed(tag: str) -> Path | None:
    """The model-store folder of ``tag``, or ``None`` when the store has no such model."""
    model = get_exact(tag)  # exact versions: BentoML alone would accept a version prefix
    return Path(model.path) if model is not None else None


def _study(settings: Settings, images: list[Path], laterality: str) -> list[tuple[bytes, str | None]]:
    return study_uploads(images, laterality, max_images=settings.max_study_images,
                         max_bytes=settings.max_upload_bytes)


def _respond(audit: AuditLog, request_id: str, endpoint: str, inputs: list[Path], work: Callable[[], BaseModel],
             *, encoded: bool = True) -> Any:
    """Run ``work``; typed client errors become their JSON 4xx, the result its JSON. Either way the audit
    record is committed before the answer leaves (service/audit.py).

    ``encoded``: the JSON is written here by pydantic's own serialiser, on the request's worker thread, and
    returned as the response body. Handing BentoML the dict instead makes it validate the dict as its output
    model and ``json.dumps`` the ~1 MB of base64 PNGs on the event-loop thread, where it holds the one thread
    that serves every connection (measured: docs/performance.md). A background job's result is stored by
    BentoML, so jobs pass ``encoded=False`` and get the dict."""
    with audit.recording(request_id, endpoint, inputs) as record:
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
    if encoded:
        return Response(result.model_dump_json(), media_type="application/json")
    return result.model_dump(mode="json")


@functools.cache
def _service() -> Any:
    return create_service(load_settings())


def __getattr__(name: str) -> Any:
    """``service.service:Fovea``, built from the settings on first use (PEP 562: not at import)."""
    if name == "Fovea":
        return _service()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
