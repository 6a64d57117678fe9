"""service/webapp.py: the reader's page and its assets in front of an ASGI app (here a stand-in that echoes the
path it received, in place of BentoML's router)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.responses import HTMLResponse, JSONResponse
from starlette.testclient import TestClient

from service.webapp import ASSETS, CSP, WEB_DIR, WebAssetsMissing, WebPageMiddleware, load_assets


async def _inner(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """Stands for BentoML's app: answers every request with the path and method it was given."""
    await JSONResponse({"inner_path": scope["path"], "method": scope["method"]})(scope, receive, send)


@pytest.fixture()
def client() -> TestClient:
    return TestClient(WebPageMiddleware(_inner))


def test_root_is_the_page_with_strict_headers(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.content == (WEB_DIR / "index.html").read_bytes()
    assert r.headers["content-security-policy"] == CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in CSP and "img-src 'self' data: blob:" in CSP and "'unsafe-inline'" not in CSP
    assert "frame-ancestors 'none'" in CSP


@pytest.mark.parametrize(("name", "ctype"), [("app.js", "text/javascript; charset=utf-8"),
                                             ("style.css", "text/css; charset=utf-8"),
                                             ("index.html", "text/html; charset=utf-8")])
def test_assets_have_their_content_types(client: TestClient, name: str, ctype: str) -> None:
    r = client.get(f"/ui/{name}")
    assert r.status_code == 200 and r.headers["content-type"] == ctype
    assert r.headers["content-security-policy"] == CSP and r.headers["x-content-type-options"] == "nosniff"
    head = client.head(f"/ui/{name}")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len((WEB_DIR / name).read_bytes())


@pytest.mark.parametrize("path", ["/ui/webapp.py", "/ui/../webapp.py", "/ui/%2e%2e/service.py", "/ui/", "/ui/app.js/x"])
def test_only_listed_assets_are_served(client: TestClient, path: str) -> None:
    # Security: a request path never reaches the file system; anything not in ASSETS is a 404.
    r = client.get(path)
    if r.status_code == 200:  # the client normalised "/ui/../x" to "/x": not ours, passed through
        assert r.json()["inner_path"] != path and not r.json()["inner_path"].startswith("/ui/")
    else:
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_page_urls_accept_get_only(client: TestClient) -> None:
    r = client.post("/", content=b"x")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_docs_is_our_page_and_the_rest_passes_through(client: TestClient) -> None:
    r = client.get("/docs")
    assert r.status_code == 200 and r.content == (WEB_DIR / "docs.html").read_bytes()
    assert r.headers["content-security-policy"] == CSP
    assert client.post("/analyze", content=b"x").json() == {"inner_path": "/analyze", "method": "POST"}
    assert client.get("/docs.json").json()["inner_path"] == "/docs.json"
    assert client.get("/static_content/swagger-ui-bundle.js").json()["inner_path"] == "/static_content/swagger-ui-bundle.js"


def test_html_from_behind_gets_the_security_headers() -> None:
    async def html(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await HTMLResponse("<p>framework page</p>", headers={"X-Frame-Options": "SAMEORIGIN"})(scope, receive, send)

    client = TestClient(WebPageMiddleware(html))
    r = client.get("/some/framework/page")
    assert r.headers["content-security-policy"] == CSP and r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-frame-options"] == "SAMEORIGIN"  # an answer's own header stands
    j = TestClient(WebPageMiddleware(_inner)).get("/healthz")
    assert "content-security-policy" not in j.headers  # JSON is not a page


def test_docs_page_runs_bentomls_installed_swagger_ui_without_tracker_or_validator() -> None:
    html = (WEB_DIR / "docs.html").read_text()
    assert "/static_content/swagger-ui-bundle.js" in html and "googletagmanager" not in html
    js = (WEB_DIR / "docs.js").read_text()
    assert "validatorUrl: null" in js and 'fetch("/docs.json"' in js and "description: DESCRIPTION" in js
    import bentoml._internal.server as bento_server

    static = Path(bento_server.__file__).parent / "static_content"
    for ref in re.findall(r'"/static_content/([^"]+)"', html):
        assert (static / ref).is_file(), ref  # the assets the installed BentoML serves


def test_a_missing_asset_fails_at_start_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html>")
    with pytest.raises(WebAssetsMissing, match=r"app\.js is missing"):
        load_assets(tmp_path)


def test_page_loads_nothing_from_another_origin() -> None:
    """The CSP would block it anyway; this keeps the source honest (no CDN, no web fonts, no inline script)."""
    html = (WEB_DIR / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert refs and all(r.startswith(("/", "#", "data:")) for r in refs), refs
    assert "<script>" not in html and " style=" not in html
    for name in ASSETS:
        text = (WEB_DIR / name).read_text()
        assert not re.search(r"https?://", text), name
        assert "@import" not in text and "innerHTML" not in text, name


def test_page_states_the_served_models_own_intended_use() -> None:
    """The statement a reader sees is the served grader's card's (``/info``'s ``intended_use`` on top, each
    result's ``disclaimer`` on its card), whatever the model was trained on: the page hard-codes no
    training-data statement of its own (a research model trained on real photographs must not be shown as
    synthetic, nor the reverse)."""
    js = (WEB_DIR / "app.js").read_text(encoding="utf-8")
    assert "model.intended_use" in js
    assert "disclaimer(f.disclaimer)" in js and "disclaimer(study.disclaimer)" in js
    for name in ("app.js", "index.html"):
        text = (WEB_DIR / name).read_text(encoding="utf-8").lower()
        assert "synthetic" not in text and "eyepacs" not in text and "research use" not in text, name
