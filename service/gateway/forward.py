"""Delivering results to the destination: DIMSE C-STORE (PS3.4 Annex B, Storage Service Class) or DICOMweb
STOW-RS (PS3.18 10.5).

A sender's :meth:`send` takes the results as Part 10 files and either delivers all of them or raises
:class:`ForwardFailed` with a reason that names the destination's answer (association rejected, a C-STORE
status, an HTTP status) and never an element value. Re-sending after a partial failure is safe: the results'
UIDs are deterministic (:mod:`analysis.dicom_out`), so the destination receives the same instances again.
"""

from __future__ import annotations

import io
import re
import secrets
from dataclasses import dataclass
from typing import Protocol

import httpx
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
from pynetdicom import AE

__all__ = ["Destination", "DimseSender", "ForwardFailed", "Sender", "StowSender", "to_part10"]


# PS3.4 Table B.2-1: C-STORE statuses that mean "stored" (success and the three warnings).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2 AE: 16 chars, default repertoire, no "\"


class ForwardFailed(Exception):
    """The destination did not take the results; the message names why (no patient data)."""


class Sender(Protocol):
    def send(self, results: list[bytes]) -> None: ...


@dataclass(frozen=True)
class Destination:
    """A DICOM peer: ``AET@host:port``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``"ORTHANC@pacs.example:4242"`` -> ``Destination``; ``ValueError`` naming the problem."""
        aet, sep, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not sep or not colon or not host or not port.isdigit():
            raise ValueError(f"destination must be AET@host:port, not {text!r}")
        if not _AE_TITLE.match(aet) or aet.strip() != aet:
            raise ValueError(f"{aet!r} is not a valid AE title (1-16 characters, no backslash, no edge spaces)")
        if not 0 < int(port) < 65536:
            raise ValueError(f"port {port} is out of range")
        return cls(aet, host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def to_part10(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file (PS3.10 7.1): file meta added from the dataset when it has none;
    Explicit VR Little Endian unless the dataset's file meta names another transfer syntax."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "ImplementationClassUID" not in meta:
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class DimseSender:
    """C-STORE SCU to one destination. One association per :meth:`send` (results of one instance), proposing
    each result's SOP class in its own transfer syntax (plus the uncompressed ones)."""

    def __init__(self, destination: Destination, *, calling_ae: str = "FOVEA", timeout_s: float = 30.0) -> None:
        self.destination = destination
        self.calling_ae = calling_ae
        self.timeout_s = timeout_s

    def send(self, results: list[bytes]) -> None:
        datasets = [pydicom.dcmread(io.BytesIO(blob)) for blob in results]
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
            syntaxes = {str(ds.file_meta.TransferSyntaxUID) for ds in datasets if ds.SOPClassUID == sop_class}
            ae.add_requested_context(sop_class, sorted(syntaxes | {ExplicitVRLittleEndian, ImplicitVRLittleEndian}))
        dest = self.destination
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            what = "rejected" if assoc.is_rejected else "could not be established (refused, aborted or no answer)"
            raise ForwardFailed(f"association with {dest} {what}")
        try:
            for ds in datasets:
                try:
                    status = assoc.send_c_store(ds)
                except ValueError as exc:  # no accepted presentation context for this SOP class
                    raise ForwardFailed(f"{dest} accepted no presentation context for SOP class "
                                        f"{ds.SOPClassUID}") from exc
                if "Status" not in status:
                    raise ForwardFailed(f"no C-STORE response from {dest} (timeout or abort)")
                if status.Status not in _STORED:
                    raise ForwardFailed(f"{dest} answered C-STORE with status 0x{status.Status:04X}")
        finally:
            if assoc.is_established:
                assoc.release()


class StowSender:
    """STOW-RS to ``{base_url}/studies`` (PS3.18 10.5): one ``multipart/related; type="application/dicom"``
    request per :meth:`send`. 200 is success; 202 (some instances stored with warnings or failed) and any
    other status are failures, retried like a DIMSE failure."""

    def __init__(self, base_url: str, *, timeout_s: float = 60.0, headers: dict[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = base_url.rstrip("/") + "/studies"
        # What reasons and logs name: the URL without any user:password part.
        self._label = str(httpx.URL(self.url).copy_with(username=None, password=None))
        self._client = httpx.Client(timeout=timeout_s, headers=headers or {}, transport=transport)

    def send(self, results: list[bytes]) -> None:
        boundary = f"fovea-{secrets.token_hex(12)}"
        body = b"".join(
            b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + blob + b"\r\n"
            for blob in results) + b"--" + boundary.encode() + b"--\r\n"
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        try:
            response = self._client.post(self.url, content=body,
                                         headers={"Content-Type": content_type, "Accept": "application/dicom+json"})
        except httpx.HTTPError as exc:
            raise ForwardFailed(f"STOW-RS to {self._label} failed ({type(exc).__name__})") from exc
        if response.status_code != 200:
            raise ForwardFailed(f"STOW-RS to {self._label} answered HTTP {response.status_code}")
