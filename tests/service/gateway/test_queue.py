"""The durable queue: sealed and atomic writes, resume after restart, backoff, dead-letter, one owner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from service.at_rest import Sealer
from service.gateway.queue import Backoff, DurableQueue, QueueLocked, item_key

UID = "1.2.826.0.1.3680043.8.498.1234567890"
PHI = b"DOE^JANE-PATIENT-0042"
PAYLOAD = b"\0" * 128 + b"DICM" + PHI + b"pixels" * 100


def test_backoff_is_exponential_and_capped() -> None:
    b = Backoff(base_s=2, factor=2, max_s=20)
    assert [b.delay(n) for n in range(0, 7)] == [0, 2, 4, 8, 16, 20, 20]


def test_enqueue_seals_the_instance_and_keeps_no_identifier_in_clear(queue: DurableQueue) -> None:
    key, duplicate = queue.enqueue(PAYLOAD, sop_instance_uid=UID, sop_class_uid="1.2.3", now=100.0)
    assert not duplicate and key == item_key(UID) and UID not in key
    folder = queue.root / "pending" / key
    files = {p.name for p in folder.iterdir()}
    assert files == {"instance.sealed", "state.json"}
    for path in folder.iterdir():  # nothing of the dataset in clear: not the name, not the UID
        raw = path.read_bytes()
        assert PHI not in raw and UID.encode() not in raw
    assert (folder / "instance.sealed").stat().st_mode & 0o077 == 0
    assert queue.instance(queue.load(key)) == PAYLOAD
    assert list((queue.root / "incoming").iterdir()) == []
    state = json.loads((folder / "state.json").read_text())
    assert state["stage"] == "analyse" and state["received_at"] == 100.0


def test_duplicate_while_pending_writes_nothing(queue: DurableQueue) -> None:
    queue.enqueue(PAYLOAD, sop_instance_uid=UID, sop_class_uid="1.2.3")
    _, duplicate = queue.enqueue(b"other", sop_instance_uid=UID, sop_class_uid="1.2.3")
    assert duplicate and queue.instance(queue.load(item_key(UID))) == PAYLOAD


def test_failed_write_leaves_nothing_pending(tmp_path: Path, sealer: Sealer) -> None:
    class Broken:
        def write(self, path: Path, data: bytes, purpose: bytes = b"") -> None:
            path.write_bytes(b"partial")
            raise OSError(28, "No space left on device")

        def read(self, path: Path, purpose: bytes = b"") -> bytes:
            raise AssertionError

    with DurableQueue(tmp_path / "q", Broken()) as q:
        with pytest.raises(OSError):
            q.enqueue(PAYLOAD, sop_instance_uid=UID, sop_class_uid="1.2.3")
        assert q.counts()["pending"] == 0 and list((q.root / "incoming").iterdir()) == []


def test_restart_resumes_pending_and_drops_unacknowledged_staging(tmp_path: Path, sealer: Sealer) -> None:
    root = tmp_path / "q"
    with DurableQueue(root, sealer) as q:
        key, _ = q.enqueue(PAYLOAD, sop_instance_uid=UID, sop_class_uid="1.2.3", now=5.0)
        q.save_results(q.load(key), [b"sr", b"sc"])
    # A crash while receiving another instance: its staging folder was never renamed (never acknowledged).
    (root / "incoming" / "abc.1234").mkdir()
    (root / "incoming" / "abc.1234" / "instance.sealed").write_bytes(b"half")
    (root / "pending" / key / ".state.json.dead.tmp").write_text("{")
    with DurableQueue(root, sealer) as q2:
        assert list((root / "incoming").iterdir()) == []
        assert not (root / "pending" / key / ".state.json.dead.tmp").exists()
        [item] = q2.due(now=10.0)
        assert item.key == key and item.stage == "forward"  # analysed before the restart: not again
        assert q2.results(item) == [b"sr", b"sc"] and q2.instance(item) == PAYLOAD


def test_another_key_cannot_open_the_queue(tmp_path: Path, sealer: Sealer) -> None:
    with DurableQueue(tmp_path / "q", sealer) as q:
        key, _ = q.enqueue(PAYLOAD, sop_instance_uid=UID, sop_class_uid="1.2.3")
    with DurableQueue(tmp_path / "q", Sealer(os.urandom(32))) as q:
        with pytest.raises(ValueError):
            q.instance(q.load(key))


def test_one_process_owns_the_queue(tmp_path: Path, sealer: Sealer) -> None:
    with DurableQueue(tmp_path / "q", sealer):
        with pytest.raises(QueueLocked):
            DurableQueue(tmp_path / "q", sealer).open()
    DurableQueue(tmp_path / "q", sealer).open().close()  # released on close


def test_retries_back_off_then_dead_letter_with_reason(queue: DurableQueue) -> None:
    backoff = Backoff(base_s=10, factor=2, max_s=1000)
    key, _ = queue.enqueue(PAYLOAD, sop_instance_uid=UID, sop_class_uid="1.2.3", now=0.0)
    item = queue.load(key)
    item, state = queue.retry_later(item, "service unreachable", backoff=backoff, max_attempts=2,
                                    counted=False, now=0.0)
    assert state == "pending" and item.attempts == 0 and item.next_attempt_at == 10.0
    assert queue.due(now=9.9) == [] and [i.key for i in queue.due(now=10.0)] == [key]
    item, state = queue.retry_later(item, "HTTP 500", backoff=backoff, max_attempts=2, now=10.0)
    assert state == "pending" and item.attempts == 1 and item.next_attempt_at == 10.0 + 20
    item, state = queue.retry_later(item, "HTTP 500", backoff=backoff, max_attempts=2, now=30.0)
    assert state == "dead" and item.reason == "analyse failed 2 times; last: HTTP 500"
    assert queue.counts() == {"pending": 0, "done": 0, "dead": 1, "pending_analyse": 0, "pending_forward": 0}
    dead = queue.load(key, "dead")
    assert dead.reason == item.reason and (queue.root / "dead" / key / "instance.sealed").exists()
    assert queue.requeue_dead(now=50.0) == 1
    again = queue.load(key)
    assert again.attempts == 0 and again.reason is None and queue.due(now=50.0)[0].key == key


def test_complete_deletes_the_identifiable_files(queue: DurableQueue) -> None:
    key, _ = queue.enqueue(PAYLOAD, sop_instance_uid=UID, sop_class_uid="1.2.3")
    item = queue.save_results(queue.load(key), [b"sr"])
    queue.complete(item)
    assert [p.name for p in (queue.root / "done" / key).iterdir()] == ["state.json"]
    assert queue.counts()["done"] == 1 and queue.counts()["pending"] == 0
    # Delivered, then sent again: queued again, and its second delivery replaces the first record.
    _, duplicate = queue.enqueue(PAYLOAD, sop_instance_uid=UID, sop_class_uid="1.2.3")
    assert not duplicate
    queue.complete(queue.load(key))
    assert queue.counts()["done"] == 1


def test_status_counts_need_no_key(queue: DurableQueue) -> None:
    queue.enqueue(PAYLOAD, sop_instance_uid=UID, sop_class_uid="1.2.3")
    k2, _ = queue.enqueue(PAYLOAD, sop_instance_uid=UID + ".2", sop_class_uid="1.2.3")
    queue.save_results(queue.load(k2), [b"x"])
    counts = DurableQueue(queue.root).counts()
    assert counts["pending"] == 2 and counts["pending_analyse"] == 1 and counts["pending_forward"] == 1
