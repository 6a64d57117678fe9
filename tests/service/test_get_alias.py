"""service/get_alias.py: GET on a read-only route reaches the app as the POST BentoML declares."""

from __future__ import annotations

import json

from starlette.responses import JSONResponse
from starlette.testclient import TestClient

from service.get_alias import GetAliasMiddleware


async def _echo(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """Stands for BentoML's app: answers with the method, content type and body it received."""
    message = await receive()
    ctype = dict(scope["headers"]).get(b"content-type", b"").decode()
    await JSONResponse({"method": scope["method"], "ctype": ctype, "body": message["body"].decode()})(
        scope, receive, send)


def test_get_info_is_the_post_with_an_empty_json_body() -> None:
    client = TestClient(GetAliasMiddleware(_echo))
    assert client.get("/info").json() == {"method": "POST", "ctype": "application/json", "body": "{}"}
    assert client.post("/info", content=b'{"x": 1}', headers={"content-type": "application/json"}).json() == {
        "method": "POST", "ctype": "application/json", "body": '{"x": 1}'}  # POST untouched
    head = client.head("/info")
    assert head.status_code == 200 and head.content == b""


def test_other_routes_and_methods_pass_through() -> None:
    client = TestClient(GetAliasMiddleware(_echo))
    assert client.get("/analyze").json()["method"] == "GET"  # not read-only: BentoML answers 405 itself
    assert json.loads(client.put("/info", content=b"").content)["method"] == "PUT"
