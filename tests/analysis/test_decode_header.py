"""analysis.decode.read_dicom_header: the up-front checks a receiver (STOW-RS) makes, without decoding pixels."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest

from datasets.synthetic.dicom import write_op_dicom
from analysis.decode import DecodeLimits, read_dicom_header
from analysis.errors import ImageTooSmall, PayloadTooLarge, UnreadableImage, UnsupportedDicom, UnsupportedMediaType


@pytest.fixture(scope="module")
def op_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("hdr") / "op.dcm"
    rgb = np.full((64, 80, 3), 120, np.uint8)
    write_op_dicom(rgb, path, laterality="L", patient_id="H1")
    return path.read_bytes()


def test_accepts_a_fundus_photograph_without_decoding_it(op_bytes: bytes) -> None:
    ds = read_dicom_header(op_bytes)
    assert ds.Modality == "OP" and (ds.Rows, ds.Columns) == (64, 80)
    assert isinstance(ds.PixelData, bytes)  # still encoded


def _edited(data: bytes, **changes) -> bytes:
    ds = pydicom.dcmread(BytesIO(data))
    for k, v in changes.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_refusals_are_typed(op_bytes: bytes, retina_png: Path) -> None:
    with pytest.raises(UnsupportedMediaType):
        read_dicom_header(b"not dicom")
    with pytest.raises(UnsupportedMediaType, match="PNG"):
        read_dicom_header(retina_png.read_bytes())
    with pytest.raises(UnsupportedDicom, match="SOP class"):
        read_dicom_header(_edited(op_bytes, SOPClassUID="1.2.840.10008.5.1.4.1.1.2"))
    with pytest.raises(UnsupportedDicom, match="no Pixel Data"):
        read_dicom_header(_edited(op_bytes, PixelData=None))
    with pytest.raises(UnreadableImage):
        read_dicom_header(op_bytes[:-10])  # cut inside the pixel data
    with pytest.raises(PayloadTooLarge):
        read_dicom_header(op_bytes, limits=DecodeLimits(max_bytes=1000))
    with pytest.raises(ImageTooSmall):
        read_dicom_header(op_bytes, limits=DecodeLimits(min_side=100))
