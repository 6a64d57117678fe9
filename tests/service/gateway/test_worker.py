"""The store-and-forward loop over a real queue, with the service, the result builder and the destination
replaced by recording functions (the real ones are in test_analyse/test_forward and the integration test)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from analysis.decode import DecodeLimits
from analysis.findings import Findings
from service.gateway.analyse import AnalysisFailed, Rejected, ServiceUnavailable
from service.gateway.forward import ForwardFailed
from service.gateway.queue import Backoff, DurableQueue
from service.gateway.worker import Worker


def findings(grade: int = 2) -> Findings:
    return Findings.model_validate({
        "request_id": "r", "disclaimer": "synthetic", "timing_ms": {}, "models": [],
        "image": {"source": "dicom", "width": 128, "height": 128},
        "quality": {"gradable": True, "score": 0.9, "method": "test"},
        "dr_grade": {"grade": grade, "label": "x", "probabilities": [0.2] * 5},
        "saliency": {"target_grade": grade, "heatmap_png": "", "overlay_png": ""},
    })


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fakes:
    """Scripted service and destination: each call pops the next outcome (an exception or a value)."""

    def __init__(self, analyse: list[object] | None = None, send: list[object] | None = None) -> None:
        self.analyse_script = list(analyse or [])
        self.send_script = list(send or [])
        self.analysed: list[bytes] = []
        self.sent: list[list[bytes]] = []
        self.built: list[tuple[int, str]] = []

    def analyse(self, data: bytes) -> Findings:
        self.analysed.append(data)
        outcome = self.analyse_script.pop(0) if self.analyse_script else findings()
        if isinstance(outcome, Exception):
            raise outcome
        assert isinstance(outcome, Findings)
        return outcome

    def build(self, f: Findings, source: pydicom.Dataset) -> list[bytes]:
        self.built.append((f.dr_grade.grade, source.SOPInstanceUID))
        return [b"SR:" + source.SOPInstanceUID.encode(), b"SC"]

    def send(self, results: list[bytes]) -> None:
        self.sent.append(results)
        outcome = self.send_script.pop(0) if self.send_script else None
        if isinstance(outcome, Exception):
            raise outcome


@pytest.fixture
def queued(queue: DurableQueue, op_file: Path) -> str:
    ds = pydicom.dcmread(op_file)
    key, _ = queue.enqueue(op_file.read_bytes(), sop_instance_uid=ds.SOPInstanceUID,
                           sop_class_uid=ds.SOPClassUID, now=1000.0)
    return key


def make(queue: DurableQueue, fakes: Fakes, clock: Clock, max_attempts: int = 3) -> Worker:
    w = Worker(queue, analyse=fakes.analyse, build=fakes.build, sender=fakes, max_attempts=max_attempts,
               backoff=Backoff(base_s=10, factor=2, max_s=100), clock=clock)
    w.sender = fakes  # the Sender protocol: .send(results)
    return w


def test_happy_path_analyses_builds_sends_and_forgets(queue: DurableQueue, queued: str, op_file: Path) -> None:
    fakes, clock = Fakes(), Clock()
    assert make(queue, fakes, clock).run_once() == 1
    uid = pydicom.dcmread(op_file).SOPInstanceUID
    assert fakes.analysed == [op_file.read_bytes()] and fakes.built == [(2, uid)]
    assert fakes.sent == [[b"SR:" + uid.encode(), b"SC"]]
    assert queue.counts()["done"] == 1 and queue.load(queued, "done").history[-1] == "delivered"
    assert not list((queue.root / "done" / queued).glob("*.sealed"))


def test_service_down_waits_without_dead_lettering(queue: DurableQueue, queued: str) -> None:
    fakes, clock = Fakes(analyse=[ServiceUnavailable("service unreachable (ConnectError)")] * 5), Clock()
    worker = make(queue, fakes, clock, max_attempts=2)
    delays = []
    for _ in range(5):
        worker.run_once()
        item = queue.load(queued)
        delays.append(item.next_attempt_at - clock.now)
        assert worker.run_once() == 0  # held: nothing is tried before the backoff is over
        clock.now = item.next_attempt_at
    assert delays == [10, 20, 40, 80, 100] and len(fakes.analysed) == 5
    assert worker.next_due_at() == clock.now  # the loop sleeps until then, it does not spin
    assert queue.counts()["pending"] == 1 and queue.load(queued).attempts == 0
    worker.run_once()  # the service is back
    assert queue.counts()["done"] == 1


def test_rejected_instance_is_dead_lettered_at_once(queue: DurableQueue, queued: str) -> None:
    fakes = Fakes(analyse=[Rejected("service refused the instance (HTTP 422): unsupported_dicom: ...")])
    make(queue, fakes, Clock()).run_once()
    dead = queue.load(queued, "dead")
    assert "HTTP 422" in dead.reason and fakes.sent == []


def test_analysis_failures_count_then_dead_letter(queue: DurableQueue, queued: str) -> None:
    fakes, clock = Fakes(analyse=[AnalysisFailed("service failed (HTTP 500)")] * 3), Clock()
    worker = make(queue, fakes, clock, max_attempts=3)
    for _ in range(3):
        worker.run_once()
        clock.now += 1000
    assert queue.load(queued, "dead").reason == "analyse failed 3 times; last: service failed (HTTP 500)"


def test_forward_retries_with_backoff_and_never_reanalyses(queue: DurableQueue, queued: str) -> None:
    fakes, clock = Fakes(send=[ForwardFailed("association with PACS@h:1 rejected")] * 2), Clock()
    worker = make(queue, fakes, clock, max_attempts=3)
    worker.run_once()
    item = queue.load(queued)
    assert item.stage == "forward" and item.attempts == 1 and item.next_attempt_at == clock.now + 10
    clock.now += 10
    worker.run_once()
    assert queue.load(queued).next_attempt_at == clock.now + 20
    clock.now += 20
    worker.run_once()
    assert queue.counts()["done"] == 1 and len(fakes.analysed) == 1 and len(fakes.sent) == 3


def test_forward_dead_letters_after_max_attempts_keeping_results(queue: DurableQueue, queued: str) -> None:
    fakes, clock = Fakes(send=[ForwardFailed("C-STORE status 0xA700")] * 3), Clock()
    worker = make(queue, fakes, clock, max_attempts=3)
    for _ in range(3):
        worker.run_once()
        clock.now += 1000
    dead = queue.load(queued, "dead")
    assert dead.reason == "forward failed 3 times; last: C-STORE status 0xA700"
    assert (queue.root / "dead" / queued / "result-0.sealed").exists()
    queue.requeue_dead(now=clock.now)
    worker.run_once()  # requeued in the forward stage: delivered without a new analysis
    assert queue.counts()["done"] == 1 and len(fakes.analysed) == 1


def test_restart_between_stages_resumes_forwarding(tmp_path: Path, sealer, op_file: Path) -> None:
    root = tmp_path / "q"
    ds = pydicom.dcmread(op_file)
    with DurableQueue(root, sealer) as q:
        q.enqueue(op_file.read_bytes(), sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                  now=1000.0)
        first = Fakes(send=[ForwardFailed("destination down")])
        make(q, first, Clock()).run_once()
    with DurableQueue(root, sealer) as q:  # a new process
        second, clock = Fakes(), Clock()
        clock.now += 1000
        make(q, second, clock).run_once()
        assert second.analysed == [] and second.sent == [first.sent[0]] and q.counts()["done"] == 1


def test_unreadable_sealed_file_is_dead_lettered(queue: DurableQueue, queued: str) -> None:
    (queue.root / "pending" / queued / "instance.sealed").write_bytes(b"FVA1" + b"\0" * 40)
    make(queue, Fakes(), Clock()).run_once()
    assert queue.load(queued, "dead").reason == "queued instance unreadable (SealError)"


def test_over_limit_instance_is_dead_lettered_before_the_service_sees_it(queue: DurableQueue, queued: str,
                                                                         op_file: Path) -> None:
    fakes = Fakes()
    worker = Worker(queue, analyse=fakes.analyse, build=fakes.build, sender=fakes, clock=Clock(),
                    limits=DecodeLimits(max_bytes=len(op_file.read_bytes()) - 1))
    worker.run_once()
    assert queue.load(queued, "dead").reason.startswith("queued instance refused (payload_too_large: ")
    assert fakes.analysed == [] and fakes.sent == []


def test_the_service_is_sent_the_bytes_and_the_results_are_built_from_the_parse(queue: DurableQueue, queued: str,
                                                                                 op_file: Path) -> None:
    fakes = Fakes()
    sources: list[pydicom.Dataset] = []
    worker = make(queue, fakes, Clock())
    worker.build = lambda f, source: sources.append(source) or [b"SR", b"SC"]
    worker.run_once()
    assert fakes.analysed == [op_file.read_bytes()]
    assert [s.SOPInstanceUID for s in sources] == [pydicom.dcmread(op_file).SOPInstanceUID]
    assert "PixelData" in sources[0]  # the one parse under the limits, pixel data still encoded


def test_result_build_failure_is_dead_lettered(queue: DurableQueue, queued: str) -> None:
    fakes = Fakes()
    worker = make(queue, fakes, Clock())

    def broken(f: Findings, source: pydicom.Dataset) -> list[bytes]:
        raise KeyError("PatientName")

    worker.build = broken
    worker.run_once()
    assert queue.load(queued, "dead").reason == "results could not be built (KeyError)"


def test_run_loop_wakes_on_new_instances_and_stops(queue: DurableQueue, op_file: Path) -> None:
    import threading
    import time

    fakes = Fakes()
    worker = Worker(queue, analyse=fakes.analyse, build=fakes.build, sender=fakes)
    thread = threading.Thread(target=worker.run, kwargs={"idle_s": 30.0})
    thread.start()
    try:
        ds = pydicom.dcmread(op_file)
        queue.enqueue(op_file.read_bytes(), sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID)
        worker.wake()  # what the SCP does: without it the loop would sleep idle_s (30 s)
        deadline = time.monotonic() + 10
        while queue.counts()["done"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert queue.counts()["done"] == 1
    finally:
        worker.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
