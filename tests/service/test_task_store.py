"""service/task_store.py: BentoML's job store sealed, credentials dropped, retention and purge."""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import sqlite3
from pathlib import Path

import anyio
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service import task_store
from service.at_rest import SealError, Sealer
from service.settings import SettingsError, load_settings
from service.task_store import PURPOSE_INPUT, SealedSerde, SealedTaskStore, install, main, purge

BODY = (b"--B\r\nContent-Disposition: form-data; name=images; filename=r.dcm\r\n\r\n"
        b"DICM ZQPHIMARKER-ID-40417\r\n--B--\r\n")
KEY = "fov_abcdef12_" + "k" * 30
COMPLETED = task_store._result.ResultStatus.COMPLETED


def _request(body: bytes = BODY) -> Request:
    scope = {"type": "http", "method": "POST", "path": "/jobs/analyze_study/submit", "raw_path": b"/x",
             "query_string": b"", "headers": [(b"content-type", b"multipart/form-data; boundary=B"),
                                              (b"authorization", f"Bearer {KEY}".encode()),
                                              (b"X-API-Key", KEY.encode()), (b"cookie", b"s=1")]}
    request = Request(scope)
    request._body = body
    return request


def _variants(value: bytes) -> list[bytes]:
    return [value, *(base64.b64encode(b"\0" * k + value)[4:-4] for k in range(3))]


def _contains(blob: bytes, value: bytes) -> bool:
    return any(v in blob for v in _variants(value))


@pytest.fixture()
def sealer() -> Sealer:
    return Sealer(secrets.token_bytes(32))


def test_request_is_sealed_and_credentials_dropped(sealer: Sealer) -> None:
    serde = SealedSerde(sealer)
    blob = anyio.run(serde.serialize_request, _request())
    assert blob.startswith(b"FVA1")
    for secret in (b"ZQPHIMARKER-ID-40417", KEY.encode()):
        assert not _contains(blob, secret)
    back = anyio.run(serde.deserialize_request, blob)
    assert anyio.run(back.body) == BODY  # what /retry runs on: the same upload
    names = {k.lower() for k, _ in back.scope["headers"]}
    assert names == {b"content-type"} and back.url.path == "/jobs/analyze_study/submit"
    clear = sealer.open(blob, PURPOSE_INPUT)  # inside the seal, too: no key
    assert KEY.encode() not in clear and b"cookie" not in clear.lower()


def test_response_round_trip_and_tamper(sealer: Sealer) -> None:
    serde = SealedSerde(sealer)
    blob = anyio.run(serde.serialize_response, JSONResponse({"patient": {"referable": True}}))
    assert blob.startswith(b"FVA1") and not _contains(blob, b"referable")
    back: Response = anyio.run(serde.deserialize_response, blob)
    assert back.status_code == 200 and json.loads(back.body) == {"patient": {"referable": True}}
    with pytest.raises(SealError):  # a result cannot be read as an input, nor with another key
        anyio.run(serde.deserialize_request, blob)
    with pytest.raises(SealError):
        anyio.run(SealedSerde(Sealer(secrets.token_bytes(32))).deserialize_response, blob)


def _age(db: Path, task_id: str, hours: float, *, completed: bool) -> None:
    when = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE result SET created_at = ? WHERE task_id = ?",
                     (when.strftime("%Y-%m-%d %H:%M:%S"), task_id))  # as SQLite's CURRENT_TIMESTAMP writes it
        if completed:
            conn.execute("UPDATE result SET completed_at = ? WHERE task_id = ?", (str(when), task_id))
    conn.close()


def test_store_seals_purges_and_keeps_the_file_private(tmp_path: Path, sealer: Sealer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "task_result.db"
    SealedTaskStore.init_db(str(db))
    assert db.stat().st_mode & 0o777 == 0o600
    monkeypatch.setattr(SealedTaskStore, "retention_hours", 2.0)

    async def scenario() -> dict[str, object]:
        async with SealedTaskStore(str(db), SealedSerde(sealer)) as store:
            old_done = await store.new_entry("job", _request())
            await store.set_result(old_done, JSONResponse({"n": 1}), COMPLETED)
            old_stuck = await store.new_entry("job", _request())  # never completes (worker died)
            fresh = await store.new_entry("job", _request())
            await store.set_result(fresh, JSONResponse({"n": 3}), COMPLETED)
            _age(db, old_done, 3, completed=True)
            _age(db, old_stuck, 3, completed=False)
            newest = await store.new_entry("job", _request())  # a new job purges what is past retention
            row = await store.get(fresh)
            return {"ids": {old_done, old_stuck, fresh, newest}, "fresh": fresh, "newest": newest,
                    "result": json.loads(row.result.body), "input": await row.input.body()}

    out = anyio.run(scenario)
    assert out["result"] == {"n": 3} and out["input"] == BODY
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT task_id, input FROM result").fetchall())
    conn.close()
    assert set(rows) == {out["fresh"], out["newest"]}
    assert all(blob.startswith(b"FVA1") for blob in rows.values())
    assert all(p.stat().st_mode & 0o077 == 0 for p in tmp_path.glob("task_result.db*"))
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("task_result.db*"))
    assert not _contains(raw, b"ZQPHIMARKER-ID-40417") and not _contains(raw, KEY.encode())


def test_purge_function_and_command(tmp_path: Path, sealer: Sealer,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "t.db"
    SealedTaskStore.init_db(str(db))

    async def two() -> list[str]:
        async with SealedTaskStore(str(db), SealedSerde(sealer)) as store:
            return [await store.new_entry("job", _request()) for _ in range(2)]

    first, second = anyio.run(two)
    _age(db, first, 30, completed=False)
    assert purge(db, 24) == 1
    assert main(["purge", "--older-than-hours", "0", "--db", str(db)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["purged"] == 1
    assert main(["purge", "--older-than-hours", "-1", "--db", str(db)]) == 2
    assert main(["purge", "--db", str(tmp_path / "absent.db")]) == 0
    assert second  # (both ids were real rows)


def test_install_replaces_bentomls_store(monkeypatch: pytest.MonkeyPatch) -> None:
    import _bentoml_impl.server.app as app
    import _bentoml_impl.tasks as tasks

    for mod in (app, tasks, task_store._result):
        monkeypatch.setattr(mod, "Sqlite3Store", mod.Sqlite3Store)  # restored after the test
    monkeypatch.setattr(SealedTaskStore, "retention_hours", SealedTaskStore.retention_hours)
    install(6)
    assert app.Sqlite3Store is SealedTaskStore and task_store._result.Sqlite3Store is SealedTaskStore
    assert SealedTaskStore.retention_hours == 6
    for bad in (0, -1, float("inf")):
        with pytest.raises(ValueError):
            install(bad)
    monkeypatch.setattr(app, "Sqlite3Store", object)  # another BentoML layout: refuse, never run in clear
    with pytest.raises(RuntimeError, match="refusing"):
        install(6)


def test_retention_setting() -> None:
    assert load_settings({}).job_retention_hours == 24
    assert load_settings({"FOVEA_JOB_RETENTION_HOURS": "0.5"}).job_retention_hours == 0.5
    for bad in ("0", "-1", "inf", "soon"):
        with pytest.raises(SettingsError, match="job_retention_hours"):
            load_settings({"FOVEA_JOB_RETENTION_HOURS": bad})
