"""The command line: status (text and JSON, no key needed), requeue (refused while a gateway holds the
queue), argument errors."""

from __future__ import annotations

import json

import pytest

from service.gateway.__main__ import main
from service.gateway.queue import Backoff, DurableQueue


def test_status_prints_counts_and_dead_reasons(queue: DurableQueue, capsys: pytest.CaptureFixture[str]) -> None:
    k1, _ = queue.enqueue(b"a", sop_instance_uid="1.2.3.1", sop_class_uid="1.2")
    queue.enqueue(b"b", sop_instance_uid="1.2.3.2", sop_class_uid="1.2")
    queue.dead_letter(queue.load(k1), "service refused the instance (HTTP 422): unsupported_dicom: x")
    assert main(["status", "--queue", str(queue.root)]) == 0
    text = capsys.readouterr().out
    assert "pending       1" in text and "dead          1" in text and f"dead     {k1}  service refused" in text
    assert main(["status", "--queue", str(queue.root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"]["dead"] == 1 and data["dead"][0]["key"] == k1


def test_status_of_a_missing_queue_fails(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--queue", str(tmp_path / "nope")]) == 1


def test_requeue_is_refused_while_the_gateway_runs(queue: DurableQueue, capsys: pytest.CaptureFixture[str]) -> None:
    k, _ = queue.enqueue(b"a", sop_instance_uid="1.2.3.1", sop_class_uid="1.2")
    queue.retry_later(queue.load(k), "HTTP 500", backoff=Backoff(), max_attempts=1)
    assert main(["requeue", "--queue", str(queue.root)]) == 1  # `queue` holds the lock, like a gateway
    queue.close()
    assert main(["requeue", "--queue", str(queue.root)]) == 0
    assert "1 item(s) moved back" in capsys.readouterr().out
    assert DurableQueue(queue.root).counts()["pending"] == 1


def test_serve_needs_a_destination(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "11112"]) == 2
    with pytest.raises(SystemExit):
        main(["--destination", "no-at-sign"])
    assert "AET@host:port" in capsys.readouterr().err
