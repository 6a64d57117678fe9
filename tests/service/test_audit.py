"""service.audit: the hash chain, tamper detection, concurrent appends from several processes, WAL mode, the
append-only triggers, the retention purge — each against SQLite and a real PostgreSQL server (tests/pg.py)."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import multiprocessing
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from service import auth
from service.audit import GENESIS, AuditLog, database_url, record_hash
from analysis.errors import UnsupportedMediaType
from analysis.findings import DrGrade, Findings, ImageInfo, ModelRef, Quality, ReferableDr, Saliency
from service.settings import Settings
from tests.pg import fresh_database, postgres_server

_names = itertools.count()


@pytest.fixture(scope="module")
def pg_server() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.sqlite'}"
    return fresh_database(request.getfixturevalue("pg_server"), f"audit_{next(_names)}")


def _fill(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.append(request_id=f"req{i}", site="clinic-a", endpoint="/analyze", status=200, latency_us=1000 + i,
                   input_sha256=[hashlib.sha256(b"%d" % i).hexdigest()], source_uids=[f"1.2.826.0.1.{i}"],
                   models=[{"name": "dr-grader", "version": "0.1.0", "sha256": "ab" * 32}],
                   outcome={"gradable": True, "grade": i % 5, "referable": i % 2 == 0})


def _tamper(log: AuditLog, sql: str) -> None:
    """What an attacker with database access does: switch the guard off, then edit."""
    with log.engine.begin() as conn:
        if log.dialect == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER audit_records_no_update")
            conn.exec_driver_sql("DROP TRIGGER audit_records_no_delete")
        else:
            conn.exec_driver_sql("ALTER TABLE audit_records DISABLE TRIGGER fovea_audit_guard")
        conn.exec_driver_sql(sql)


def test_chain_links_every_record_to_the_previous_one(url: str) -> None:
    log = AuditLog(url)
    _fill(log, 5)
    rows = log.rows()
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["prev_hash"] == GENESIS
    for prev, row in zip(rows, rows[1:]):
        assert row["prev_hash"] == prev["hash"]
    assert all(record_hash(r) == r["hash"] for r in rows)
    result = log.verify()
    assert result.ok and result.records == 5 and result.head_seq == 5 and result.head_hash == rows[-1]["hash"]
    assert log.rows(request_id="req3")[0]["seq"] == 4


@pytest.mark.parametrize("sql, broken", [
    ("UPDATE audit_records SET outcome = '{\"grade\":0}' WHERE seq = 3", 3),             # altered content
    ("UPDATE audit_records SET site = 'other' WHERE seq = 2", 2),
    ("DELETE FROM audit_records WHERE seq = 3", 4),                                      # gap
    ("DELETE FROM audit_records WHERE seq <= 2", 3),                                     # head cut, no anchor
    ("UPDATE audit_records SET seq = seq + 100 WHERE seq = 5", 105),                     # moved
])
def test_tampering_is_detected_and_names_the_record(url: str, sql: str, broken: int) -> None:
    log = AuditLog(url)
    _fill(log, 5)
    _tamper(log, sql)
    result = log.verify()
    assert not result.ok and result.broken_seq == broken
    assert f"seq={broken}" in result.describe()


def test_a_record_rehashed_by_the_attacker_breaks_the_next_link(url: str) -> None:
    log = AuditLog(url)
    _fill(log, 4)
    row = log.rows()[1]
    row["outcome"] = json.dumps({"grade": 0})
    _tamper(log, f"UPDATE audit_records SET outcome = '{row['outcome']}', hash = '{record_hash(row)}' WHERE seq = 2")
    result = log.verify()
    assert not result.ok and result.broken_seq == 3 and "chain broken" in result.problem


def test_the_database_refuses_update_and_delete(url: str) -> None:
    log = AuditLog(url)
    _fill(log, 2)
    for sql in ("UPDATE audit_records SET status = 500", "DELETE FROM audit_records WHERE seq = 1"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only|retention purge"):
            with log.engine.begin() as conn:
                conn.exec_driver_sql(sql)
    assert log.verify().ok and len(log.rows()) == 2


def _append_many(url: str, worker: int, n: int, barrier) -> None:  # noqa: ANN001 (multiprocessing.Barrier)
    log = AuditLog(url)
    barrier.wait()  # all processes start at once, on a database none of them has created yet
    for i in range(n):
        log.append(request_id=f"w{worker}-{i}", site=f"site{worker}", endpoint="/analyze", status=200)
    log.engine.dispose()


def test_concurrent_appends_from_several_processes(url: str) -> None:
    workers, each = 4, 25
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_append_many, args=(url, w, each, barrier)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * workers
    log = AuditLog(url)
    rows = log.rows()
    assert [r["seq"] for r in rows] == list(range(1, workers * each + 1))
    assert {r["request_id"] for r in rows} == {f"w{w}-{i}" for w in range(workers) for i in range(each)}
    assert log.verify().ok


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    AuditLog(f"sqlite:///{path}").open()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_purge_keeps_the_chain_verifiable(url: str) -> None:
    log = AuditLog(url)
    _fill(log, 6)
    assert log.purge(datetime.now(UTC) - timedelta(days=1)) == 0  # nothing that old
    deleted = log.purge(datetime.now(UTC) + timedelta(seconds=1))
    assert deleted == 6
    rows = log.rows()
    assert [(r["seq"], r["kind"], r["purged_through"]) for r in rows] == [(7, "anchor", 6)]
    _fill(log, 2)
    result = log.verify()
    assert result.ok and result.records == 3 and result.head_seq == 9
    # the anchor vouches only for what it names: deleting one more record is caught
    _tamper(log, "DELETE FROM audit_records WHERE seq = 7")
    assert log.verify().broken_seq == 8


def test_uids_are_stored_as_salted_hashes(url: str) -> None:
    uid = "1.2.826.0.1.3680043.8.498.12345"
    log = AuditLog(url)
    log.append(request_id="r", site=None, endpoint="/analyze", status=200, source_uids=[uid])
    row = log.rows()[0]
    assert uid not in json.dumps(row)
    stored = json.loads(row["source_uids"])[0]
    assert stored == log.hash_uid(uid) == AuditLog(url).hash_uid(uid)  # the salt is kept: matchable later
    assert stored != hashlib.sha256(uid.encode()).hexdigest()
    salted = AuditLog(url, salt="s" * 32)
    assert salted.hash_uid(uid) == hmac.new(b"s" * 32, uid.encode(), hashlib.sha256).hexdigest()


def _findings(request_id: str) -> Findings:
    return Findings(
        request_id=request_id, disclaimer="synthetic", timing_ms={"total": 1.0},
        image=ImageInfo(source="dicom", width=10, height=10, sop_instance_uid="1.2.3.4", study_instance_uid="1.2.3"),
        quality=Quality(gradable=True, score=0.8, method="classic"),
        dr_grade=DrGrade(grade=2, label="Moderate NPDR", probabilities=[0.1, 0.1, 0.6, 0.1, 0.1]),
        referable_dr=ReferableDr(value=True, probability=0.8, operating_point=0.5),
        saliency=Saliency(target_grade=2, heatmap_png="", overlay_png=""),
        models=[ModelRef(name="dr-grader", version="0.1.0", sha256="cd" * 32, provider="CPUExecutionProvider")])


def test_recording_an_answer_a_refusal_and_a_crash(tmp_path: Path) -> None:
    log = AuditLog(f"sqlite:///{tmp_path / 'a.sqlite'}")
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"fundus bytes")
    token = auth._SITE.set("clinic-a")
    try:
        with log.recording("ok1", "/analyze", [upload]) as rec:
            rec.answered(_findings("ok1"))
        with log.recording("bad1", "/analyze", [upload]) as rec:
            rec.refused(UnsupportedMediaType("not an image"))
        with pytest.raises(RuntimeError):
            with log.recording("boom", "/analyze_study", []):
                raise RuntimeError("model failed")
    finally:
        auth._SITE.reset(token)
    ok, bad, boom = log.rows()
    assert (ok["request_id"], ok["site"], ok["status"], ok["endpoint"]) == ("ok1", "clinic-a", 200, "/analyze")
    assert json.loads(ok["input_sha256"]) == [hashlib.sha256(b"fundus bytes").hexdigest()]
    assert json.loads(ok["outcome"]) == {"gradable": True, "quality_score": 0.8, "grade": 2, "referable": True,
                                         "frames": 1}
    assert json.loads(ok["models"]) == [{"name": "dr-grader", "version": "0.1.0", "sha256": "cd" * 32}]
    assert json.loads(ok["source_uids"]) == [log.hash_uid("1.2.3"), log.hash_uid("1.2.3.4")]
    assert ok["latency_us"] >= 0
    assert (bad["status"], json.loads(bad["outcome"])) == (415, {"error": "unsupported_media_type"})
    assert (boom["status"], boom["endpoint"]) == (500, "/analyze_study")
    assert log.verify().ok


def test_database_url_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path))
    assert database_url(Settings()) == f"sqlite:///{tmp_path / 'fovea-audit.sqlite'}"
    assert database_url(Settings(audit_path=tmp_path / "x.db")) == f"sqlite:///{tmp_path / 'x.db'}"
    assert database_url(Settings(database_url="postgresql+psycopg://u@h/db")) == "postgresql+psycopg://u@h/db"
