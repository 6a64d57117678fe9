"""Small files for reader fixtures: real image files (OpenCV), text files, in the exact published layouts."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def write_image(path: Path, height: int = 8, width: int = 8, value: int = 60) -> Path:
    """A real (tiny) image file at ``path``, format from its extension; parents are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((height, width, 3), value, np.uint8))
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def rel(records: list, root: Path) -> list[str]:  # type: ignore[type-arg]
    """Record image paths relative to ``root``, POSIX style."""
    return [r.image.relative_to(root).as_posix() for r in records]


def write_dicom(path: Path, *, sop_instance_uid: str, patient_id: str = "", image_laterality: str | None = None,
                laterality: str | None = None, rgb: np.ndarray | None = None) -> Path:
    """A DICOM Part 10 Ophthalmic Photography 8 Bit file, uncompressed RGB (pixels exact), written by pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, OphthalmicPhotography8BitImageStorage, generate_uid

    rgb = np.zeros((6, 8, 3), np.uint8) if rgb is None else rgb
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = OphthalmicPhotography8BitImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = OphthalmicPhotography8BitImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OP"
    ds.PatientID = patient_id
    ds.PatientName = "Doe^Jane"
    if image_laterality is not None:
        ds.ImageLaterality = image_laterality
    if laterality is not None:
        ds.Laterality = laterality
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(rgb).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
