"""Fixtures shared by the service tests: synthetic fundus photographs as DICOM, a sealed result store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, MultiFrameTrueColorSecondaryCaptureImageStorage, generate_uid

from datasets.synthetic.dicom import write_op_dicom
from datasets.synthetic.fundus import render_fundus
from service.at_rest import Sealer
from service.result_store import ResultStore


@pytest.fixture(scope="module")
def fundus_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two synthetic OP 8-bit JPEG fundus photographs of one patient (both eyes), 256 px."""
    out = tmp_path_factory.mktemp("op")
    rng = np.random.default_rng(3)
    paths = []
    for n, lat in enumerate(("R", "L")):
        img = render_fundus(rng, grade=2, laterality=lat, size=256).image
        path = out / f"{lat}.dcm"
        write_op_dicom(img, path, laterality=lat, patient_id="P-TEST-1", seed=11, instance_number=n + 1)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def multi_frame_dicom(fundus_files: list[Path]) -> Callable[..., bytes]:
    """``make(transfer_syntax=Explicit VR Little Endian) -> bytes``: a multi-frame true-colour Secondary
    Capture (native RGB, a new SOP Instance UID each call) whose two frames are the two photographs."""
    frames = [pydicom.dcmread(p).pixel_array for p in fundus_files]  # YBR_FULL_422 decoded by pydicom
    rgb = np.stack([pydicom.pixels.convert_color_space(f, "YBR_FULL", "RGB") for f in frames])

    def make(transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
        ds = pydicom.dcmread(fundus_files[0], stop_before_pixels=True)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MultiFrameTrueColorSecondaryCaptureImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.NumberOfFrames, ds.PhotometricInterpretation, ds.PlanarConfiguration = 2, "RGB", 0
        ds.pop("LossyImageCompression", None)
        ds.add_new(0x7FE00010, "OB", rgb.tobytes())  # Pixel Data
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    return make


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[ResultStore]:
    """A DICOMweb result store in a temp folder, sealed with a fixed key, at most 4 analyses pending."""
    s = ResultStore(tmp_path / "dicomweb", Sealer(bytes(range(32))), max_pending=4)
    yield s
    s.close()
