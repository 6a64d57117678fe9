"""One path for a received DICOM instance, whichever door it came through (STOW-RS, C-STORE).

::

    Part 10 bytes -> read (parsed once, under the decode limits, every header check made)
                  -> analyse (the parsed instance, not the bytes: it is not parsed again)
                  -> results per analysed frame (frame 0, then ``findings.additional_frames``)
                  -> deliver (the door's: store them, or forward them)

with the audit record (request id, input sha256, models, outcome) wrapping the read, the analysis and (for a
door that delivers at once) the results and their delivery, when the door gives an :data:`AuditScope`. :class:`InstancePath` holds the steps; a door that delivers at once
calls :meth:`InstancePath.run`, a door that saves its work between steps (the gateway's durable queue) calls
:meth:`InstancePath.analyse` and :meth:`InstancePath.results` and delivers later. The door supplies what
differs: how the analysis runs (an in-process :class:`~analysis.pipeline.Analyzer`, or the service over
HTTP), the result format (datasets, Part 10 files) and the delivery.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from pydicom.dataset import Dataset

from analysis.decode_types import DecodeLimits
from analysis.dicom_header import DicomInstance, read_dicom_instance
from analysis.dicom_out import build_results
from analysis.errors import FoveaError
from analysis.findings import Findings

__all__ = ["Analyse", "AnalysedInstance", "AuditRecord", "AuditScope", "InstancePath", "frame_findings",
           "result_datasets"]

R = TypeVar("R")


class Analyse(Protocol):
    """Analyses one parsed instance (every analysed frame) under ``request_id``; raises
    :class:`~analysis.errors.FoveaError` when the instance is refused."""

    def __call__(self, instance: DicomInstance, *, request_id: str) -> Findings: ...


class AuditRecord(Protocol):
    """What the path tells the audit record: the findings, or the refusal (:class:`service.audit.RequestRecord`
    is one)."""

    def answered(self, result: Findings) -> None: ...

    def refused(self, exc: FoveaError) -> None: ...


#: ``scope(request_id, input_sha256)``: a context manager that yields the record to fill and commits it when
#: the block ends (an exception escaping the block is recorded as a failure by the scope).
AuditScope = Callable[[str, str], AbstractContextManager[AuditRecord]]


def frame_findings(findings: Findings) -> list[Findings]:
    """The findings of each analysed frame, in order: frame 0, then ``findings.additional_frames``, each
    without frames of its own."""
    return [f.model_copy(update={"additional_frames": []}) for f in (findings, *findings.additional_frames)]


def result_datasets(findings: Findings, source: Dataset, *, manufacturer: str = "Fovea",
                    device_serial: str | None = None) -> list[Dataset]:
    """The results of one analysed instance: for every analysed frame (:func:`frame_findings`) its SR, then
    its Secondary Capture (:func:`analysis.dicom_out.build_results`; each frame's UIDs are its own and
    deterministic). ``source``: the analysed instance's dataset."""
    out: list[Dataset] = []
    for frame in frame_findings(findings):
        results = build_results(frame, source, manufacturer=manufacturer, device_serial=device_serial)
        out += [results.sr, results.sc]
    return out


@dataclass(frozen=True, eq=False)
class AnalysedInstance:
    """A read and analysed instance: the parse and the findings (every analysed frame)."""

    instance: DicomInstance
    findings: Findings


@dataclass(frozen=True, kw_only=True)
class InstancePath(Generic[R]):
    """The steps of the module docstring for one door.

    ``analyser``: how the door analyses a parsed instance. ``limits``: the decode limits of the read.
    ``build``: ``(findings, source dataset) -> results`` in the door's format (:func:`result_datasets`, or
    something built on it). ``audit``: the door's audit scope, ``None`` when the analysis is audited elsewhere
    (the gateway's analyses are audited by the service's ``/analyze``)."""

    analyser: Analyse
    limits: DecodeLimits
    build: Callable[[Findings, Dataset], Sequence[R]]
    audit: AuditScope | None = None

    def read(self, data: bytes) -> DicomInstance:
        """Parse ``data`` once under :attr:`limits` (:func:`analysis.dicom_header.read_dicom_instance`)."""
        return read_dicom_instance(data, limits=self.limits)

    def analyse(self, data: bytes, *, request_id: str | None = None,
                then: Callable[[AnalysedInstance], None] | None = None) -> AnalysedInstance:
        """Read and analyse ``data`` inside the audit record (when there is an audit scope), then run ``then``
        on the result inside it too, so the record says what became of the whole piece of work. Raises
        :class:`~analysis.errors.FoveaError` when the instance is refused (recorded as a refusal), and
        whatever the door's ``analyse`` or ``then`` raises otherwise (recorded as a failure by the scope)."""
        request_id = request_id or uuid.uuid4().hex
        scope = self.audit(request_id, hashlib.sha256(data).hexdigest()) if self.audit else nullcontext(None)
        refusal: FoveaError | None = None
        with scope as record:
            try:
                instance = self.read(data)
                analysed = AnalysedInstance(instance, self.analyser(instance, request_id=request_id))
                if then is not None:
                    then(analysed)
            except FoveaError as exc:  # a refusal is an outcome of the record, not a failure of the scope
                if record is not None:
                    record.refused(exc)
                refusal = exc
            else:
                if record is not None:
                    record.answered(analysed.findings)
        if refusal is not None:
            raise refusal
        return analysed

    def results(self, analysed: AnalysedInstance) -> Sequence[R]:
        """The results of every analysed frame, in the door's format (:attr:`build`)."""
        return self.build(analysed.findings, analysed.instance.dataset)

    def run(self, data: bytes, deliver: Callable[[Sequence[R]], None], *, request_id: str | None = None
            ) -> AnalysedInstance:
        """The whole path for a door that delivers at once: :meth:`analyse`, :meth:`results` and ``deliver``,
        all inside the audit record (a result that cannot be built or stored is not recorded as answered)."""
        return self.analyse(data, request_id=request_id, then=lambda analysed: deliver(self.results(analysed)))
