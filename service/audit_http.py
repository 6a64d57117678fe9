"""ASGI middleware completing the audit trail: one record for *every* request to a protected route, and each
site's background jobs visible to that site only.

The analysis endpoints write their own, detailed record (``service.service._respond`` through
:meth:`service.audit.AuditLog.recording`). Every other answer of a protected route — BentoML's own input
validation errors, 404/405, the 413 of the size check, ``/info``, job status polls — gets a plain record here
(request id, site, path, status, the error code), committed before the response starts; the response then
carries the record's request id in ``X-Request-Id``. Authentication refusals are recorded by
:class:`service.auth.AuthMiddleware`, which sits outside this one. Open routes (probes, the web page) are not
recorded.

Jobs (``/jobs/<name>/…``): the answer to ``submit`` (and ``retry``) is recorded with the new ``task_id`` as its
request id and the submitting site; ``status``, ``get``, ``retry`` and ``cancel`` of a task that another site
(or nobody) submitted get **404** ``not_found``, exactly as an unknown task would — a site learns nothing of
another site's jobs.

Contract: this middleware must sit inside :class:`service.auth.AuthMiddleware` (it reads
:func:`service.auth.current_site`) and outside everything that can answer a request.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any
from urllib.parse import parse_qs

import anyio.to_thread

from service.audit import _PENDING, ERROR_CODES, AuditLog, _Pending
from service.auth import ASGIApp, Message, Receive, Scope, Send, current_site, required_role

_SUBMIT = re.compile(r"^/jobs/[^/]+/(submit|retry)$")
_TASK = re.compile(r"^/jobs/[^/]+/(status|get|retry|cancel)$")


class AuditMiddleware:
    """See the module docstring. ``Service.add_asgi_middleware(AuditMiddleware, audit=AUDIT)``."""

    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or required_role(path) is None:
            await self.app(scope, receive, send)
            return
        site = current_site()
        pending = _Pending()
        token = _PENDING.set(pending)
        try:
            if _TASK.match(path):
                task_id = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("task_id") or [""])[0]
                owner = await anyio.to_thread.run_sync(self.audit.job_site, task_id) if task_id else None
                if task_id and owner != site:
                    await self._answer_not_found(send, site, path)
                    return
            await self.app(scope, receive, self._recording_send(send, site, path, pending))
        finally:
            _PENDING.reset(token)

    def _recording_send(self, send: Send, site: str | None, path: str, pending: _Pending) -> Send:
        submit = bool(_SUBMIT.match(path))
        held: dict[str, Any] = {"start": None, "body": b""}

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                if pending.recorded:
                    await send(message)
                elif submit and message["status"] == 200:
                    held["start"] = message  # the task id is in the body: record once it is complete
                else:
                    rid = await self._record(uuid.uuid4().hex, site, path, message["status"], {})
                    pending.recorded = True
                    await send(_with_request_id(message, rid))
                return
            if message["type"] == "http.response.body" and held["start"] is not None:
                held["body"] += message.get("body", b"")
                if message.get("more_body"):
                    return
                try:
                    task_id = str(json.loads(held["body"])["task_id"])
                except (ValueError, KeyError, TypeError):
                    task_id = uuid.uuid4().hex
                await self._record(task_id, site, path, 200, {"task_id": task_id})
                pending.recorded = True
                start, held["start"] = held["start"], None
                await send(start)
                await send({"type": "http.response.body", "body": held["body"]})
                return
            await send(message)

        return wrapped

    async def _record(self, request_id: str, site: str | None, path: str, status: int,
                      outcome: dict[str, Any]) -> str:
        if status >= 400:
            outcome = {"error": ERROR_CODES.get(status, "error")}
        await anyio.to_thread.run_sync(lambda: self.audit.append(
            request_id=request_id, site=site, endpoint=path[:128], status=status, outcome=outcome))
        return request_id

    async def _answer_not_found(self, send: Send, site: str | None, path: str) -> None:
        rid = await self._record(uuid.uuid4().hex, site, path, 404, {})
        body = json.dumps({"error": {"code": "not_found", "message": "no such task for this site"}}).encode()
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"x-request-id", rid.encode())]})
        await send({"type": "http.response.body", "body": body})


def _with_request_id(message: Message, request_id: str) -> Message:
    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
    return {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
