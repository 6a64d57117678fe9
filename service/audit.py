"""The tamper-evident audit trail: one append-only record per request, hash-chained (SQLAlchemy 2.x).

Store: SQLite in WAL mode by default (``FOVEA_AUDIT_PATH``, default ``$BENTOML_HOME/fovea-audit.sqlite``), or any
SQLAlchemy URL in ``FOVEA_DATABASE_URL`` (PostgreSQL: ``postgresql+psycopg://user@host/db``).

Record (table ``audit_records``): ``seq`` (1, 2, 3, … with no gaps), ``kind`` (``request`` or ``anchor``), UTC
``time``, ``request_id``, ``site`` (from the API key, :func:`service.auth.current_site`), ``endpoint``, HTTP
``status``, ``latency_us``, ``input_sha256`` (one per uploaded file), ``source_uids`` (the DICOM Study/SOP
Instance UIDs, HMAC-SHA256 with a secret salt, so the trail can be matched against a UID one holds but does not
reveal it), ``models`` (name, version, sha256), ``outcome`` (quality, grade, referral per image, or the error
code), ``prev_hash`` and ``hash``. No patient data: nothing from the DICOM header but hashed UIDs.

Chain: ``hash = sha256(canonical JSON of every other column, prev_hash included)``; the first record's
``prev_hash`` is 64 zeros. Changing, deleting, inserting or reordering a record breaks the chain at that record,
which :meth:`AuditLog.verify` (``python -m service.admin verify-audit``) names. A chain proves integrity
relative to its head: keep the head hash that ``verify-audit`` prints somewhere else (a ticket, a log
shipper) to detect a rewrite of the whole chain.

Appends from several processes are serialised: SQLite ``BEGIN IMMEDIATE`` (the write lock is taken before the
head is read), PostgreSQL ``pg_advisory_xact_lock``; the unique ``seq`` and ``hash`` columns refuse a fork in
any case. A record is committed (SQLite ``synchronous=FULL``) before the response it describes is returned.

Append-only: the application issues no UPDATE or DELETE, and database triggers refuse them — except the one
deletion the retention purge makes (:meth:`AuditLog.purge`): it first appends an *anchor* record naming the
last purged record and its hash (``purged_through``, ``outcome.purged_hash``), then deletes the records up to
it. The oldest remaining record's ``prev_hash`` must equal the hash an anchor vouches for, so the shortened
chain still verifies and an unannounced deletion at the start does not.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import (BigInteger, Column, Connection, Engine, Index, Integer, MetaData, String, Table, Text,
                        create_engine, delete, event, func, insert, select, text)

from models.card import sha256_file
from service.auth import current_site
from analysis.errors import FoveaError
from analysis.findings import Findings, StudyFindings
from service.settings import Settings

log = logging.getLogger("fovea.audit")

GENESIS = "0" * 64
#: PostgreSQL advisory-lock key of the chain head ("FoveaAud" as a 64-bit integer).
PG_LOCK_KEY = int.from_bytes(b"FoveaAud", "big") & 0x7FFF_FFFF_FFFF_FFFF
_Id = BigInteger().with_variant(Integer, "sqlite")  # SQLite: INTEGER PRIMARY KEY is the rowid

metadata = MetaData()
records = Table(
    "audit_records", metadata,
    Column("seq", _Id, primary_key=True, autoincrement=False),
    Column("kind", String(16), nullable=False),
    Column("time", String(40), nullable=False),
    Column("request_id", String(64)),
    Column("site", String(64)),
    Column("endpoint", String(128)),
    Column("status", Integer),
    Column("latency_us", BigInteger),
    Column("input_sha256", Text, nullable=False),
    Column("source_uids", Text, nullable=False),
    Column("models", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("purged_through", BigInteger),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
    Index("ix_audit_request_id", "request_id"),
)
audit_meta = Table("audit_meta", metadata, Column("key", String(32), primary_key=True),
                   Column("value", Text, nullable=False))

#: The columns the hash covers, in the canonical serialisation (everything but ``hash`` itself).
HASHED = ("seq", "kind", "time", "request_id", "site", "endpoint", "status", "latency_us", "input_sha256",
          "source_uids", "models", "outcome", "purged_through", "prev_hash")

_SQLITE_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS audit_records_no_update BEFORE UPDATE ON audit_records "
    "BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_records_no_delete BEFORE DELETE ON audit_records "
    "WHEN OLD.seq > (SELECT COALESCE(MAX(purged_through), 0) FROM audit_records WHERE kind = 'anchor') "
    "BEGIN SELECT RAISE(ABORT, 'audit records are deleted only by a retention purge'); END",
)
_PG_TRIGGERS = (
    """CREATE OR REPLACE FUNCTION fovea_audit_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'UPDATE' THEN RAISE EXCEPTION 'audit records are append-only'; END IF;
      IF OLD.seq > (SELECT COALESCE(MAX(purged_through), 0) FROM audit_records WHERE kind = 'anchor') THEN
        RAISE EXCEPTION 'audit records are deleted only by a retention purge';
      END IF;
      RETURN OLD;
    END $$""",
    "CREATE OR REPLACE TRIGGER fovea_audit_guard BEFORE UPDATE OR DELETE ON audit_records "
    "FOR EACH ROW EXECUTE FUNCTION fovea_audit_guard()",
)


ERROR_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
               422: "unprocessable", 429: "too_many_requests", 500: "internal_error"}


class _Pending:
    """Per request: has the endpoint code already written the request's record?"""

    recorded = False


_PENDING: contextvars.ContextVar[_Pending | None] = contextvars.ContextVar("fovea_audit_pending", default=None)


def mark_recorded() -> None:
    """Tell :class:`service.audit_http.AuditMiddleware` that this request's record is written."""
    pending = _PENDING.get()
    if pending is not None:
        pending.recorded = True


def canonical(value: Any) -> str:
    """The canonical JSON text of ``value``: sorted keys, no whitespace, UTF-8 as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def record_hash(row: dict[str, Any]) -> str:
    """The chain hash of a record (its :data:`HASHED` columns, ``prev_hash`` included)."""
    return hashlib.sha256(canonical({k: row[k] for k in HASHED}).encode()).hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def database_url(settings: Settings) -> str:
    """``FOVEA_DATABASE_URL`` if set, else the SQLite file ``FOVEA_AUDIT_PATH`` (default under BentoML's home)."""
    if settings.database_url:
        return settings.database_url
    path = settings.audit_path or Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml") / "fovea-audit.sqlite"
    return f"sqlite:///{Path(path).expanduser().resolve()}"


@dataclass(frozen=True)
class Verification:
    """The result of walking the chain: ``ok``, the records seen, the head, and the first problem."""

    ok: bool
    records: int
    head_seq: int | None
    head_hash: str | None
    broken_seq: int | None = None
    problem: str | None = None

    def describe(self) -> str:
        if self.ok:
            if not self.records:
                return "audit trail OK: empty"
            return f"audit trail OK: {self.records} records, head seq={self.head_seq} hash={self.head_hash}"
        return f"audit trail BROKEN at record seq={self.broken_seq}: {self.problem}"


@dataclass
class RequestRecord:
    """What one request leaves in the trail; filled by the endpoint code through :meth:`answered` /
    :meth:`refused`, written by :meth:`AuditLog.recording`."""

    request_id: str
    endpoint: str
    site: str | None
    input_sha256: list[str]
    started: float = field(default_factory=time.perf_counter)
    status: int | None = None
    outcome: dict[str, Any] = field(default_factory=dict)
    uids: list[str] = field(default_factory=list)
    models: list[dict[str, str]] = field(default_factory=list)

    def answered(self, result: BaseModel) -> None:
        """A 200 with ``result`` (:class:`Findings` or :class:`StudyFindings`)."""
        self.status = 200
        images = result.images if isinstance(result, StudyFindings) else [result] if isinstance(result, Findings) else []
        one = [_image_outcome(f) for f in images]
        self.outcome = ({"images": one, "patient_referable": result.patient.referable}
                        if isinstance(result, StudyFindings) else one[0] if one else {})
        for f in images:
            for frame in [f, *f.additional_frames]:
                for uid in (frame.image.study_instance_uid, frame.image.sop_instance_uid):
                    if uid and uid not in self.uids:
                        self.uids.append(uid)
            for m in f.models:
                ref = {"name": m.name, "version": m.version, "sha256": m.sha256}
                if ref not in self.models:
                    self.models.append(ref)

    def refused(self, exc: FoveaError) -> None:
        """A typed client error (its status and code; the message is not stored)."""
        self.status = exc.status
        self.outcome = {"error": exc.code}


def _image_outcome(f: Findings) -> dict[str, Any]:
    return {"gradable": f.quality.gradable, "quality_score": round(f.quality.score, 4), "grade": f.dr_grade.grade,
            "referable": f.referable_dr.value if f.referable_dr is not None else None,
            "frames": 1 + len(f.additional_frames)}


class AuditLog:
    """The audit trail at ``url`` (module docstring). The schema is created on first use. ``salt`` keys the
    UID hashes; without it a random salt is created once and kept in the database (``audit_meta``)."""

    def __init__(self, url: str, *, salt: str | None = None) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, **_engine_options(url))
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            _sqlite_setup(self.engine)
        self._salt = salt.encode() if salt else None
        self._ready = False

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditLog:
        return cls(database_url(settings), salt=settings.audit_salt)

    def describe(self) -> str:
        """The store without credentials, for logs."""
        return self.engine.url.render_as_string(hide_password=True)

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def _locked(self) -> Iterator[Connection]:
        """A write transaction holding the chain lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: advisory lock)."""
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
            yield conn

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A read-only snapshot (no chain lock)."""
        with self.engine.connect() as conn:
            yield conn.execution_options(fovea_read=True)

    def open(self) -> AuditLog:
        """Create the schema and the salt if missing (idempotent, safe from several processes at once)."""
        if self._ready:
            return self
        with self._locked() as conn:
            metadata.create_all(conn)
            for ddl in _SQLITE_TRIGGERS if self.dialect == "sqlite" else _PG_TRIGGERS if self.dialect == "postgresql" else ():
                conn.exec_driver_sql(ddl)
            if self._salt is None:
                salt = conn.execute(select(audit_meta.c.value).where(audit_meta.c.key == "uid_salt")).scalar()
                if salt is None:
                    salt = secrets.token_hex(32)
                    conn.execute(insert(audit_meta), {"key": "uid_salt", "value": salt})
                self._salt = salt.encode()
        self._ready = True
        return self

    # ------------------------------------------------------------------ writing

    def hash_uid(self, uid: str) -> str:
        """HMAC-SHA256 of a DICOM UID under the trail's salt."""
        self.open()
        assert self._salt is not None
        return hmac.new(self._salt, uid.encode(), hashlib.sha256).hexdigest()

    def append(self, *, kind: str = "request", request_id: str | None, site: str | None, endpoint: str | None,
               status: int | None, latency_us: int | None = None, input_sha256: Sequence[str] = (),
               source_uids: Sequence[str] = (), models: Sequence[dict[str, str]] = (),
               outcome: dict[str, Any] | None = None, purged_through: int | None = None,
               conn: Connection | None = None) -> dict[str, Any]:
        """Append one record (``source_uids`` in clear: they are hashed here) and commit it; returns the row."""
        self.open()
        row: dict[str, Any] = {
            "kind": kind, "time": utc_now(), "request_id": request_id, "site": site, "endpoint": endpoint,
            "status": status, "latency_us": latency_us, "input_sha256": canonical(list(input_sha256)),
            "source_uids": canonical([self.hash_uid(u) for u in source_uids]), "models": canonical(list(models)),
            "outcome": canonical(outcome or {}), "purged_through": purged_through}
        if conn is not None:
            return self._append_locked(conn, row)
        with self._locked() as c:
            return self._append_locked(c, row)

    @staticmethod
    def _append_locked(conn: Connection, row: dict[str, Any]) -> dict[str, Any]:
        head = conn.execute(select(records.c.seq, records.c.hash).order_by(records.c.seq.desc()).limit(1)).first()
        row["seq"], row["prev_hash"] = (head.seq + 1, head.hash) if head else (1, GENESIS)
        row["hash"] = record_hash(row)
        conn.execute(insert(records), row)
        return row

    def recording(self, request_id: str, endpoint: str, inputs: Sequence[Path] = ()
                  ) -> AbstractContextManager[RequestRecord]:
        """Audit one API call: yields a :class:`RequestRecord` for the endpoint to fill, and commits it when the
        block ends — before the response is returned. An exception escaping the block is recorded as a 500 and
        re-raised; a record that cannot be written fails the request (no answer without its record)."""
        return self.record(RequestRecord(request_id=request_id, endpoint=endpoint, site=current_site(),
                                         input_sha256=[sha256_file(p) for p in inputs if p.is_file()]))

    @contextmanager
    def record(self, rec: RequestRecord) -> Iterator[RequestRecord]:
        """Audit one piece of work described by ``rec`` (its request id, endpoint, site and input hashes set
        by the caller): yields it to fill, commits it when the block ends. An exception escaping the block is
        recorded as a 500 and re-raised; a record that cannot be written fails the work. :meth:`recording`
        for an API call; the DICOMweb worker for an analysis that runs after the request was answered."""
        try:
            yield rec
        except BaseException:
            rec.status, rec.outcome = 500, {"error": "internal_error"}
            try:
                self._write(rec)
            except Exception:  # the original failure is the one to report
                log.exception("request %s: audit record could not be written", rec.request_id)
            raise
        self._write(rec)

    def _write(self, rec: RequestRecord) -> None:
        self.append(request_id=rec.request_id, site=rec.site, endpoint=rec.endpoint, status=rec.status,
                    latency_us=int((time.perf_counter() - rec.started) * 1e6), input_sha256=rec.input_sha256,
                    source_uids=rec.uids, models=rec.models, outcome=rec.outcome)
        mark_recorded()

    def refusal(self, request_id: str, site: str | None, endpoint: str, status: int) -> None:
        """Record a request refused before it reached an endpoint (authentication: 401/403, rate limit: 429)."""
        self.append(request_id=request_id, site=site, endpoint=endpoint, status=status,
                    outcome={"error": ERROR_CODES.get(status, "refused")})

    def job_site(self, task_id: str) -> str | None:
        """The site that submitted background job ``task_id`` (its submit record), ``None`` if none did."""
        self.open()
        query = (select(records.c.site).where(records.c.request_id == task_id, records.c.status == 200,
                                              records.c.endpoint.like("/jobs/%")).order_by(records.c.seq).limit(1))
        with self._reading() as conn:
            return conn.execute(query).scalar()

    # ------------------------------------------------------------------ reading, verifying, purging

    def rows(self, *, request_id: str | None = None) -> list[dict[str, Any]]:
        """Every record in chain order (or those of one request)."""
        self.open()
        query = select(records).order_by(records.c.seq)
        if request_id is not None:
            query = query.where(records.c.request_id == request_id)
        with self._reading() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def verify(self) -> Verification:
        """Walk the chain from the oldest record; the first record that fails names the break."""
        self.open()
        count, prev = 0, None
        with self._reading() as conn:
            result = conn.execution_options(yield_per=1000).execute(select(records).order_by(records.c.seq))
            for r in result:
                row = dict(r._mapping)
                count += 1
                seq = row["seq"]
                if prev is None:
                    problem = self._check_start(conn, row)
                elif seq != prev["seq"] + 1:
                    problem = f"records seq={prev['seq'] + 1}..{seq - 1} are missing (deleted)"
                elif row["prev_hash"] != prev["hash"]:
                    problem = f"its prev_hash does not match the hash of record seq={prev['seq']} (chain broken)"
                else:
                    problem = None
                if problem is None and record_hash(row) != row["hash"]:
                    problem = "its content does not match its hash (the record was altered)"
                if problem is not None:
                    return Verification(False, count, prev["seq"] if prev else None, prev["hash"] if prev else None,
                                        broken_seq=seq, problem=f"{problem} [request_id={row['request_id']}]")
                prev = row
        return Verification(True, count, prev["seq"] if prev else None, prev["hash"] if prev else None)

    @staticmethod
    def _check_start(conn: Connection, first: dict[str, Any]) -> str | None:
        """The oldest record starts the chain, or an anchor vouches for what was purged before it."""
        if first["seq"] == 1:
            return None if first["prev_hash"] == GENESIS else "the first record's prev_hash is not the genesis value"
        anchors = conn.execute(select(records.c.outcome).where(records.c.kind == "anchor",
                                                              records.c.purged_through == first["seq"] - 1)).scalars()
        for outcome in anchors:
            if json.loads(outcome).get("purged_hash") == first["prev_hash"]:
                return None
        return (f"records before seq={first['seq']} are missing and no retention anchor vouches for their removal "
                "(deleted)")

    def purge(self, before: datetime) -> int:
        """Retention: delete the records older than ``before`` (an aware datetime), after appending an anchor
        that vouches for them (module docstring). Returns the number deleted (0: nothing old enough)."""
        self.open()
        cutoff = before.astimezone(UTC).isoformat(timespec="microseconds")
        with self._locked() as conn:
            last = conn.execute(select(records.c.seq, records.c.hash).where(records.c.time < cutoff)
                                .order_by(records.c.seq.desc()).limit(1)).first()
            if last is None:
                return 0
            count = conn.execute(select(func.count()).select_from(records).where(records.c.seq <= last.seq)).scalar_one()
            self.append(kind="anchor", request_id=None, site=None, endpoint="purge", status=None, conn=conn,
                        purged_through=last.seq,
                        outcome={"purged_hash": last.hash, "purged_records": count, "cutoff": cutoff})
            conn.execute(delete(records).where(records.c.seq <= last.seq))
        return int(count)


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # Writers wait for the lock (BEGIN IMMEDIATE) rather than fail: 30 s covers any burst of appends.
        return {"connect_args": {"timeout": 30}}
    return {"pool_pre_ping": True}


def _switch_to_wal(cur: Any, deadline_s: float = 30.0) -> None:
    """``PRAGMA journal_mode = WAL``, retried: switching a database's journal mode needs an exclusive lock, and
    SQLite answers "database is locked" at once, without its busy handler, when several processes (BentoML
    workers starting together) open a new database at the same moment."""
    import sqlite3

    deadline = time.monotonic() + deadline_s
    while True:
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_setup(engine: Engine) -> None:
    """WAL (readers never block the writer; one writer at a time), FULL sync (a committed record survives a
    power cut, not only a process kill), and SQLAlchemy's own BEGIN IMMEDIATE, taking the write lock before
    the chain head is read (the SQLAlchemy SQLite dialect documentation's recipe)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # sqlite3 must not emit its own BEGIN
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA busy_timeout = 30000")
        _switch_to_wal(cur)
        cur.execute("PRAGMA synchronous = FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Readers (verify, listing) take a snapshot without the write lock.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("fovea_read") else "BEGIN IMMEDIATE")
