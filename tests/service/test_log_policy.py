"""The log policy: validation failures logged as one line without the submitted value."""

from __future__ import annotations

import logging

from pydantic import BaseModel, ValidationError

from service.log_policy import ClientErrorLogFilter, install


class _M(BaseModel):
    n: int


def test_validation_tracebacks_become_one_line_without_the_value() -> None:
    try:
        _M(n="PATIENT^MARKER")  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc
    record = logging.LogRecord("bentoml", logging.ERROR, __file__, 1, "Exception on /analyze [%s]", ("POST",),
                               (type(err), err, err.__traceback__))
    assert ClientErrorLogFilter().filter(record)
    assert record.exc_info is None and record.levelno == logging.INFO
    assert "MARKER" not in record.getMessage()


def test_install_is_idempotent() -> None:
    install()
    install()
    filters = logging.getLogger("bentoml._internal.server.http_app").filters
    assert sum(isinstance(f, ClientErrorLogFilter) for f in filters) == 1
    assert logging.getLogger("pydicom").level == logging.ERROR
