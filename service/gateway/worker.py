"""The store-and-forward loop: pending item -> analysis (service HTTP API) -> results (SR + SC) -> destination.

Each pending item goes through two stages, each saved before the next starts, so a restart repeats at most
the stage it interrupted:

1. ``analyse``: the sealed instance takes the path every received instance takes
   (:class:`analysis.received.InstancePath`): it is parsed once under the decode limits, sent to
   ``POST /analyze`` (which audits the analysis), and the findings with the parsed dataset become the results
   (:func:`analysis.received.result_datasets`: TID 1500 SR + Secondary Capture, per analysed frame), which are
   sealed into the item (stage ``forward``). An unreachable service (:class:`ServiceUnavailable`) is waited
   for with backoff and never dead-letters (and holds back every other analysis until the wait is over); an
   instance refused under the limits, a refusal by the service (:class:`Rejected`) or results that cannot be
   built dead-letter at once; other failures are retried up to ``max_attempts`` times.
2. ``forward``: the results are sent by the :class:`~service.gateway.forward.Sender`; a failure is retried
   with backoff up to ``max_attempts`` times, then dead-lettered with the last reason.

Logs name items by their queue key (a digest of the SOP Instance UID), never by patient or study data.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pydicom.dataset import Dataset

from analysis.decode import DecodeLimits, DicomInstance
from analysis.errors import FoveaError
from analysis.findings import Findings
from analysis.received import InstancePath, result_datasets
from service.gateway.analyse import AnalysisFailed, Rejected, ServiceUnavailable
from service.gateway.forward import ForwardFailed, Sender
from service.gateway.queue import Backoff, DurableQueue, Item

__all__ = ["Worker", "default_builder"]

log = logging.getLogger("fovea.gateway")

Analyse = Callable[[bytes], Findings]
Build = Callable[[Findings, Dataset], list[bytes]]


def default_builder(*, manufacturer: str = "Fovea", device_serial: str | None = None) -> Build:
    """The results of :func:`analysis.received.result_datasets` (for every analysed frame, frame 0 then
    ``findings.additional_frames``, its SR then its SC, each frame's UIDs its own and deterministic) as Part
    10 files."""
    from service.gateway.forward import to_part10

    def build(findings: Findings, source: Dataset) -> list[bytes]:
        return [to_part10(ds) for ds in result_datasets(findings, source, manufacturer=manufacturer,
                                                        device_serial=device_serial)]

    return build


class Worker:
    """Runs the two stages over the queue (module docstring); :meth:`run_once` is one pass (for tests and
    the loop), :meth:`run` loops in a thread until :meth:`stop`. ``analyse``: Part 10 bytes -> Findings (the
    service's ``/analyze``); ``build``: findings + source dataset -> the results as Part 10 files
    (:func:`default_builder`); ``limits``: the decode limits a queued instance is read under."""

    def __init__(self, queue: DurableQueue, *, analyse: Analyse, build: Build, sender: Sender,
                 max_attempts: int = 8, backoff: Backoff = Backoff(), limits: DecodeLimits = DecodeLimits(),
                 clock: Callable[[], float] = time.time) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.queue = queue
        self.analyse = analyse
        self.build = build
        self.sender = sender
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.clock = clock
        # Late-bound: analyse and build may be replaced on a running worker (tests do).
        self.path: InstancePath[bytes] = InstancePath(analyser=self._analyse_remotely, limits=limits,
                                                      build=lambda findings, source: self.build(findings, source))
        self._service_hold_until = 0.0
        self._service_failures = 0
        self._wake = threading.Event()
        self._stop = threading.Event()

    # ------------------------------------------------------------------------------------------- loop

    def wake(self) -> None:
        """Called by the SCP after it queued an instance: start on it now."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self, idle_s: float = 5.0) -> None:
        """Process due items until :meth:`stop`; between passes sleep until the next item is due (at most
        ``idle_s``) or a new instance arrives."""
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # never let one bad item kill the loop; the item is retried next pass
                log.exception("gateway worker pass failed")
            nxt = self.next_due_at()
            wait = idle_s if nxt is None else nxt - self.clock()
            self._wake.wait(timeout=min(idle_s, max(0.05, wait)))
            self._wake.clear()

    def next_due_at(self) -> float | None:
        """When the next pending item can be tried: its own next attempt, and for the analyse stage not before
        the hold on an unavailable service ends (``None`` when nothing is pending)."""
        return min((max(i.next_attempt_at, self._service_hold_until) if i.stage == "analyse" else i.next_attempt_at
                    for i in self.queue.items("pending")), default=None)

    def run_once(self) -> int:
        """One pass over the due items; returns how many changed state or stage."""
        changed = 0
        for item in self.queue.due(self.clock()):
            if self._stop.is_set():
                break
            if item.stage == "analyse" and self.clock() < self._service_hold_until:
                continue
            changed += self.process(item)
        return changed

    # ------------------------------------------------------------------------------------------ stages

    def process(self, item: Item) -> int:
        """Advance one item as far as it goes now; returns 1 when it changed stage or state, else 0."""
        if item.stage == "analyse":
            analysed = self._analyse(item)
            if analysed is None:
                return 1 if self._was_dead(item) else 0
            item = analysed
        return self._forward(item)

    def _was_dead(self, item: Item) -> bool:
        return not (self.queue.root / "pending" / item.key).exists()

    def _analyse_remotely(self, instance: DicomInstance, *, request_id: str) -> Findings:
        """The service analyses the Part 10 bytes (under its own request id, in its audit trail)."""
        return self.analyse(instance.data)

    def _analyse(self, item: Item) -> Item | None:
        try:
            data = self.queue.instance(item)
        except Exception as exc:  # a sealed file that cannot be opened will not get better
            self.queue.dead_letter(item, f"queued instance unreadable ({type(exc).__name__})")
            log.error("item %s dead-lettered: queued instance unreadable (%s)", item.key, type(exc).__name__)
            return None
        started = time.perf_counter()
        try:
            analysed = self.path.analyse(data)
        except FoveaError as exc:  # refused under the limits at this door: it will not get better
            # The decoder's message describes the file, never the patient (analysis.errors).
            self.queue.dead_letter(item, f"queued instance refused ({exc.code}: {exc.message})"[:300],
                                   now=self.clock())
            log.error("item %s dead-lettered: queued instance refused (%s)", item.key, exc.code)
            return None
        except ServiceUnavailable as exc:
            self._service_failures += 1
            self._service_hold_until = self.clock() + self.backoff.delay(self._service_failures)
            self.queue.retry_later(item, str(exc), backoff=self.backoff, max_attempts=self.max_attempts,
                                   counted=False, now=self.clock())
            log.warning("service unavailable (%s); analyses paused for %.0f s", exc,
                        self._service_hold_until - self.clock())
            return None
        except Rejected as exc:
            self.queue.dead_letter(item, str(exc), now=self.clock())
            log.error("item %s dead-lettered: %s", item.key, exc)
            return None
        except AnalysisFailed as exc:
            self._fail(item, str(exc))
            return None
        self._service_failures, self._service_hold_until = 0, 0.0
        findings, done = analysed.findings, time.perf_counter()
        try:
            results = list(self.path.results(analysed))
        except Exception as exc:  # deterministic: the same findings and source fail the same way again
            self.queue.dead_letter(item, f"results could not be built ({type(exc).__name__})", now=self.clock())
            log.exception("item %s dead-lettered: results could not be built", item.key)
            return None
        log.info("item %s analysed (grade %s, gradable %s; service %.2f s); %d results built in %.2f s", item.key,
                 findings.dr_grade.grade, findings.quality.gradable, done - started, len(results),
                 time.perf_counter() - done)
        return self.queue.save_results(item, results)

    def _forward(self, item: Item) -> int:
        try:
            self.sender.send(self.queue.results(item))
        except ForwardFailed as exc:
            self._fail(item, str(exc))
            return 0
        except Exception as exc:  # e.g. a network error pynetdicom did not wrap
            self._fail(item, f"sending failed ({type(exc).__name__})")
            return 0
        self.queue.complete(item, now=self.clock())
        log.info("item %s delivered (%d results)", item.key, item.results)
        return 1

    def _fail(self, item: Item, error: str) -> None:
        updated, state = self.queue.retry_later(item, error, backoff=self.backoff,
                                                max_attempts=self.max_attempts, now=self.clock())
        if state == "dead":
            log.error("item %s dead-lettered after %d attempts: %s", item.key, updated.attempts, error)
        else:
            log.warning("item %s %s attempt %d/%d failed: %s; retry in %.0f s", item.key, item.stage,
                        updated.attempts, self.max_attempts, error, updated.next_attempt_at - self.clock())
