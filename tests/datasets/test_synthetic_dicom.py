"""Synthetic fundus as DICOM Ophthalmic Photography: attributes, UIDs, determinism, decodable pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from datasets.synthetic.dicom import write_op_dicom
from datasets.synthetic.writer import generate

OP_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    a, b = tmp_path_factory.mktemp("dicom_a"), tmp_path_factory.mktemp("dicom_b")
    for out in (a, b):
        generate(out, count=4, seed=7, size=96, progress=False, dicom=True)
    return a, b


def test_attributes(runs: tuple[Path, Path]) -> None:
    root, _ = runs
    for name, lat, pid in (("00000_left", "L", "00000"), ("00001_right", "R", "00001")):
        ds = pydicom.dcmread(root / f"{name}.dcm")
        assert ds.SOPClassUID == OP_8BIT and ds.file_meta.MediaStorageSOPClassUID == OP_8BIT
        assert ds.file_meta.TransferSyntaxUID == JPEG_BASELINE
        assert ds.ImageLaterality == lat
        assert ds.Modality == "OP" and ds.BurnedInAnnotation == "NO"
        assert str(ds.PatientName) == "SYNTHETIC^FUNDUS" and ds.PatientID == pid
        assert ds.PhotometricInterpretation == "YBR_FULL_422" and ds.PlanarConfiguration == 0
        assert (ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated) == (96, 96, 3, 8)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_uids_shared_per_patient(runs: tuple[Path, Path]) -> None:
    root, _ = runs
    ds = {n: pydicom.dcmread(root / f"{n}.dcm") for n in ("00000_left", "00000_right", "00001_left")}
    assert ds["00000_left"].StudyInstanceUID == ds["00000_right"].StudyInstanceUID
    assert ds["00000_left"].StudyInstanceUID != ds["00001_left"].StudyInstanceUID
    assert ds["00000_left"].SOPInstanceUID != ds["00000_right"].SOPInstanceUID
    assert ds["00000_left"].SeriesInstanceUID != ds["00000_right"].SeriesInstanceUID
    assert len({d.SOPInstanceUID for d in ds.values()}) == 3


def test_deterministic(runs: tuple[Path, Path]) -> None:
    a, b = runs
    names = sorted(p.name for p in a.glob("*.dcm"))
    assert len(names) == 4 and names == sorted(p.name for p in b.glob("*.dcm"))
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def test_pixels_close_to_source(tmp_path: Path) -> None:
    from datasets.synthetic.fundus import render_fundus

    fundus = render_fundus(np.random.default_rng(1), grade=3, laterality="R", size=96)
    path = tmp_path / "x.dcm"
    write_op_dicom(fundus.image, path, laterality="R", patient_id="P1", seed=1)
    pixels = pydicom.dcmread(path).pixel_array
    assert pixels.shape == fundus.image.shape and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(np.int16) - fundus.image.astype(np.int16)).mean() < 6


def test_same_pixels_as_jpeg(runs: tuple[Path, Path]) -> None:
    import cv2

    root, _ = runs
    jpeg = cv2.cvtColor(cv2.imread(str(root / "00000_left.jpeg")), cv2.COLOR_BGR2RGB)
    dcm = pydicom.dcmread(root / "00000_left.dcm").pixel_array
    assert np.abs(jpeg.astype(np.int16) - dcm.astype(np.int16)).mean() < 6


def test_service_decode(tmp_path: Path) -> None:
    if not (Path(__file__).resolve().parents[2] / "analysis" / "decode.py").is_file():
        pytest.skip("no analysis/decode.py")
    from analysis.decode import decode

    rgb = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    for lat in ("L", "R"):
        path = tmp_path / f"{lat}.dcm"
        write_op_dicom(rgb, path, laterality=lat, patient_id="P2")
        images = decode(path.read_bytes())
        assert len(images) == 1
        assert images[0].laterality == lat and images[0].source == "dicom"
        assert images[0].rgb.shape == (64, 80, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"laterality": "B", "patient_id": "P"}, "laterality"),
        ({"laterality": "L", "patient_id": ""}, "patient_id"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_op_dicom(np.zeros((8, 8, 3), np.uint8), tmp_path / "x.dcm", **kwargs)
    with pytest.raises(ValueError, match="uint8"):
        write_op_dicom(np.zeros((8, 8), np.uint8), tmp_path / "x.dcm", laterality="L", patient_id="P")


def test_cli_flag(tmp_path: Path) -> None:
    from datasets.synthetic.__main__ import main

    assert main(["--out", str(tmp_path), "--count", "2", "--seed", "1", "--size", "64", "--dicom"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.dcm")) == ["00000_left.dcm", "00000_right.dcm"]
