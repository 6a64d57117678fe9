"""What the service log may contain: no patient data. :func:`install` is called once when the service class is
built (:func:`service.service.create_service`)."""

from __future__ import annotations

import logging
import warnings

from pydantic import ValidationError


class ClientErrorLogFilter(logging.Filter):
    """BentoML logs a full traceback for every request that fails input validation. Those are client
    errors, and pydantic's traceback quotes the submitted value (which may be patient data), so such records
    are reduced to one line without the exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ValidationError):
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "request rejected: input validation failed (%s)", (record.args or ("?",))[0]
        return True


def install() -> None:
    """Attach the filter to BentoML's HTTP app logger and silence pydicom's warnings (idempotent)."""
    http_log = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, ClientErrorLogFilter) for f in http_log.filters):
        http_log.addFilter(ClientErrorLogFilter())
    # pydicom's warnings quote raw element values of malformed files (possibly a patient's name): keep them out
    # of the service log; decoding problems reach the client as typed errors instead.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
    # python-multipart logs every parse error at WARNING with a byte offset; the client gets the error instead.
    logging.getLogger("python_multipart.multipart").setLevel(logging.ERROR)
