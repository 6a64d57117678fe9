"""The service client classifies every answer: Findings, unavailable (wait), rejected (dead-letter), failed."""

from __future__ import annotations

import httpx
import pytest

from service.gateway.analyse import (
    TOKEN_ENV,
    AnalysisFailed,
    Rejected,
    ServiceClient,
    ServiceUnavailable,
    auth_headers,
)
from tests.service.gateway.test_worker import findings


def client(handler) -> ServiceClient:
    return ServiceClient("http://fovea.test/", transport=httpx.MockTransport(handler))


def test_findings_come_back_from_a_multipart_upload() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=findings(3).model_dump())

    assert client(handler).analyze(b"DICM-bytes").dr_grade.grade == 3
    [req] = seen
    assert req.url.path == "/analyze" and b'name="image"' in req.content and b"DICM-bytes" in req.content


@pytest.mark.parametrize("response, error, text", [
    (httpx.Response(503), ServiceUnavailable, "HTTP 503"),
    (httpx.Response(429), ServiceUnavailable, "HTTP 429"),
    (httpx.Response(401), ServiceUnavailable, "credentials (HTTP 401)"),
    (httpx.Response(422, json={"error": {"code": "unsupported_dicom", "message": "no Pixel Data"}}), Rejected,
     "HTTP 422): unsupported_dicom: no Pixel Data"),
    (httpx.Response(413, text="too big"), Rejected, "no error body"),
    (httpx.Response(500), AnalysisFailed, "HTTP 500"),
    (httpx.Response(200, json={"not": "findings"}), AnalysisFailed, "not Findings"),
])
def test_answers_are_classified(response: httpx.Response, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=None) as info:
        client(lambda request: response).analyze(b"x")
    assert type(info.value) is error and text in str(info.value)


def test_connection_refused_is_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(ServiceUnavailable, match="ConnectError"):
        client(handler).analyze(b"x")


def test_timeout_counts_as_failure() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(AnalysisFailed) as info:
        client(handler).analyze(b"x")
    assert type(info.value) is AnalysisFailed


def test_token_is_sent_as_bearer() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=findings().model_dump())

    assert auth_headers({}) == {}
    ServiceClient("http://fovea.test", headers=auth_headers({TOKEN_ENV: " s3cret "}),
                  transport=httpx.MockTransport(handler)).analyze(b"x")
    assert seen[0].headers["authorization"] == "Bearer s3cret"
