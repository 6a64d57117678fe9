"""Write a synthetic fundus photograph as a DICOM Ophthalmic Photography 8 Bit Image (Part 10 file).

Contract
--------
``write_op_dicom(rgb, path, laterality=..., patient_id=...)`` writes ``path`` as a DICOM Part 10 file of SOP
class *Ophthalmic Photography 8 Bit Image Storage* (1.2.840.10008.5.1.4.1.1.77.1.5.1, PS3.3 A.39), transfer
syntax *JPEG Baseline (Process 1)* (1.2.840.10008.1.2.4.50). The pixel data is one frame: the ``(H, W, 3)``
uint8 RGB array encoded by Pillow as a baseline JPEG, YCbCr with 4:2:2 chroma subsampling, quality
:data:`JPEG_QUALITY` — hence ``PhotometricInterpretation = "YBR_FULL_422"``, ``PlanarConfiguration = 0``,
``LossyImageCompression = "01"``.

Identity: ``PatientName = "SYNTHETIC^FUNDUS"``, ``PatientID = patient_id``, ``BurnedInAnnotation = "NO"``,
``ImageLaterality = laterality`` ("L"/"R"). Unless given, the UIDs are derived deterministically with
:func:`pydicom.uid.generate_uid` from ``seed`` and ``patient_id`` (study: shared by both eyes of one patient),
plus the laterality (series: one per eye) and a digest of the pixels (SOP instance). Dates and times are fixed
(2000-01-01 12:00:00), so the same arguments give a byte-identical file (with the same pydicom/Pillow versions).

The type 1 and 2 attributes of the OP 8 Bit IOD modules (Patient, General Study, General/OP Series, General
Equipment, General Image, Image Pixel, Multi-frame, OP Image, Ocular Region Imaged, OP Acquisition Parameters,
OP Parameters, SOP Common) are present; type 2 ones with no meaningful synthetic value are empty.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, OphthalmicPhotography8BitImageStorage, generate_uid

JPEG_QUALITY = 95
PATIENT_NAME = "SYNTHETIC^FUNDUS"
FIXED_DATE = "20000101"
FIXED_TIME = "120000"
_ENTROPY_PREFIX = "fovea-synthetic-fundus"


def study_uid_for(seed: int, patient_id: str) -> str:
    """The StudyInstanceUID shared by both eyes of synthetic patient ``patient_id`` generated with ``seed``."""
    return generate_uid(entropy_srcs=[_ENTROPY_PREFIX, "study", str(seed), patient_id])


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Baseline JPEG of ``rgb`` (YCbCr, 4:2:2 chroma subsampling) encoded by Pillow."""
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, "JPEG", quality=quality, subsampling=1, optimize=False,
                                          progressive=False)
    return buf.getvalue()


def write_op_dicom(
    rgb: np.ndarray,
    path: Path,
    *,
    laterality: str,
    patient_id: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    seed: int = 0,
    instance_number: int = 1,
    quality: int = JPEG_QUALITY,
) -> None:
    """Write ``rgb`` ((H, W, 3) uint8 RGB) to ``path`` as an OP 8 Bit Image, JPEG Baseline (module docstring).

    Raises ``ValueError`` for a laterality other than "L"/"R", an empty ``patient_id`` or an array that is not
    ``(H, W, 3)`` uint8.
    """
    if laterality not in ("L", "R"):
        raise ValueError(f"laterality must be 'L' or 'R', got {laterality!r}")
    if not patient_id:
        raise ValueError("patient_id must not be empty")
    rgb = np.ascontiguousarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be an (H, W, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    frame = encode_jpeg(rgb, quality)
    digest = hashlib.sha256(rgb.tobytes()).hexdigest()
    study_uid = study_uid or study_uid_for(seed, patient_id)
    series_uid = series_uid or generate_uid(entropy_srcs=[_ENTROPY_PREFIX, "series", str(seed), patient_id,
                                                          laterality])
    sop_instance_uid = sop_instance_uid or generate_uid(
        entropy_srcs=[_ENTROPY_PREFIX, "instance", str(seed), patient_id, laterality, digest])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = OphthalmicPhotography8BitImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit

    ds = Dataset()
    ds.file_meta = meta
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = OphthalmicPhotography8BitImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate = FIXED_DATE
    ds.InstanceCreationTime = FIXED_TIME
    # Patient
    ds.PatientName = PATIENT_NAME
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # General Study
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = FIXED_DATE
    ds.StudyTime = FIXED_TIME
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.StudyDescription = "Synthetic fundus photographs (not a patient)"
    # General Series / Ophthalmic Photography Series
    ds.Modality = "OP"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1 if laterality == "R" else 2
    ds.SeriesDate = FIXED_DATE
    ds.SeriesTime = FIXED_TIME
    # General Equipment
    ds.Manufacturer = "Fovea synthetic generator"
    ds.ManufacturerModelName = "datasets.synthetic"
    # General Image / Ophthalmic Photography Image
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""
    ds.ContentDate = FIXED_DATE
    ds.ContentTime = FIXED_TIME
    ds.AcquisitionDateTime = FIXED_DATE + FIXED_TIME
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{rgb.nbytes / len(frame):.2f}"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.ImageComments = "SYNTHETIC IMAGE - procedurally rendered, not a patient"
    # Ocular Region Imaged
    ds.ImageLaterality = laterality
    ds.AnatomicRegionSequence = [_code("81745001", "SCT", "Eye")]
    # Ophthalmic Photography Acquisition Parameters (type 2, unknown for a synthetic image)
    ds.PatientEyeMovementCommanded = ""
    ds.HorizontalFieldOfView = None
    ds.EmmetropicMagnification = None
    ds.IntraOcularPressure = None
    ds.PupilDilated = ""
    # Ophthalmic Photographic Parameters
    ds.AcquisitionDeviceTypeCodeSequence = [_code("409898007", "SCT", "Fundus camera")]
    ds.IlluminationTypeCodeSequence = []
    ds.LightPathFilterTypeStackCodeSequence = []
    ds.ImagePathFilterTypeStackCodeSequence = []
    ds.LensesCodeSequence = []
    ds.DetectorType = "CCD"
    # Image Pixel + Multi-frame
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.Rows = height
    ds.Columns = width
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = 1
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True

    ds.save_as(Path(path), enforce_file_format=True)
