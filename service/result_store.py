"""The DICOMweb store: received instances awaiting analysis, and the DICOM results (SR, SC) Fovea made.

Layout under ``root`` (``<FOVEA_DATA_DIR>/dicomweb``)::

    index.sqlite3           SQLite (WAL) index: UIDs, modality, series, states; no patient data in clear
    received/<uid>.fva      a received instance (Part 10 bytes), sealed, kept until its analysis ends
    results/<uid>.fva       a result instance (Part 10 bytes), sealed

Everything that carries patient identity is sealed at rest with :mod:`service.at_rest` (AES-256-GCM): the
received instances, the results (their Patient and Study modules are copied from the source, so a PACS files
them in the patient's study) and each result's DICOM JSON metadata, kept sealed in the index for QIDO-RS. The
index itself holds only UIDs, modality, series/instance numbers, SHA-256 digests, states and times.

Contracts
---------
* Idempotent on SOP Instance UID: :meth:`ResultStore.receive` of an instance whose analysis is pending,
  running or done *with the same bytes* changes nothing; a result is stored under its own SOP Instance UID
  (the result builder derives it deterministically from the source instance and the model versions), so
  storing it again replaces it instead of adding a copy.
* Safe for several threads and several processes on one data folder: one connection per store guarded by a
  lock, WAL journaling, a busy timeout, and analyses *claimed* with an atomic ``UPDATE ... WHERE state =
  'pending'`` so two workers never analyse the same instance.
* Bounded: at most ``max_pending`` analyses wait; beyond that :meth:`receive` answers ``"busy"``.
* Per site: every analysis and result carries the site (from the API key, :mod:`service.auth`) that sent the
  source instance; :meth:`find` and :meth:`analysis` given a site see that site's only.
* Retention: :meth:`purge` removes results and finished analyses older than an age
  (``python -m service.result_store purge --older-than-days N``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

import pydicom
from pydicom.dataset import Dataset

from service.at_rest import Sealer, data_dir, load_sealer

#: PS3.5 9.1: a UID is 1-64 characters of digits and dots, components without leading zeros. Checked before a
#: UID names a file or enters a query.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

PURPOSE_RECEIVED = b"dicomweb-received"
PURPOSE_RESULT = b"dicomweb-result"
PURPOSE_METADATA = b"dicomweb-metadata"

AnalysisState = Literal["pending", "running", "done", "failed"]
ReceiveOutcome = Literal["queued", "duplicate", "busy"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS analyses (
    sop_instance_uid    TEXT PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    sop_class_uid       TEXT NOT NULL,
    sha256              TEXT NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    received_at         REAL NOT NULL,
    updated_at          REAL NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    error_code          TEXT,
    error_message       TEXT,
    site                TEXT
);
CREATE INDEX IF NOT EXISTS analyses_state ON analyses (state, received_at);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid        TEXT PRIMARY KEY,
    sop_class_uid           TEXT NOT NULL,
    study_instance_uid      TEXT NOT NULL,
    series_instance_uid     TEXT NOT NULL,
    modality                TEXT NOT NULL,
    series_number           INTEGER,
    instance_number         INTEGER,
    transfer_syntax_uid     TEXT NOT NULL,
    source_sop_instance_uid TEXT,
    size                    INTEGER NOT NULL,
    metadata                BLOB NOT NULL,
    stored_at               REAL NOT NULL,
    site                    TEXT
);
CREATE INDEX IF NOT EXISTS instances_series ON instances (study_instance_uid, series_instance_uid);
CREATE INDEX IF NOT EXISTS instances_source ON instances (source_sop_instance_uid);
"""


def is_uid(value: str) -> bool:
    """Whether ``value`` is a syntactically valid DICOM UID (PS3.5 9.1)."""
    return 0 < len(value) <= 64 and bool(_UID.match(value))


@dataclass(frozen=True)
class Analysis:
    """The analysis state of one received instance (no patient data)."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    state: AnalysisState
    received_at: float
    updated_at: float
    attempts: int
    error_code: str | None
    error_message: str | None
    #: The site (API key's) that sent the instance; ``None`` when sent without one.
    site: str | None = None


@dataclass(frozen=True)
class StoredInstance:
    """The index row of one stored result instance."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    series_number: int | None
    instance_number: int | None
    transfer_syntax_uid: str
    source_sop_instance_uid: str | None
    size: int
    stored_at: float


@dataclass(frozen=True, kw_only=True)
class InstanceQuery:
    """QIDO-RS matching on the indexed attributes (PS3.18 10.6.1.2): each field is ``None`` (no constraint)
    or a list of values, any of which matches (UID list matching, PS3.4 C.2.2.2.2; single values for the
    others). ``limit``/``offset`` page the result (PS3.18 8.3.4.4)."""

    study_instance_uid: Sequence[str] | None = None
    series_instance_uid: Sequence[str] | None = None
    sop_instance_uid: Sequence[str] | None = None
    sop_class_uid: Sequence[str] | None = None
    modality: Sequence[str] | None = None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def dicom_bytes(ds: Dataset) -> bytes:
    """``ds`` encoded as a DICOM Part 10 file (preamble, file meta, dataset as its transfer syntax says)."""
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def metadata_json(ds: Dataset) -> dict[str, Any]:
    """The DICOM JSON model (PS3.18 F.2) of ``ds`` without its pixel data (retrieve the instance for that):
    what QIDO-RS and WADO-RS ``/metadata`` return."""
    copy = Dataset()
    for elem in ds:
        if elem.tag.group >= 0x7FE0 and elem.tag.element in (0x0008, 0x0009, 0x0010):
            continue  # (7FE0,0008/0009/0010) Float / Double Float / Pixel Data: bulk data
        copy.add(elem)
    return copy.to_json_dict()


class ResultStore:
    """See the module docstring. Open with :meth:`open`; thread-safe."""

    def __init__(self, root: Path, sealer: Sealer, *, max_pending: int = 256) -> None:
        self.root = root
        self.sealer = sealer
        self.max_pending = max_pending
        (root / "received").mkdir(parents=True, exist_ok=True)
        (root / "results").mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # check_same_thread=False: one connection shared by the request threads and the analysis worker,
        # serialised by self._lock. isolation_level=None: explicit transactions only (BEGIN IMMEDIATE).
        self._db = sqlite3.connect(root / "index.sqlite3", timeout=30, check_same_thread=False,
                                   isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    @classmethod
    def open(cls, root: Path | None = None, sealer: Sealer | None = None, *, max_pending: int = 256
             ) -> ResultStore:
        """The store under ``root`` (default ``<FOVEA_DATA_DIR>/dicomweb``) sealed with ``sealer`` (default
        :func:`service.at_rest.load_sealer`)."""
        return cls(root if root is not None else data_dir() / "dicomweb",
                   sealer if sealer is not None else load_sealer(), max_pending=max_pending)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _file(self, kind: str, uid: str) -> Path:
        if not is_uid(uid):  # never let an unchecked value name a file
            raise ValueError("not a valid UID")
        return self.root / kind / f"{uid}.fva"

    # -- received instances and their analyses ----------------------------------------------------------

    def receive(self, data: bytes, ds: Dataset, *, site: str | None = None) -> ReceiveOutcome:
        """Keep a received instance (Part 10 ``data``, parsed as ``ds``, whose UIDs the caller checked) for
        analysis on behalf of ``site`` (the API key's site; its results are visible to it only).
        ``"duplicate"``: the same bytes from the same site are already pending, being analysed or done
        (nothing changes); ``"busy"``: ``max_pending`` analyses are waiting (nothing stored); ``"queued"``:
        stored and pending (also when it replaces a failed analysis, or other bytes or another site with the
        same UID)."""
        uid = str(ds.SOPInstanceUID)
        digest = hashlib.sha256(data).hexdigest()
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT sha256, state, site FROM analyses WHERE sop_instance_uid = ?",
                             (uid,)).fetchone()
            if row is not None and row["sha256"] == digest and row["state"] != "failed" and row["site"] == site:
                return "duplicate"
            (waiting,) = db.execute("SELECT COUNT(*) FROM analyses WHERE state = 'pending'").fetchone()
            if waiting >= self.max_pending:
                return "busy"
            self.sealer.write(self._file("received", uid), data, PURPOSE_RECEIVED)
            db.execute(
                "INSERT INTO analyses (sop_instance_uid, study_instance_uid, series_instance_uid, sop_class_uid,"
                " sha256, state, received_at, updated_at, attempts, site)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, 0, ?)"
                " ON CONFLICT (sop_instance_uid) DO UPDATE SET study_instance_uid = excluded.study_instance_uid,"
                " series_instance_uid = excluded.series_instance_uid, sop_class_uid = excluded.sop_class_uid,"
                " sha256 = excluded.sha256, state = 'pending', received_at = excluded.received_at,"
                " updated_at = excluded.updated_at, error_code = NULL, error_message = NULL, site = excluded.site",
                (uid, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPClassUID), digest, now, now,
                 site))
        return "queued"

    def claim(self) -> tuple[str, str] | None:
        """Mark the oldest pending analysis running and return its ``(SOP Instance UID, sha256)``; ``None``
        if none waits. Atomic across processes: an analysis is handed to one caller only."""
        with self._transaction() as db:
            row = db.execute("SELECT sop_instance_uid, sha256 FROM analyses WHERE state = 'pending' "
                             "ORDER BY received_at LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE analyses SET state = 'running', attempts = attempts + 1, updated_at = ? "
                       "WHERE sop_instance_uid = ? AND state = 'pending'", (time.time(), row[0]))
            return str(row[0]), str(row[1])

    def received(self, uid: str) -> bytes:
        """The bytes of a received instance that is pending or running (``FileNotFoundError`` otherwise)."""
        return self.sealer.read(self._file("received", uid), PURPOSE_RECEIVED)

    def finish(self, uid: str, sha256: str, *, error: tuple[str, str] | None = None) -> bool:
        """End the analysis of ``uid`` (of the bytes with digest ``sha256``, as :meth:`claim` gave them):
        ``done``, or ``failed`` with ``(code, message)`` (no patient data in either). The received instance
        is deleted: Fovea keeps results, not the photographs. ``False`` (and nothing changes) when other
        bytes with this UID arrived meanwhile: their analysis is pending and runs next."""
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE analyses SET state = ?, error_code = ?, error_message = ?, updated_at = ? "
                "WHERE sop_instance_uid = ? AND sha256 = ? AND state = 'running'",
                ("failed" if error else "done", error[0] if error else None, error[1] if error else None,
                 time.time(), uid, sha256))
            if cur.rowcount != 1:
                return False
            self._file("received", uid).unlink(missing_ok=True)
            return True

    def requeue_stale(self, older_than_s: float) -> int:
        """Put analyses left ``running`` for more than ``older_than_s`` seconds (their process died) back to
        pending; returns how many."""
        with self._transaction() as db:
            cur = db.execute("UPDATE analyses SET state = 'pending', updated_at = ? "
                             "WHERE state = 'running' AND updated_at < ?",
                             (time.time(), time.time() - older_than_s))
            return cur.rowcount

    def analysis(self, uid: str, *, site: str | None = None) -> Analysis | None:
        """The analysis state of a received instance, ``None`` if Fovea never received it (from ``site``,
        when given)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM analyses WHERE sop_instance_uid = ?", (uid,)).fetchone()
        if row is None or (site is not None and row["site"] != site):
            return None
        return Analysis(row["sop_instance_uid"], row["study_instance_uid"], row["series_instance_uid"],
                        row["state"], row["received_at"], row["updated_at"], row["attempts"], row["error_code"],
                        row["error_message"], row["site"])

    def pending_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM analyses WHERE state = 'pending'").fetchone()[0])

    # -- results -------------------------------------------------------------------------------------------

    def put_result(self, ds: Dataset, *, source_sop_instance_uid: str) -> StoredInstance:
        """Store a result instance (sealed), replacing any earlier one with the same SOP Instance UID; it
        belongs to the site that sent the source instance."""
        data = dicom_bytes(ds)
        # The metadata of what was stored, read back from the bytes: in-memory values may be Python objects
        # (highdicom sets DA/TM/DT as date and time objects) that the JSON model does not take.
        meta = json.dumps(metadata_json(pydicom.dcmread(BytesIO(data), stop_before_pixels=True)),
                          separators=(",", ":")).encode()
        uid = str(ds.SOPInstanceUID)
        row = StoredInstance(
            sop_instance_uid=uid, sop_class_uid=str(ds.SOPClassUID), study_instance_uid=str(ds.StudyInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID), modality=str(ds.get("Modality", "") or ""),
            series_number=_int_or_none(ds.get("SeriesNumber")),
            instance_number=_int_or_none(ds.get("InstanceNumber")),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            source_sop_instance_uid=source_sop_instance_uid,
            size=len(data), stored_at=time.time())
        for value in (row.sop_instance_uid, row.study_instance_uid, row.series_instance_uid):
            if not is_uid(value):
                raise ValueError("a result instance has an invalid UID")
        with self._transaction() as db:
            owner = db.execute("SELECT site FROM analyses WHERE sop_instance_uid = ?",
                               (source_sop_instance_uid,)).fetchone()
            self.sealer.write(self._file("results", uid), data, PURPOSE_RESULT)
            db.execute(
                "INSERT OR REPLACE INTO instances (sop_instance_uid, sop_class_uid, study_instance_uid,"
                " series_instance_uid, modality, series_number, instance_number, transfer_syntax_uid,"
                " source_sop_instance_uid, size, metadata, stored_at, site)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row.sop_instance_uid, row.sop_class_uid, row.study_instance_uid, row.series_instance_uid,
                 row.modality, row.series_number, row.instance_number, row.transfer_syntax_uid,
                 row.source_sop_instance_uid, row.size, self.sealer.seal(meta, PURPOSE_METADATA), row.stored_at,
                 owner[0] if owner else None))
        return row

    def find(self, query: InstanceQuery, *, limit: int | None = None, offset: int = 0,
             site: str | None = None) -> list[StoredInstance]:
        """Stored results matching ``query`` (of ``site`` only, when given), oldest first (a stable order for
        paging)."""
        where, args = (["site = ?"], [site]) if site is not None else ([], [])
        for column, values in (("study_instance_uid", query.study_instance_uid),
                               ("series_instance_uid", query.series_instance_uid),
                               ("sop_instance_uid", query.sop_instance_uid),
                               ("sop_class_uid", query.sop_class_uid), ("modality", query.modality)):
            if values is not None:
                where.append(f"{column} IN ({', '.join('?' * len(values))})" if values else "0")
                args.extend(values)
        sql = "SELECT * FROM instances" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY stored_at, sop_instance_uid"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [limit, offset]
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [StoredInstance(**{k: r[k] for k in StoredInstance.__dataclass_fields__}) for r in rows]

    def results_of(self, source_sop_instance_uid: str) -> list[StoredInstance]:
        """The result instances made from one received instance."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM instances WHERE source_sop_instance_uid = ? "
                                    "ORDER BY modality DESC, sop_instance_uid",
                                    (source_sop_instance_uid,)).fetchall()
        return [StoredInstance(**{k: r[k] for k in StoredInstance.__dataclass_fields__}) for r in rows]

    def metadata(self, uid: str) -> dict[str, Any]:
        """The DICOM JSON metadata of a stored result (``KeyError`` if there is none)."""
        with self._lock:
            row = self._db.execute("SELECT metadata FROM instances WHERE sop_instance_uid = ?", (uid,)).fetchone()
        if row is None:
            raise KeyError(uid)
        return json.loads(self.sealer.open(row[0], PURPOSE_METADATA))

    def instance_bytes(self, uid: str) -> bytes:
        """The Part 10 bytes of a stored result (``KeyError`` if there is none)."""
        try:
            return self.sealer.read(self._file("results", uid), PURPOSE_RESULT)
        except (FileNotFoundError, ValueError) as exc:
            raise KeyError(uid) from exc

    def instance(self, uid: str) -> Dataset:
        """A stored result, parsed."""
        return pydicom.dcmread(BytesIO(self.instance_bytes(uid)))

    # -- retention -------------------------------------------------------------------------------------------

    def purge(self, older_than_s: float, *, now: float | None = None) -> int:
        """Delete results stored more than ``older_than_s`` seconds ago, and finished (done/failed) analyses
        that old; returns the number of result instances deleted. Pending and running analyses stay."""
        cutoff = (time.time() if now is None else now) - older_than_s
        with self._transaction() as db:
            uids = [r[0] for r in db.execute("SELECT sop_instance_uid FROM instances WHERE stored_at < ?",
                                             (cutoff,))]
            for uid in uids:
                self._file("results", uid).unlink(missing_ok=True)
            db.execute("DELETE FROM instances WHERE stored_at < ?", (cutoff,))
            db.execute("DELETE FROM analyses WHERE state IN ('done', 'failed') AND updated_at < ?", (cutoff,))
        return len(uids)


def main(argv: list[str] | None = None) -> int:
    """``python -m service.result_store purge --older-than-days N``: the retention job (cron it)."""
    parser = argparse.ArgumentParser(prog="python -m service.result_store")
    sub = parser.add_subparsers(dest="command", required=True)
    purge = sub.add_parser("purge", help="delete DICOMweb results older than N days")
    purge.add_argument("--older-than-days", type=float, required=True)
    args = parser.parse_args(argv)
    if args.older_than_days < 0:
        parser.error("--older-than-days must not be negative")
    store = ResultStore.open()
    try:
        n = store.purge(args.older_than_days * 86400)
    finally:
        store.close()
    print(f"deleted {n} result instances older than {args.older_than_days:g} days from {store.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
