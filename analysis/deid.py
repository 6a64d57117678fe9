"""De-identification of DICOM datasets persisted beyond a request: the PS3.15 Annex E Basic Application Level
Confidentiality Profile (Table E.1-1), for the attributes fundus photographs carry.

Contract
--------
:func:`deidentify` returns a de-identified copy of a dataset (the input is not modified):

* every attribute of :data:`ACTIONS` present, at any sequence depth, gets its Table E.1-1 Basic Profile action:
  ``X`` remove, ``Z`` replace with an empty value, ``D`` replace with a dummy value of the same VR, ``U``
  replace the UID by a consistent, non-reversible one (below), ``K`` keep; compound actions (``X/Z``,
  ``Z/D``, ``X/Z/D``, ``X/D``) resolve as PS3.15 E.3.1 asks - the mildest one the IOD allows: ``D`` where
  the Ophthalmic Photography IOD makes the attribute Type 1, ``Z`` where Type 2, else ``X``
  (:data:`TYPE1`, :data:`TYPE2`);
* any other UI attribute whose value is not a well-known DICOM UID (pydicom's registry) is ``U`` too, so
  instance UIDs nested in references cannot survive under a name the table misses;
* private attributes (odd groups) are removed (E.1-1: "Private attributes: X"), and so are curve (50xx) and
  overlay (60xx) groups (E.1-1: Curve Data, Overlay Data, Overlay Comments: X);
* Patient Identity Removed (0012,0062) ``YES``, De-identification Method (0012,0063) and the
  De-identification Method Code Sequence (0012,0064) with DCM 113100 "Basic Application Confidentiality
  Profile" and, with ``retain_uids``, 113110 "Retain UIDs Option" (CID 7050); Longitudinal Temporal
  Information Modified (0028,0303) ``REMOVED`` (dates are removed or emptied);
* a dataset declaring Burned In Annotation (0028,0301) ``YES`` is refused (:class:`DeidentificationError`):
  the Clean Pixel Data option is not implemented, and the Basic Profile alone cannot clean such pixels.

:func:`write` saves a de-identified dataset as a Part 10 file with the 128-byte preamble zeroed
(CVE-2019-11687: a preamble can hold an executable header, making the file a polyglot) and the file meta
rebuilt (no source / sending AE titles).

UIDs: the Retain UIDs decision
------------------------------
Fovea routes results back by the request's original UIDs, which it holds in memory while it answers; copies
persisted after that (debugging samples, a store-and-forward queue) do not need them. The default therefore
replaces UIDs (``U``) by ``2.25.<decimal of the first 128 bits of HMAC-SHA256(key, uid)>`` (PS3.5 B.2 UUID-
derived form, <= 44 characters): the same original gives the same replacement under one key (a study stays a
study), and without the key nobody can test a guess. ``key`` comes from configuration
(``FOVEA_DEID_KEY``, hex); without it a random per-process key is used (consistent within a run only).
``retain_uids=True`` applies the Retain UIDs Option (E.3.9; recorded as DCM 113110) for a queue that must
route by the original UIDs: those files still point at the patient's record in the source PACS, so keep
them encrypted at rest and purge them on schedule.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import io
from copy import deepcopy
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID_dictionary

KEY_ENV: Final = "FOVEA_DEID_KEY"
METHOD: Final = "PS3.15 E.1-1 Basic Profile (Fovea analysis.deid)"  # LO: <= 64 characters with the suffix
MAX_DEPTH: Final = 16  # as analysis.decode.DecodeLimits.max_sequence_depth

#: Table E.1-1 Basic Profile actions for the attributes of fundus photographs (Ophthalmic Photography and VL
#: Photographic IODs: Patient, General Study, Patient Study, General Series, General Equipment, Acquisition,
#: OP / VL Image, SOP Common and the request / procedure attributes modalities copy from the worklist).
#: keyword -> action, as printed in the Basic Profile column.
ACTIONS: Final[dict[str, str]] = {
    # Patient module
    "PatientName": "Z",
    "PatientID": "Z",
    "IssuerOfPatientID": "X",
    "PatientBirthDate": "Z",
    "PatientBirthTime": "X",
    "PatientSex": "Z",
    "OtherPatientIDs": "X",
    "OtherPatientIDsSequence": "X",
    "OtherPatientNames": "X",
    "PatientBirthName": "X",
    "PatientMotherBirthName": "X",
    "PatientAge": "X",
    "PatientSize": "X",
    "PatientWeight": "X",
    "PatientAddress": "X",
    "PatientTelephoneNumbers": "X",
    "EthnicGroup": "X",
    "Occupation": "X",
    "AdditionalPatientHistory": "X",
    "PatientComments": "X",
    "MedicalRecordLocator": "X",
    "PregnancyStatus": "X",
    "ReferencedPatientSequence": "X",
    "PatientInsurancePlanCodeSequence": "X",
    # General Study / Patient Study
    "StudyInstanceUID": "U",
    "StudyDate": "Z",
    "StudyTime": "Z",
    "AccessionNumber": "Z",
    "StudyID": "Z",
    "StudyDescription": "X",
    "ReferringPhysicianName": "Z",
    "ReferringPhysicianAddress": "X",
    "ReferringPhysicianTelephoneNumbers": "X",
    "ReferringPhysicianIdentificationSequence": "X",
    "PhysiciansOfRecord": "X",
    "PhysiciansOfRecordIdentificationSequence": "X",
    "NameOfPhysiciansReadingStudy": "X",
    "AdmittingDiagnosesDescription": "X",
    "AdmittingDiagnosesCodeSequence": "X",
    "AdmissionID": "X",
    "ReferencedStudySequence": "X/Z",
    "StudyComments": "X",
    # General Series / Equipment / Acquisition
    "SeriesInstanceUID": "U",
    "SeriesDate": "X/D",
    "SeriesTime": "X/D",
    "SeriesDescription": "X",
    "PerformingPhysicianName": "X",
    "PerformingPhysicianIdentificationSequence": "X",
    "OperatorsName": "X/Z/D",
    "OperatorIdentificationSequence": "X/D",
    "ProtocolName": "X/D",
    "InstitutionName": "X/Z/D",
    "InstitutionAddress": "X",
    "InstitutionCodeSequence": "X/Z/D",
    "InstitutionalDepartmentName": "X",
    "StationName": "X/Z/D",
    "DeviceSerialNumber": "X/Z/D",
    "DeviceUID": "U",
    "FrameOfReferenceUID": "U",
    "SynchronizationFrameOfReferenceUID": "U",
    "DateOfLastCalibration": "X",
    "TimeOfLastCalibration": "X",
    "AcquisitionDate": "X/Z",
    "AcquisitionTime": "X/Z",
    "AcquisitionDateTime": "X/D",
    "ContentDate": "Z/D",
    "ContentTime": "Z/D",
    "ImageComments": "X",
    "TimezoneOffsetFromUTC": "X",
    # SOP Common
    "SOPInstanceUID": "U",
    "InstanceCreationDate": "X/D",
    "InstanceCreationTime": "X/Z/D",
    "InstanceCreatorUID": "U",
    "ReferencedSOPInstanceUID": "U",
    "UID": "U",
    "StorageMediaFileSetUID": "U",
    "OriginalAttributesSequence": "X",
    # Request / performed procedure (copied from the modality worklist)
    "RequestAttributesSequence": "X",
    "RequestingPhysician": "X",
    "RequestedProcedureDescription": "X/Z",
    "RequestedProcedureID": "X",
    "ScheduledProcedureStepDescription": "X",
    "ScheduledProcedureStepID": "X",
    "ScheduledPerformingPhysicianName": "X",
    "PerformedProcedureStepID": "X",
    "PerformedProcedureStepDescription": "X",
    "PerformedProcedureStepStartDate": "X",
    "PerformedProcedureStepStartTime": "X",
    "PerformedStationAETitle": "X",
    "PerformedStationName": "X",
    "PerformedLocation": "X",
    "PlacerOrderNumberImagingServiceRequest": "X/Z",
    "FillerOrderNumberImagingServiceRequest": "X/Z",
    "ReferencedPerformedProcedureStepSequence": "X/Z/D",
    "CurrentPatientLocation": "X",
    "PatientState": "X",
    "IdentifyingComments": "X",
    "ModifyingDeviceID": "X",
    # Structured content that may be copied into images
    "ContentSequence": "X",
    "VerifyingObserverName": "D",
    "VerifyingObserverSequence": "D",
    "PersonName": "D",
    "ContentCreatorName": "Z",
}

#: Attributes Type 1 in the Ophthalmic Photography IOD (PS3.3 C.8.17.2 OP Image module): compound actions
#: resolve to D for them (an empty or missing value would make the object invalid).
TYPE1: Final = frozenset({"ContentDate", "ContentTime", "AcquisitionDateTime"})
#: Type 2 there (present, may be empty): compound actions resolve to Z.
TYPE2: Final = frozenset({"ReferencedStudySequence", "AcquisitionDate", "AcquisitionTime"})

#: CID 7050 De-identification Method codes (coding scheme DCM).
CODES: Final = {"113100": "Basic Application Confidentiality Profile", "113110": "Retain UIDs Option"}
_DUMMY: Final = {"DA": "19000101", "TM": "000000", "DT": "19000101000000", "PN": "ANONYMOUS", "LO": "ANONYMIZED",
                 "SH": "ANONYMIZED", "CS": "ANONYMIZED", "LT": "ANONYMIZED", "ST": "ANONYMIZED", "UT": "ANONYMIZED",
                 "AS": "000Y", "IS": "0", "DS": "0"}
#: UI attributes that name a kind of thing (class, syntax, scheme), never an instance: kept.
_CLASS_UIDS: Final = frozenset({"SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID",
                                "TransferSyntaxUID", "CodingSchemeUID", "ContextGroupExtensionCreatorUID",
                                "MappingResourceUID", "ImplementationClassUID", "RelatedGeneralSOPClassUID",
                                "OriginalSpecializedSOPClassUID", "ReferencedTransferSyntaxUIDInFile"})


class DeidentificationError(ValueError):
    """The dataset cannot be de-identified by this profile (burned-in annotation, nesting too deep)."""


def resolve(keyword: str, action: str) -> str:
    """The single action (X, Z, D, U, K) a Table E.1-1 entry means for the fundus IOD (PS3.15 E.3.1)."""
    options = action.split("/")
    if len(options) == 1:
        return options[0]
    if keyword in TYPE1 and "D" in options:
        return "D"
    if keyword in TYPE2 and "Z" in options:
        return "Z"
    return "X" if "X" in options else options[0]


def uid_replacement(uid: str, key: bytes) -> str:
    """``2.25.<int>``: the first 128 bits of HMAC-SHA256(key, uid) as a PS3.5 B.2 UUID-derived UID."""
    digest = hmac.new(key, uid.strip("\x00 ").encode("ascii", "replace"), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _process_key() -> bytes:
    value = os.environ.get(KEY_ENV, "").strip()
    return bytes.fromhex(value) if value else _RANDOM_KEY


_RANDOM_KEY: Final = secrets.token_bytes(32)


def _datasets(ds: Dataset) -> Iterator[Dataset]:
    """``ds`` and every sequence item inside it, without recursion (depth checked by the caller)."""
    stack = [ds]
    while stack:
        current = stack.pop()
        yield current
        for element in list(current.elements()):
            value = element.value
            if isinstance(value, Sequence):
                stack.extend(item for item in value if isinstance(item, Dataset))


def _depth(ds: Dataset) -> int:
    deepest, stack = 0, [(ds, 0)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        for element in current.elements():
            if isinstance(element.value, Sequence):
                stack.extend((item, depth + 1) for item in element.value if isinstance(item, Dataset))
    return deepest


def _dummy(element: DataElement) -> object:
    if element.VR == "SQ":
        return Sequence([Dataset()])
    if element.VR == "UI":
        return "2.25.0"
    return _DUMMY.get(element.VR, "")


def deidentify(ds: Dataset, *, retain_uids: bool = False, key: bytes | None = None) -> Dataset:
    """A de-identified deep copy of ``ds`` (see the module docstring). ``key``: the UID-hash key
    (default: ``FOVEA_DEID_KEY`` or a per-process random key); ignored with ``retain_uids``."""
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        raise DeidentificationError("Burned In Annotation is YES: the pixels would need the Clean Pixel Data "
                                    "option, which is not implemented")
    if _depth(ds) > MAX_DEPTH:
        raise DeidentificationError(f"sequences nest deeper than {MAX_DEPTH} levels")
    out = _copy(ds)
    secret = key if key is not None else _process_key()
    for item in list(_datasets(out)):
        for element in list(item.elements()):
            tag = Tag(element.tag)
            if tag.is_private or (tag.group & 0xFF00) in (0x5000, 0x6000):
                del item[tag]  # Security: private tags, curves (50xx), overlays (60xx): X
                continue
            elem = item[tag]
            action = ACTIONS.get(elem.keyword)
            if action is None and elem.VR == "UI" and elem.keyword not in _CLASS_UIDS and elem.value:
                values = elem.value if elem.VM > 1 else [elem.value]
                if any(str(v) not in UID_dictionary for v in values):
                    action = "U"  # an instance UID the table does not name (e.g. inside a reference)
            if action is None:
                continue
            _apply(item, elem, resolve(elem.keyword, action), retain_uids, secret)
    _record(out, retain_uids)
    return out


def _apply(item: Dataset, elem: DataElement, action: str, retain_uids: bool, key: bytes) -> None:
    if action == "X":
        del item[elem.tag]
    elif action == "Z":
        elem.value = Sequence() if elem.VR == "SQ" else ""
    elif action == "D":
        elem.value = _dummy(elem)
    elif action == "U" and not retain_uids and elem.value:
        if elem.VM > 1:
            elem.value = [uid_replacement(str(v), key) for v in elem.value]
        else:
            elem.value = uid_replacement(str(elem.value), key)


def _record(ds: Dataset, retain_uids: bool) -> None:
    """PS3.15 E.1.1 / PS3.3 C.12.1.1: what was done, in the SOP Common module."""
    ds.PatientIdentityRemoved = "YES"
    codes = ["113100"] + (["113110"] if retain_uids else [])
    ds.DeidentificationMethod = METHOD + ("; Retain UIDs" if retain_uids else "; HMAC UIDs")
    items = []
    for value in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = CODES[value]
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = "REMOVED"


def _copy(ds: Dataset) -> Dataset:
    """A deep copy without the preamble and with a file meta holding only the transfer syntax (the original
    meta names the source AE title and the original SOP Instance UID)."""
    copy = deepcopy(ds)
    copy.preamble = None
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    copy.file_meta = FileMetaDataset()
    if ts:
        copy.file_meta.TransferSyntaxUID = ts
    return copy


def write(ds: Dataset, path: Path | io.BytesIO) -> None:
    """Save a de-identified ``ds`` as Part 10 with a zeroed preamble (CVE-2019-11687) and a fresh file meta."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) or \
        pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta = meta  # no Source / Sending / Receiving AE titles (they name sites)
    ds.preamble = b"\x00" * 128  # Security: CVE-2019-11687, no polyglot preamble survives a write
    ds.save_as(path, enforce_file_format=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.deid", description="De-identify a DICOM file (PS3.15 "
                                "Annex E Basic Profile); the preamble of OUT is zeroed.")
    p.add_argument("input", type=Path, metavar="IN")
    p.add_argument("output", type=Path, metavar="OUT")
    p.add_argument("--retain-uids", action="store_true", help="Retain UIDs Option (E.3.9) instead of HMAC UIDs")
    args = p.parse_args(argv)
    try:
        ds = pydicom.dcmread(args.input, force=False)  # Security: Part 10 only, never force=True
        clean = deidentify(ds, retain_uids=args.retain_uids)
        write(clean, args.output)
    except (OSError, pydicom.errors.InvalidDicomError, DeidentificationError, RecursionError) as exc:
        # No element values in the message: only the file name and the error class.
        print(f"error: {args.input.name}: {type(exc).__name__}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
