"""BentoML's background-job store, sealed at rest and purged after a configurable retention.

What BentoML 1.4 does on its own (``_bentoml_impl/tasks/result.py``, ``serde.py``, ``server/app.py``): every
``@bentoml.task`` submission goes into one SQLite file, ``$BENTOML_RESULT_STORE`` or
``$BENTOML_HOME/task_result.db`` (WAL mode, shared by all workers, deleted and re-created when
``bentoml serve`` starts), table ``result``: ``input`` is the whole HTTP request as JSON -- the ASGI scope
with **every header (the caller's ``Authorization: Bearer`` key included)** and the **complete body,
base64** (for Fovea: the uploaded photographs and every DICOM header with the patient's name, ID, birth
date...); ``result`` is the whole response (the findings JSON), base64 too. Rows are deleted only when
*another* job completes, and only those completed more than 24 h before (a class constant,
``RESULT_RETENTION``, not configurable); a job that never completed is never deleted. The stored input serves
``/retry`` only: the job itself runs on the request object in memory.

What this module changes, through BentoML's own extension point (the ``Serde`` of ``Sqlite3Store``):

* ``input`` and ``result`` are sealed with :mod:`service.at_rest` (AES-256-GCM, key ``FOVEA_STORAGE_KEY``
  or ``<FOVEA_DATA_DIR>/storage.key``), each with its own purpose; credentials (``Authorization``,
  ``X-API-Key``, ``Cookie``) are dropped from the stored headers first -- ``/retry`` does not need them.
* Retention ``FOVEA_JOB_RETENTION_HOURS`` (setting ``job_retention_hours``, default 24 as BentoML's): every
  new and every completed job purges the rows older than that, completed or not;
  ``python -m service.task_store purge`` does it on demand (cron), ``--older-than-hours 0`` empties the
  store. ``PRAGMA secure_delete`` overwrites deleted rows.
* The database file (and its WAL and shared-memory files) is made mode 0600.

:func:`install` puts :class:`SealedTaskStore` in place of BentoML's class; it refuses (``RuntimeError``) to
run against a BentoML whose task store is not the one described above, so an upgrade cannot silently bring
back clear-text persistence. An in-memory store (``BENTOML_RESULT_STORE=:memory:``) is no alternative: each
worker would get its own empty database, without the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from _bentoml_impl.tasks import result as _result
from _bentoml_impl.tasks.serde import JSONSerde, Serde
from starlette.requests import Request
from starlette.responses import Response

from service.at_rest import Sealer, load_sealer

DEFAULT_RETENTION_HOURS = 24.0
PURPOSE_INPUT = b"bentoml-task-input"
PURPOSE_RESULT = b"bentoml-task-result"
#: Request headers never persisted: the caller's credentials.
CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key", b"cookie", b"proxy-authorization"})

_BentoStore: type[_result.Sqlite3Store] = _result.Sqlite3Store  # BentoML's own class, kept before install()


class SealedSerde(Serde):
    """BentoML's JSON serialisation of a job's request and response, sealed; credentials left out."""

    def __init__(self, sealer: Sealer) -> None:
        self._json = JSONSerde()
        self._sealer = sealer

    async def serialize_request(self, request: Request) -> bytes:
        body = await request.body()  # read (and cached on the request) before the scope is copied
        scope = {**request.scope, "headers": [(k, v) for k, v in request.scope.get("headers", [])
                                              if k.lower() not in CREDENTIAL_HEADERS]}
        stripped = Request(scope)
        stripped._body = body  # starlette's cache of the body, as JSONSerde.deserialize_request sets it
        return self._sealer.seal(await self._json.serialize_request(stripped), PURPOSE_INPUT)

    async def deserialize_request(self, data: bytes) -> Request:
        return await self._json.deserialize_request(self._sealer.open(data, PURPOSE_INPUT))

    async def serialize_response(self, response: Response) -> bytes:
        return self._sealer.seal(await self._json.serialize_response(response), PURPOSE_RESULT)

    async def deserialize_response(self, data: bytes) -> Response:
        return await self._json.deserialize_response(self._sealer.open(data, PURPOSE_RESULT))


def purge(db_file: str | Path, older_than_hours: float) -> int:
    """Delete the jobs created (or completed) more than ``older_than_hours`` ago, whatever their state; the
    number deleted. Safe while the service runs (SQLite WAL, busy timeout)."""
    with sqlite3.connect(db_file, timeout=30.0) as conn:
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA secure_delete=ON")
        n = conn.execute(_PURGE_SQL, (older_than_hours / 24.0,)).rowcount
    conn.close()
    return n


# created_at is SQLite's CURRENT_TIMESTAMP (UTC); completed_at a Python datetime with +00:00 (BentoML):
# julianday() reads both. The later of the two counts, so a long job is not purged the moment it completes.
_PURGE_SQL = ("DELETE FROM result WHERE julianday('now') - julianday(COALESCE(completed_at, created_at)) > ?")


class SealedTaskStore(_BentoStore):  # type: ignore[misc,valid-type]
    """:class:`_bentoml_impl.tasks.Sqlite3Store` with :class:`SealedSerde` and Fovea's retention (module
    docstring). Same table, same contract to BentoML's routes."""

    #: Set by :func:`install` from the settings (``FOVEA_JOB_RETENTION_HOURS``).
    retention_hours: float = DEFAULT_RETENTION_HOURS

    def __init__(self, db_file: str, serializer: Serde | None = None) -> None:
        super().__init__(db_file, serializer if serializer is not None else SealedSerde(load_sealer()))
        self.RESULT_RETENTION = int(self.retention_hours * 3600)  # BentoML's own purge on completion, aligned
        self._db_file = db_file

    async def __aenter__(self) -> SealedTaskStore:
        await super().__aenter__()
        # Deleted rows are overwritten, not left in free pages (they are sealed anyway: defence in depth).
        await self._conn.execute("PRAGMA secure_delete=ON")
        await self._purge()
        if self._db_file != ":memory:":
            for path in (self._db_file, f"{self._db_file}-wal", f"{self._db_file}-shm"):
                if os.path.exists(path):
                    os.chmod(path, 0o600)  # the WAL holds recent pages (sealed) until a checkpoint
        return self

    @classmethod
    def init_db(cls, db_file: str) -> None:
        super().init_db(db_file)
        if db_file != ":memory:":
            os.chmod(db_file, 0o600)

    async def _purge(self) -> None:
        await self._conn.execute(_PURGE_SQL, (self.retention_hours / 24.0,))
        await self._conn.commit()

    async def new_entry(self, name: str, input: Request) -> str:
        await self._purge()
        return await super().new_entry(name, input)

    async def set_result(self, task_id: str, result: Response, status: _result.ResultStatus) -> None:
        await super().set_result(task_id, result, status)
        await self._purge()


def install(retention_hours: float = DEFAULT_RETENTION_HOURS) -> None:
    """Make BentoML create :class:`SealedTaskStore`, keeping jobs ``retention_hours`` (> 0: a result must
    outlive its job long enough to be fetched), wherever it would create its own store (the server app of
    every worker, and the ``init_db`` of ``bentoml serve``). ``RuntimeError`` if BentoML's layout differs
    from the one this module was written against."""
    if not 0 < retention_hours < float("inf"):
        raise ValueError("the job retention must be a finite number of hours > 0")
    import _bentoml_impl.server.app as app
    import _bentoml_impl.tasks as tasks

    expected = ("new_entry", "get", "get_status", "set_status", "set_result", "init_db")
    if (not all(hasattr(_BentoStore, m) for m in expected)
            or getattr(app, "Sqlite3Store", None) not in (_BentoStore, SealedTaskStore)
            or "serializer" not in _BentoStore.__init__.__code__.co_varnames):
        raise RuntimeError("this BentoML's task store is not the one service/task_store.py seals: refusing "
                           "to store background jobs in clear (pin bentoml to a tested version)")
    SealedTaskStore.retention_hours = float(retention_hours)
    app.Sqlite3Store = SealedTaskStore  # type: ignore[attr-defined,misc]
    tasks.Sqlite3Store = SealedTaskStore  # type: ignore[attr-defined,misc]
    _result.Sqlite3Store = SealedTaskStore  # type: ignore[misc]  # serving.py imports it from here at start


def store_file() -> str:
    """The job store's path, as BentoML resolves it (``BENTOML_RESULT_STORE`` or ``$BENTOML_HOME``)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(BentoMLContainer.result_store_file.get())


def main(argv: list[str] | None = None) -> int:
    """``python -m service.task_store purge [--older-than-hours N] [--db FILE]``; N defaults to the
    ``FOVEA_JOB_RETENTION_HOURS`` setting, FILE to BentoML's store."""
    parser = argparse.ArgumentParser(prog="python -m service.task_store")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("purge", help="delete background jobs (sealed uploads, results) older than N hours")
    p.add_argument("--older-than-hours", type=float, default=None)
    p.add_argument("--db", type=Path, default=None, help="the store (default: BentoML's task_result.db)")
    args = parser.parse_args(argv)
    if args.older_than_hours is None:
        from service.settings import SettingsError, load_settings

        try:
            hours = load_settings().job_retention_hours
        except SettingsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    else:
        hours = args.older_than_hours
    if not 0 <= hours < float("inf"):
        print("error: --older-than-hours must be a finite number >= 0", file=sys.stderr)
        return 2
    db = str(args.db) if args.db is not None else store_file()
    if not os.path.exists(db):
        print(f"{db}: no job store (nothing to purge)")
        return 0
    n = purge(db, hours)
    print(json.dumps({"store": db, "purged": n, "older_than_hours": hours}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
