"""The gateway's client of the Fovea service: ``POST /analyze`` with one Part 10 file -> :class:`Findings`.

Failures are classified for the store-and-forward loop:

* :class:`ServiceUnavailable` - the service cannot be reached or says so (connection refused/reset, HTTP 429,
  502, 503, 504), or it refuses the gateway's credentials (HTTP 401, 403: a configuration problem, not the
  instance's): retried with backoff for as long as it takes, never dead-lettered (the instance is fine).
* :class:`Rejected` - the service refused the instance (HTTP 4xx, e.g. 422 unsupported DICOM): permanent,
  dead-lettered at once with the service's error code and message (which by the service's contract carry no
  patient data, :mod:`analysis.errors`).
* :class:`AnalysisFailed` - anything else (HTTP 500, a timeout, an answer that is not ``Findings``): retried,
  counted towards the dead-letter limit.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx
from pydantic import ValidationError

from analysis.findings import Findings

__all__ = ["TOKEN_ENV", "AnalysisFailed", "Rejected", "ServiceClient", "ServiceUnavailable", "auth_headers"]

#: A bearer token for the service, when it requires one (an environment variable: command lines are visible
#: to every user of the machine).
TOKEN_ENV = "FOVEA_GATEWAY_SERVICE_TOKEN"


def auth_headers(environ: Mapping[str, str]) -> dict[str, str]:
    """``Authorization: Bearer <token>`` when :data:`TOKEN_ENV` is set, else nothing."""
    token = environ.get(TOKEN_ENV, "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


class AnalysisFailed(Exception):
    """A failure worth retrying that counts towards the dead-letter limit. The message has no patient data."""


class ServiceUnavailable(AnalysisFailed):
    """The service is not reachable now; retry later without counting."""


class Rejected(AnalysisFailed):
    """The service refused this instance; retrying cannot help."""


class ServiceClient:
    """Sends instances to ``{base_url}/analyze`` (multipart field ``image``). ``timeout_s`` bounds one request
    (an analysis takes ~0.1-1 s on a CPU; the default allows for a cold, busy service)."""

    def __init__(self, base_url: str, *, timeout_s: float = 120.0, headers: dict[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(timeout=timeout_s, headers=headers or {}, transport=transport)

    def close(self) -> None:
        self._client.close()

    def analyze(self, part10: bytes) -> Findings:
        """The service's findings for one DICOM Part 10 file; raises the exceptions of the module docstring."""
        try:
            response = self._client.post(f"{self.base_url}/analyze",
                                         files={"image": ("instance.dcm", part10, "application/dicom")})
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise ServiceUnavailable(f"service unreachable ({type(exc).__name__})") from exc
        except httpx.TimeoutException as exc:
            raise AnalysisFailed(f"service timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise AnalysisFailed(f"HTTP error ({type(exc).__name__})") from exc
        status = response.status_code
        if status in (429, 502, 503, 504):
            raise ServiceUnavailable(f"service unavailable (HTTP {status})")
        if status in (401, 403):
            raise ServiceUnavailable(f"service refused the gateway's credentials (HTTP {status}); check "
                                     f"{TOKEN_ENV}")
        if 400 <= status < 500:
            raise Rejected(f"service refused the instance (HTTP {status}): {_error_text(response)}")
        if status != 200:
            raise AnalysisFailed(f"service failed (HTTP {status})")
        try:
            return Findings.model_validate(response.json())
        except (ValueError, ValidationError) as exc:
            raise AnalysisFailed(f"the service's answer is not Findings ({type(exc).__name__})") from exc


def _error_text(response: httpx.Response) -> str:
    """``code: message`` of a Fovea error body (no patient data by the service's contract), else a generic
    text; bounded in length."""
    try:
        error = response.json()["error"]
        text = f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        text = "no error body"
    return text[:300]
