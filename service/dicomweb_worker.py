"""The DICOMweb analysis worker: analyses received instances after the STOW-RS response, stores SR + SC.

STOW-RS answers once the instances are checked and stored (sealed); the analysis runs here, in background
threads of the service process, so a PACS is never kept waiting on the models. The queue is the store's
``analyses`` table (durable, bounded by ``ResultStore.max_pending``): a restart loses nothing, and several
service processes on one data folder share it (each analysis is claimed atomically by one worker).

Each claimed instance takes the path every received instance takes (:class:`analysis.received.InstancePath`):
its stored bytes are parsed once under the decode limits, the parsed instance is analysed (``analyze``, the
service's :class:`~analysis.pipeline.Analyzer`), the results of every analysed frame are built
(:func:`analysis.received.result_datasets`: TID 1500 SR + Secondary Capture in the source's study) and
stored, and the analysis is ``done``. With an audit trail, the read and the analysis are recorded like an
``/analyze`` call (request id, the instance's site, input sha256, models, outcome) under the endpoint
:data:`AUDIT_ENDPOINT`. A :class:`~analysis.errors.FoveaError` (e.g. the pixel data cannot be decoded, or
the stored instance is over the limits) ends it ``failed`` with that error's code and message; any other
exception ``failed`` with ``internal_error`` (the log names the exception type only: third-party messages
may quote element values).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from pydicom.dataset import Dataset

from analysis.decode import DecodeLimits
from analysis.errors import FoveaError
from analysis.findings import Findings
from analysis.received import Analyse, AuditRecord, AuditScope, InstancePath, result_datasets
from service.audit import AuditLog, RequestRecord
from service.result_store import ResultStore

log = logging.getLogger("fovea.dicomweb")

#: ``build(findings, source) -> [SR, SC, ...]`` for every analysed frame.
BuildResults = Callable[[Findings, Dataset], Sequence[Dataset]]

#: The audit trail's endpoint for an analysis of an instance received by STOW-RS.
AUDIT_ENDPOINT = "dicomweb:analysis"


def audit_scope(audit: AuditLog, site: str | None) -> AuditScope:
    """The audit scope of the analyses of instances ``site`` sent: one record each, as :data:`AUDIT_ENDPOINT`."""

    def scope(request_id: str, input_sha256: str) -> AbstractContextManager[AuditRecord]:
        return audit.record(RequestRecord(request_id=request_id, endpoint=AUDIT_ENDPOINT, site=site,
                                          input_sha256=[input_sha256]))

    return scope


class AnalysisWorker:
    """Runs pending analyses of ``store`` on ``threads`` daemon threads. :meth:`notify` wakes them when an
    instance arrives; they also look every ``poll_s`` seconds (analyses queued by another process, or left
    ``running`` by a process that died: those are requeued after ``stale_after_s``)."""

    def __init__(self, store: ResultStore, analyze: Analyse, build_results: BuildResults = result_datasets, *,
                 limits: DecodeLimits = DecodeLimits(), audit: AuditLog | None = None, threads: int = 1,
                 poll_s: float = 2.0, stale_after_s: float = 900.0) -> None:
        self.store = store
        self.analyze = analyze
        self.build_results = build_results
        self.limits = limits
        self.audit = audit
        self.threads = threads
        self.poll_s = poll_s
        self.stale_after_s = stale_after_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the threads (idempotent)."""
        with self._lock:
            if self._threads:
                return
            self._stop.clear()
            self.store.requeue_stale(self.stale_after_s)
            for n in range(self.threads):
                t = threading.Thread(target=self._loop, name=f"fovea-dicomweb-{n}", daemon=True)
                t.start()
                self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the threads after their current analysis (an unfinished one is requeued by the next start
        once stale)."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            for t in self._threads:
                t.join(timeout)
            self._threads.clear()

    def notify(self) -> None:
        """An instance was queued: wake a thread."""
        self._wake.set()

    def _loop(self) -> None:
        last_sweep = time.monotonic()
        while not self._stop.is_set():
            try:
                worked = self.run_once()
            except Exception:  # the store itself failed (disk full, ...): keep the thread alive, retry later
                log.exception("dicomweb worker: store error")
                worked = False
            if worked:
                continue
            if time.monotonic() - last_sweep > self.stale_after_s:
                self.store.requeue_stale(self.stale_after_s)
                last_sweep = time.monotonic()
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def run_once(self) -> bool:
        """Claim and run one pending analysis; ``False`` when none was waiting."""
        claim = self.store.claim()
        if claim is None:
            return False
        uid, sha = claim
        t0 = time.perf_counter()
        error: tuple[str, str] | None = None
        try:
            self._analyse(uid)
        except FoveaError as exc:
            error = (exc.code, exc.message)
        except Exception as exc:
            log.error("dicomweb analysis failed with %s (instance hash %s…)", type(exc).__name__, sha[:12])
            log.debug("dicomweb analysis exception", exc_info=True)
            error = ("internal_error", "the analysis failed on the server; the server log has the details")
        self.store.finish(uid, sha, error=error)
        log.info("dicomweb analysis %s in %.0f ms (instance hash %s…)",
                 "failed: " + error[0] if error else "done", 1000 * (time.perf_counter() - t0), sha[:12])
        return True

    def path(self, site: str | None) -> InstancePath[Dataset]:
        """The path of an instance ``site`` sent (module docstring)."""
        return InstancePath(analyser=self.analyze, limits=self.limits, build=self.build_results,
                            audit=audit_scope(self.audit, site) if self.audit is not None else None)

    def _analyse(self, uid: str) -> None:
        state = self.store.analysis(uid)

        def store_results(results: Sequence[Dataset]) -> None:
            for ds in results:
                self.store.put_result(ds, source_sop_instance_uid=uid)

        self.path(state.site if state is not None else None).run(self.store.received(uid), store_results)

    def drain(self, timeout_s: float = 60.0) -> int:
        """Run pending analyses in the calling thread until none waits (tests, command-line use); returns how
        many ran."""
        n, deadline = 0, time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.run_once():
            n += 1
        return n

