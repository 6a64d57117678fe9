"""The reader's web page, served by the service itself: ``GET /`` is the page, ``GET /ui/<file>`` its assets
(``service/web/``: plain HTML, CSS and JavaScript that call ``/info``, ``/analyze`` and ``/analyze_study``).

BentoML serves its own API page (Swagger UI) at ``/``, and that page loads a third-party tag manager. This ASGI
middleware answers ``/``, :data:`DOCS_PATH` (``/docs``) and ``/ui/…`` before BentoML's router sees them: ``/docs``
is our own page (``service/web/docs.html``) running the Swagger UI scripts BentoML installs (its
``/static_content/``) on the service's OpenAPI document (``/docs.json``), with no tracker and no online validator,
so BentoML's page is never served. Every other request passes through; an HTML answer from behind (an error page
of a framework, a page a future BentoML adds) gets :data:`SECURITY_HEADERS` too.

Security: the page is fetched from nowhere but this origin (the Content-Security-Policy below allows scripts,
styles and network requests to ``'self'`` only, images also from ``data:`` and ``blob:`` URLs — the service's
base64 PNGs and the reader's own file); ``nosniff`` stops a browser from reading an asset as another type;
``frame-ancestors 'none'`` stops another site from framing the page. Only the files named in :data:`ASSETS`
are served (no path from the request ever reaches the file system).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse, Response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WEB_DIR = Path(__file__).resolve().parent / "web"
#: Where BentoML's own API page (Swagger UI) is served instead of ``/``.
DOCS_PATH = "/docs"
#: The URL prefix of the page's assets.
ASSET_PREFIX = "/ui/"
#: The only files served, with their content types.
ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "docs.html": "text/html; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",
    "docs.css": "text/css; charset=utf-8",
}
#: Pages served at a path of their own.
PAGES: dict[str, str] = {"/": "index.html", "/index.html": "index.html", DOCS_PATH: "docs.html"}
#: Content-Security-Policy of the page and its assets: nothing from another origin, no inline script or style.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidate on every load, so a service upgrade never pairs a new page with an old script.
    "Cache-Control": "no-cache",
}


class WebAssetsMissing(RuntimeError):
    """The installed package lacks ``service/web/`` (a build that left out package data)."""


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


def load_assets(web_dir: Path = WEB_DIR) -> dict[str, Asset]:
    """Read every file of :data:`ASSETS` from ``web_dir`` once; raises :class:`WebAssetsMissing` naming the
    missing file (so a broken install fails at start-up, not on a reader's first visit)."""
    assets = {}
    for name, ctype in ASSETS.items():
        path = web_dir / name
        if not path.is_file():
            raise WebAssetsMissing(f"{path} is missing: reinstall the package (service/web/* is package data, "
                                   "and bentofile.yaml must include it)")
        assets[name] = Asset(path.read_bytes(), ctype)
    return assets


class WebPageMiddleware:
    """See the module docstring. Add it with ``Service.add_asgi_middleware(WebPageMiddleware)``."""

    def __init__(self, app: ASGIApp, web_dir: Path = WEB_DIR) -> None:
        self.app = app
        self.assets = load_assets(web_dir)

    def _asset_name(self, path: str) -> str | None:
        """The asset a path asks for, ``""`` for an unknown one under ``/ui/``, ``None`` for not ours."""
        if path in PAGES:
            return PAGES[path]
        if path.startswith(ASSET_PREFIX):
            name = path[len(ASSET_PREFIX):]
            return name if name in self.assets else ""
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        name = self._asset_name(path)
        if name is None:
            await self.app(scope, receive, with_security_headers_on_html(send))
            return
        response: Response
        if scope["method"] not in ("GET", "HEAD"):
            response = JSONResponse({"error": {"code": "method_not_allowed", "message": f"{path} accepts GET only"}},
                                    status_code=405, headers={"Allow": "GET, HEAD"})
        elif not name:
            response = JSONResponse({"error": {"code": "not_found", "message": f"no such page asset: {path}"}},
                                    status_code=404)
        else:
            asset = self.assets[name]
            body = b"" if scope["method"] == "HEAD" else asset.body
            response = Response(body, media_type=asset.content_type, headers=SECURITY_HEADERS)
            if scope["method"] == "HEAD":
                response.headers["content-length"] = str(len(asset.body))
        await response(scope, receive, send)


def with_security_headers_on_html(send: Send) -> Send:
    """``send`` that adds :data:`SECURITY_HEADERS` (those it lacks) to an HTML response."""

    async def guarded(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            names = {k.lower() for k, _ in headers}
            ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
            if ctype.lower().startswith(b"text/html"):
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()
                            if k.lower().encode() not in names]
                message = {**message, "headers": headers}
        await send(message)

    return guarded
