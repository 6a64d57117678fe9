"""``GET`` for the read-only routes BentoML can only declare as ``POST`` (a ``@bentoml.api`` is a POST route).

``GET /info`` is what a person, a browser or a monitoring probe tries first; BentoML clients keep calling
``POST /info``. The alias hands the inner app the same request as ``POST`` with an empty JSON body, so both
methods get the same answer from the same code (and pass the same authentication and audit, which sit outside).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Routes that take no input and change nothing.
READ_ONLY_ROUTES = frozenset({"/info"})
_BODY = b"{}"


class GetAliasMiddleware:
    """``GET``/``HEAD`` on :data:`READ_ONLY_ROUTES` -> ``POST`` with body ``{}``. Add it with
    ``Service.add_asgi_middleware(GetAliasMiddleware)``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in READ_ONLY_ROUTES or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())]
        sent = False

        async def body() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # the client's disconnect, if it comes
            sent = True
            return {"type": "http.request", "body": _BODY, "more_body": False}

        async def no_body_for_head(message: Message) -> None:
            if head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "POST", "headers": headers}, body, no_body_for_head)
