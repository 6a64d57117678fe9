"""service.audit_http: every protected request leaves one record (before its response), jobs stay per site."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.responses import JSONResponse
from starlette.testclient import TestClient

from service.audit import AuditLog, mark_recorded
from service.audit_http import AuditMiddleware
from service.auth import AuthMiddleware, KeyEntry, KeyStore, Site, hash_key, new_key, save_keys

calls: list[str] = []


async def _inner(scope, receive, send) -> None:  # noqa: ANN001 (a stand-in for BentoML's routes)
    path = scope["path"]
    calls.append(path)
    if path == "/analyze":  # an endpoint that writes its own record (service._respond)
        mark_recorded()
        response = JSONResponse({"request_id": "own"})
    elif path.endswith("/submit"):
        response = JSONResponse({"task_id": f"task-{len(calls)}", "status": "in_progress"})
    elif path == "/missing-field":
        response = JSONResponse({"error": {"code": "missing_field", "message": "x"}}, status_code=400)
    else:
        response = JSONResponse({"ok": True})
    await response(scope, receive, send)


@pytest.fixture()
def stack(tmp_path: Path) -> tuple[TestClient, AuditLog, dict[str, dict[str, str]]]:
    a, a_id = new_key()
    b, b_id = new_key()
    keys = tmp_path / "keys.yaml"
    save_keys(keys, KeyStore({"a": Site("a", frozenset({"analyze"}), (KeyEntry(hash_key(a), a_id),)),
                              "b": Site("b", frozenset({"analyze"}), (KeyEntry(hash_key(b), b_id),))}))
    audit = AuditLog(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    app = AuthMiddleware(AuditMiddleware(_inner, audit=audit), keys_file=keys, on_refusal=audit.refusal)
    calls.clear()
    return TestClient(app), audit, {"a": {"X-API-Key": a}, "b": {"X-API-Key": b}}


def test_every_protected_request_gets_one_record(stack) -> None:  # noqa: ANN001
    client, audit, hdr = stack
    info = client.post("/info", headers=hdr["a"])
    bad = client.post("/missing-field", headers=hdr["a"])
    own = client.post("/analyze", headers=hdr["a"])
    unauth = client.post("/info")
    assert client.get("/readyz").status_code == 200  # open: not recorded
    rows = audit.rows()
    by_id = {r["request_id"]: r for r in rows}
    assert len(rows) == 3  # info, missing-field, the 401 (the endpoint's own record is not duplicated)
    assert (by_id[info.headers["x-request-id"]]["site"], by_id[info.headers["x-request-id"]]["status"]) == ("a", 200)
    row = by_id[bad.headers["x-request-id"]]
    assert (row["endpoint"], row["status"], json.loads(row["outcome"])) == ("/missing-field", 400,
                                                                              {"error": "bad_request"})
    assert "x-request-id" not in own.headers
    assert by_id[unauth.headers["x-request-id"]]["status"] == 401
    assert audit.verify().ok


def test_jobs_are_visible_to_their_site_only(stack) -> None:  # noqa: ANN001
    client, audit, hdr = stack
    task = client.post("/jobs/analyze_study/submit", headers=hdr["a"]).json()["task_id"]
    (row,) = audit.rows(request_id=task)
    assert (row["site"], row["endpoint"]) == ("a", "/jobs/analyze_study/submit")
    assert audit.job_site(task) == "a"
    ok = client.get(f"/jobs/analyze_study/status?task_id={task}", headers=hdr["a"])
    assert ok.status_code == 200 and ok.json() == {"ok": True}
    calls.clear()
    for method, path in (("GET", "status"), ("GET", "get"), ("POST", "retry"), ("PUT", "cancel")):
        other = client.request(method, f"/jobs/analyze_study/{path}?task_id={task}", headers=hdr["b"])
        assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    unknown = client.get("/jobs/analyze_study/get?task_id=nope", headers=hdr["a"])
    assert unknown.status_code == 404
    assert calls == []  # none of those reached the job store
    assert [r["status"] for r in audit.rows()][-5:] == [404] * 5
