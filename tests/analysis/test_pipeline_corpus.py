"""The whole analysis (decode → quality → grader → saliency) over the real DICOM corpora: every file gives
findings or a typed 4xx, never another exception (the HTTP layer would turn that into a 500)."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.decode import DecodeLimits
from analysis.errors import FoveaError
from analysis.pipeline import Analyzer
from tests.analysis.test_decode_corpus import CASES

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    # The embedded default model: the one a user's request meets. Two frames bound the time per file.
    return Analyzer.load(REPO / "models" / "default" / "dr-grader.card.json", limits=DecodeLimits(max_frames=2))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", CASES)
def test_every_corpus_file_gives_findings_or_a_clean_4xx(analyzer: Analyzer, path: Path) -> None:
    try:
        f = analyzer.analyze(path.read_bytes())
    except FoveaError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return
    assert f.quality.gradable in (True, False) and 0 <= f.dr_grade.grade <= 4
    if not f.quality.gradable:
        assert f.referable_dr is None or f.referable_dr.value is None
    assert f.saliency.heatmap_png and f.models[0].sha256
