"""Shared inputs of the DICOM/FHIR results tests (tests/analysis/test_dicom_out.py, test_fhir.py): findings
from the real Analyzer on a synthetic OP DICOM (gradable, with lesions, ungradable) and on a JPEG upload."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from datasets.synthetic.dicom import write_op_dicom
from datasets.synthetic.fundus import render_fundus
from analysis.pipeline import Analyzer


@pytest.fixture(scope="module")
def fundus() -> np.ndarray:
    return render_fundus(np.random.default_rng(3), grade=2, laterality="R", size=320).image


def _op_bytes(rgb: np.ndarray, tmp: Path, name: str, laterality: str = "R") -> bytes:
    path = tmp / f"{name}.dcm"
    write_op_dicom(rgb, path, laterality=laterality, patient_id=f"SYN-{name}", seed=11)
    return path.read_bytes()


@pytest.fixture(scope="module")
def op_dicom(tmp_path_factory: pytest.TempPathFactory, fundus: np.ndarray) -> bytes:
    return _op_bytes(fundus, tmp_path_factory.mktemp("op"), "gradable")


@pytest.fixture(scope="module")
def dark_dicom(tmp_path_factory: pytest.TempPathFactory, fundus: np.ndarray) -> bytes:
    return _op_bytes((fundus * 0.12).astype(np.uint8), tmp_path_factory.mktemp("op"), "dark", "L")


@pytest.fixture(scope="module")
def analyzer(tiny_export: Path) -> Analyzer:
    return Analyzer.load(tiny_export / "tiny-grader.card.json")


@pytest.fixture(scope="module")
def lesion_analyzer(tiny_export: Path, tiny_detector_run: tuple[Path, Path]) -> Analyzer:
    """The real Analyzer with the tiny detector whose network outputs are replaced by known ones (the barely
    trained net finds nothing reliably): a haemorrhage centred in the model input and a microaneurysm up
    and left of it. Thresholds, decoding and mapping to original pixels are the real code."""
    a = Analyzer.load(tiny_export / "tiny-grader.card.json",
                      detector=tiny_detector_run[1] / "tiny-detector.card.json")
    assert a.detector is not None
    h = a.detector.card.input.size // 4
    heat = np.zeros((1, 4, h, h), np.float32)
    size = np.zeros((1, 2, h, h), np.float32)
    heat[0, 1, h // 2, h // 2], size[0, :, h // 2, h // 2] = 0.99, h / 4  # haemorrhage
    heat[0, 0, h // 4, h // 4], size[0, :, h // 4, h // 4] = 0.95, 2.0  # microaneurysm
    fake = {"heatmap": heat, "size": size, "offset": np.zeros((1, 2, h, h), np.float32)}
    object.__setattr__(a.detector, "run", lambda batch: fake)
    return a


def header(data: bytes) -> pydicom.Dataset:
    """The source as the service would pass it: the header only (no pixel data decoded or even read)."""
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


@pytest.fixture(scope="module")
def jpeg_upload(fundus: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(fundus, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture(scope="module")
def research_analyzer(tiny_research_export: Path) -> Analyzer:
    """The real Analyzer serving a grader whose card says research use on published data under its terms
    (``tiny_research_run``: contrast recipe, not synthetic data)."""
    return Analyzer.load(tiny_research_export / "tiny-research.card.json")
