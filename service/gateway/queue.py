"""The gateway's durable store-and-forward queue: one folder per received instance, moved between states.

Layout under the queue root::

    incoming/   staging: an item is assembled here and renamed into pending/ when complete
    pending/<key>/   instance.sealed   the received Part 10 file, sealed (AES-GCM, service.at_rest)
                     state.json        stage, attempts, next attempt time, last error (no patient data)
                     result-<n>.sealed the built results (after analysis), sealed
    done/<key>/      state.json only: the instance and results are deleted once delivered
    dead/<key>/      instance.sealed (+ results), state.json with ``reason``
    gateway.lock     held (flock) by the one gateway process that owns the queue

Contract
--------
* **Durable before acknowledged**: :meth:`DurableQueue.enqueue` returns only after the sealed instance and its
  state are fsynced and the item folder has been renamed atomically into ``pending/`` (and ``pending/``
  fsynced). The SCP answers C-STORE *Success* only after that, so an acknowledged instance survives a crash
  or power loss; a crash before the rename leaves a staging folder that :meth:`open` deletes (that instance
  was never acknowledged, so the sender still has it and retries).
* **Every state change is atomic**: ``state.json`` is replaced with write-temp/fsync/rename, and moving an
  item between states is one ``rename`` of its folder. A restart sees each item in exactly one state and
  resumes ``pending/`` where it stopped (an item whose results were saved is not analysed again).
* **Keys**: an item's key is a digest of its SOP Instance UID, so the folder names, ``state.json`` and logs
  carry no identifier of the patient or study. Re-sending an instance that is still pending is a no-op
  (the same SOP Instance UID is the same instance, PS3.3 C.12.1.1.1); one that was delivered is queued again.
* Nothing in ``state.json`` comes from the dataset except the SOP Class UID (not patient data); ``reason``
  and ``last_error`` are written by the gateway from status codes and exception type names, never from
  element values.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Literal, Protocol

from service.at_rest import atomic_write, fsync_dir

__all__ = ["Backoff", "DurableQueue", "Item", "QueueLocked", "Sealer", "item_key"]

Stage = Literal["analyse", "forward"]
State = Literal["pending", "done", "dead"]
STATES: tuple[State, ...] = ("pending", "done", "dead")
#: Associated data of every sealed queue file: a queue file cannot be opened as another kind of Fovea blob.
PURPOSE = b"gateway-queue"
INSTANCE = "instance.sealed"
STATE = "state.json"


class Sealer(Protocol):
    """What the queue needs of :class:`service.at_rest.Sealer`."""

    def write(self, path: Path, data: bytes, purpose: bytes = b"") -> None: ...

    def read(self, path: Path, purpose: bytes = b"") -> bytes: ...


class QueueLocked(RuntimeError):
    """Another gateway process owns this queue folder."""


def item_key(sop_instance_uid: str) -> str:
    """The queue key of an instance: the first 24 hex digits of SHA-256 of its SOP Instance UID (what logs
    and folder names show instead of the UID)."""
    return hashlib.sha256(sop_instance_uid.strip().encode("ascii", "replace")).hexdigest()[:24]


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Exponential backoff: the ``n``-th retry (n >= 1) waits ``min(max_s, base_s * factor ** (n - 1))``."""

    base_s: float = 2.0
    factor: float = 2.0
    max_s: float = 300.0

    def delay(self, retry: int) -> float:
        if retry < 1:
            return 0.0
        return min(self.max_s, self.base_s * self.factor ** (retry - 1))


@dataclass(frozen=True, kw_only=True)
class Item:
    """One queued instance as recorded in its ``state.json``.

    ``attempts`` counts the failures of the current stage that count towards the dead-letter limit;
    ``retries`` counts every retry (including waits for an unreachable service, which never dead-letter)
    and drives the backoff. Times are Unix epoch seconds.
    """

    key: str
    sop_class_uid: str
    received_at: float
    stage: Stage = "analyse"
    attempts: int = 0
    retries: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    reason: str | None = None
    results: int = 0
    finished_at: float | None = None
    history: list[str] = field(default_factory=list)


def _write_json(path: Path, data: dict[str, object]) -> None:
    """Replace ``path`` atomically and durably (:func:`service.at_rest.atomic_write`)."""
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))


class DurableQueue:
    """The queue folder (module docstring). Thread-safe within one process; :meth:`open` takes an exclusive
    lock so that two gateways never share one queue. Reading counts (:meth:`counts`) needs no lock or key."""

    def __init__(self, root: Path, sealer: Sealer | None = None) -> None:
        self.root = Path(root)
        self._sealer = sealer
        self._lock = threading.RLock()
        self._lock_file: IO[str] | None = None

    # ----------------------------------------------------------------------------------------------- life

    def open(self) -> DurableQueue:
        """Create the folders, take the process lock (:class:`QueueLocked` if held) and drop staging folders
        left by a crash (never acknowledged to the sender). Returns ``self``."""
        for name in ("incoming", *STATES):
            (self.root / name).mkdir(parents=True, exist_ok=True, mode=0o700)
        f = (self.root / "gateway.lock").open("a+", encoding="ascii")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            f.close()
            raise QueueLocked(f"another gateway is using the queue {self.root}") from exc
        self._lock_file = f
        for stale in (self.root / "incoming").iterdir():
            shutil.rmtree(stale, ignore_errors=True)
        for item_dir in (self.root / "pending").iterdir():  # half-written temp files of an interrupted write
            for tmp in item_dir.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        return self

    def close(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> DurableQueue:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sealer(self) -> Sealer:
        if self._sealer is None:
            raise RuntimeError("this queue was opened without a sealer (read-only use)")
        return self._sealer

    # ------------------------------------------------------------------------------------------- receive

    def enqueue(self, data: bytes, *, sop_instance_uid: str, sop_class_uid: str,
                now: float | None = None) -> tuple[str, bool]:
        """Store one received Part 10 file durably in ``pending/`` (module docstring); returns ``(key,
        duplicate)``, ``duplicate`` being true when the same instance was already pending (nothing written).
        Raises ``OSError`` when the disk fails: the caller must then NOT acknowledge the instance."""
        key = item_key(sop_instance_uid)
        target = self.root / "pending" / key
        with self._lock:
            if target.exists():
                return key, True
            staging = self.root / "incoming" / f"{key}.{secrets.token_hex(4)}"
            staging.mkdir(mode=0o700)
            try:
                self.sealer.write(staging / INSTANCE, data, PURPOSE)
                stamp = time.time() if now is None else now
                item = Item(key=key, sop_class_uid=sop_class_uid, received_at=stamp, next_attempt_at=stamp)
                _write_json(staging / STATE, asdict(item))
                os.rename(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            fsync_dir(target.parent)
            return key, False

    # --------------------------------------------------------------------------------------------- read

    def _dir(self, state: State, key: str) -> Path:
        return self.root / state / key

    def load(self, key: str, state: State = "pending") -> Item:
        data = json.loads((self._dir(state, key) / STATE).read_text(encoding="utf-8"))
        return Item(**data)

    def items(self, state: State = "pending") -> Iterator[Item]:
        """The items in ``state`` (unordered); folders without a readable state are skipped."""
        folder = self.root / state
        if not folder.is_dir():
            return
        for item_dir in folder.iterdir():
            try:
                yield self.load(item_dir.name, state)
            except (OSError, ValueError, TypeError):
                continue

    def due(self, now: float, stage: Stage | None = None) -> list[Item]:
        """Pending items whose next attempt is due, oldest first (optionally of one stage)."""
        ready = [i for i in self.items("pending") if i.next_attempt_at <= now and (stage in (None, i.stage))]
        return sorted(ready, key=lambda i: (i.received_at, i.key))

    def next_due_at(self) -> float | None:
        """When the earliest pending item is due (``None`` when nothing is pending)."""
        return min((i.next_attempt_at for i in self.items("pending")), default=None)

    def instance(self, item: Item) -> bytes:
        """The received Part 10 file of a pending item (opened from its sealed file)."""
        return self.sealer.read(self._dir("pending", item.key) / INSTANCE, PURPOSE)

    def results(self, item: Item) -> list[bytes]:
        """The saved results (Part 10 files) of a pending item in the forward stage."""
        folder = self._dir("pending", item.key)
        return [self.sealer.read(folder / f"result-{n}.sealed", PURPOSE) for n in range(item.results)]

    def counts(self) -> dict[str, int]:
        """Items per state, with ``pending`` also split by stage (``pending_analyse``, ``pending_forward``)."""
        counts = {state: 0 for state in STATES} | {"pending_analyse": 0, "pending_forward": 0}
        for state in STATES:
            for item in self.items(state):
                counts[state] += 1
                if state == "pending":
                    counts[f"pending_{item.stage}"] += 1
        return counts

    # ------------------------------------------------------------------------------------------ update

    def _save(self, item: Item, state: State = "pending") -> Item:
        _write_json(self._dir(state, item.key) / STATE, asdict(item))
        return item

    def save_results(self, item: Item, results: list[bytes]) -> Item:
        """Seal the built results into the item and move it to the ``forward`` stage (attempts reset)."""
        with self._lock:
            folder = self._dir("pending", item.key)
            for n, blob in enumerate(results):
                self.sealer.write(folder / f"result-{n}.sealed", blob, PURPOSE)
            return self._save(replace(item, stage="forward", attempts=0, retries=0, results=len(results),
                                      last_error=None, history=[*item.history, "analysed"]))

    def retry_later(self, item: Item, error: str, *, backoff: Backoff, max_attempts: int, counted: bool = True,
                    now: float | None = None) -> tuple[Item, State]:
        """Record a failure of ``item``'s current stage. A counted failure that reaches ``max_attempts``
        moves the item to ``dead/`` with ``error`` as the reason; otherwise the next attempt is scheduled
        after the backoff of its retry number. Returns the new item and its state."""
        stamp = time.time() if now is None else now
        attempts = item.attempts + (1 if counted else 0)
        retries = item.retries + 1
        updated = replace(item, attempts=attempts, retries=retries, last_error=error,
                          next_attempt_at=stamp + backoff.delay(retries),
                          history=[*item.history[-19:], f"{item.stage} failed: {error}"])
        if counted and attempts >= max_attempts:
            return self.dead_letter(updated, f"{item.stage} failed {attempts} times; last: {error}", now=stamp), \
                "dead"
        with self._lock:
            return self._save(updated), "pending"

    def dead_letter(self, item: Item, reason: str, *, now: float | None = None) -> Item:
        """Move ``item`` to ``dead/`` with ``reason`` (which must not contain patient data)."""
        with self._lock:
            final = replace(item, reason=reason, finished_at=time.time() if now is None else now)
            self._save(final)
            self._move(item.key, "pending", "dead")
            return final

    def complete(self, item: Item, *, now: float | None = None) -> Item:
        """The results were delivered: delete the sealed instance and results, move the item to ``done/``."""
        with self._lock:
            folder = self._dir("pending", item.key)
            final = replace(item, last_error=None, finished_at=time.time() if now is None else now,
                            history=[*item.history, "delivered"])
            self._save(final)
            for sealed in folder.glob("*.sealed"):
                sealed.unlink()
            self._move(item.key, "pending", "done")
            return final

    def requeue_dead(self, now: float | None = None) -> int:
        """Move every dead-lettered item back to ``pending/`` (attempts reset, due now); returns how many.
        For use after the cause was fixed (``python -m service.gateway requeue``)."""
        moved = 0
        stamp = time.time() if now is None else now
        with self._lock:
            for item in list(self.items("dead")):
                if self._dir("pending", item.key).exists():
                    continue
                self._save(replace(item, attempts=0, retries=0, next_attempt_at=stamp, reason=None,
                                   finished_at=None, history=[*item.history, "requeued"]), "dead")
                self._move(item.key, "dead", "pending")
                moved += 1
        return moved

    def _move(self, key: str, src: State, dst: State) -> None:
        target = self._dir(dst, key)
        if target.exists():  # an older delivery of the same instance: the newer record replaces it
            shutil.rmtree(target)
        os.rename(self._dir(src, key), target)
        fsync_dir(target.parent)
        fsync_dir(self.root / src)
