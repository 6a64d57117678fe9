"""The Fovea BentoML service: HTTP adapter only; the logic lives in :mod:`service.pipeline`.

Run: ``make serve`` (or ``bentoml serve service.service:Fovea``). Models are loaded by tag from the BentoML
model store; the embedded defaults are imported into the store first if it has none.
"""

from __future__ import annotations

import logging
import os
import warnings
import uuid
from pathlib import Path
from typing import Any

import bentoml
from pydantic import ValidationError
from starlette.responses import JSONResponse

from models.store import ensure_defaults
from service.decode import DecodeLimits
from service.errors import FoveaError, PayloadTooLarge
from service.http_errors import ErrorShapeMiddleware
from service.pipeline import Analyzer

log = logging.getLogger("fovea")

GRADER_TAG = os.environ.get("FOVEA_GRADER_TAG", "dr-grader:latest")
MAX_UPLOAD_BYTES = int(os.environ.get("FOVEA_MAX_UPLOAD_BYTES", str(64 * 1024 * 1024)))

class _ClientErrorLogFilter(logging.Filter):
    """BentoML logs a full traceback for every request that fails input validation. Those are client
    errors, and pydantic's traceback quotes the submitted value (which may be patient data), so such records
    are reduced to one line without the exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        if record.exc_info and isinstance(record.exc_info[1], ValidationError):
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "request rejected: input validation failed (%s)", (record.args or ("?",))[0]
        return True


logging.getLogger("bentoml._internal.server.http_app").addFilter(_ClientErrorLogFilter())
# pydicom's warnings quote raw element values of malformed files (possibly a patient's name): keep them out of
# the service log; decoding problems reach the client as typed errors instead.
logging.getLogger("pydicom").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")

# DESIGN.md: if the store has none, import the embedded defaults before the service resolves its models.
ensure_defaults()


@bentoml.service(name="fovea", traffic={"timeout": 120}, http={"port": 3000})
class Fovea:
    """Diabetic-retinopathy screening on fundus photographs (JPEG, PNG, DICOM)."""

    grader_ref = bentoml.models.BentoModel(GRADER_TAG)

    def __init__(self) -> None:
        # One upload limit: the decoder enforces the same one the HTTP layer does.
        limits = DecodeLimits(max_frames=1, max_bytes=MAX_UPLOAD_BYTES)
        self.analyzer = Analyzer.load(Path(self.grader_ref.path), limits=limits)
        card = self.analyzer.grader_card
        log.info("loaded %s (sha256 %s…) on %s", card.tag, card.sha256[:12], self.analyzer.grader.provider)

    @bentoml.api(route="/analyze")
    def analyze(self, image: Path) -> Any:
        """Grade one fundus photograph (multipart field ``image``: DICOM Part 10, JPEG or PNG) and return
        ``Findings`` JSON with the saliency map; errors are ``{"error": {"code", "message"}}`` with a 4xx."""
        request_id = uuid.uuid4().hex
        try:
            size = image.stat().st_size
            if size > MAX_UPLOAD_BYTES:
                raise PayloadTooLarge(f"the file is {size} bytes; the limit is {MAX_UPLOAD_BYTES} bytes")
            findings = self.analyzer.analyze(image.read_bytes(), request_id=request_id)
        except ValidationError as exc:
            # Our own schema rejecting our own output is a server fault: BentoML would answer it with a 400.
            raise RuntimeError(f"request {request_id}: findings failed schema validation") from exc
        except FoveaError as exc:
            # The message describes the file, never the patient: safe to log and return.
            log.info("request %s refused: %s %s", request_id, exc.status, exc.code)
            return JSONResponse(exc.to_json(), status_code=exc.status)
        return findings.model_dump(mode="json")


Fovea.add_asgi_middleware(ErrorShapeMiddleware, max_body=MAX_UPLOAD_BYTES + 1024 * 1024)
