"""The gateway's result builder on real findings (the embedded default grader): SR + SC per analysed frame,
as Part 10 files in the source's study."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from service.gateway.worker import default_builder
from analysis.pipeline import Analyzer

REPO = Path(__file__).resolve().parents[3]
SR, SC = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.load(REPO / "models" / "default" / "dr-grader.card.json")


def test_single_frame_gives_sr_then_sc(analyzer: Analyzer, op_file: Path) -> None:
    data = op_file.read_bytes()
    source = pydicom.dcmread(io.BytesIO(data))
    blobs = default_builder()(analyzer.analyze(data), source)
    results = [pydicom.dcmread(io.BytesIO(b)) for b in blobs]
    assert [r.SOPClassUID for r in results] == [SR, SC]
    assert all(b[128:132] == b"DICM" for b in blobs)
    assert {r.StudyInstanceUID for r in results} == {source.StudyInstanceUID}


def test_every_analysed_frame_gets_its_results(analyzer: Analyzer, pydicom_files: Path) -> None:
    data = (pydicom_files / "SC_rgb_rle_2frame.dcm").read_bytes()
    source = pydicom.dcmread(io.BytesIO(data))
    findings = analyzer.analyze(data)
    assert len(findings.additional_frames) == 1
    results = [pydicom.dcmread(io.BytesIO(b)) for b in default_builder()(findings, source)]
    assert [r.SOPClassUID for r in results] == [SR, SC, SR, SC]
    assert len({r.SOPInstanceUID for r in results}) == 4
    frames = {int(item.ReferencedFrameNumber) for r in results[::2] for item in _walk(r)
              if "ReferencedFrameNumber" in item}
    assert frames == {1, 2}


def _walk(ds: pydicom.Dataset):
    yield ds
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)
