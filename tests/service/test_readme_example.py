"""service/readme_example.py: the README's example answer is the service's, shortened; drift is caught."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from service.readme_example import (ELLIPSIS, README, answer_from, block, mismatches, readme_example, render,
                                    shorten)


@pytest.fixture(scope="module")
def live(retina_path: Path) -> dict:
    """The in-process answer (the service's Analyzer on the embedded defaults), shortened."""
    return shorten(answer_from(None, retina_path))


def test_shortening_elides_what_nobody_reads_and_keeps_every_key(live: dict) -> None:
    assert live["saliency"]["overlay_png"] == "<base64 PNG>" and live["request_id"].endswith(ELLIPSIS)
    assert all(m["sha256"].endswith(ELLIPSIS) and len(m["sha256"]) == 9 for m in live["models"])
    assert len(live["disclaimer"]) < 100 and live["quality"]["measures"][ELLIPSIS] > 0
    assert all(isinstance(v, int) for v in live["timing_ms"].values())
    assert list(live) == ["request_id", "disclaimer", "image", "quality", "dr_grade", "referable_dr", "lesions",
                          "saliency", "models", "timing_ms", "additional_frames"]


def test_the_rendered_example_reads_back_as_the_same_json(live: dict) -> None:
    assert readme_example(block(render(live))) == live


def test_the_readme_example_matches_the_service(live: dict) -> None:
    """Fails when a model, the answer's shape or the screening answer for retina.jpg changes without
    ``python -m service.readme_example`` being run."""
    assert mismatches(readme_example(README.read_text(encoding="utf-8")), live) == []


def test_drift_is_named(live: dict) -> None:
    stale = copy.deepcopy(live)
    stale["models"][0]["version"] = "0.1.0"
    stale["dr_grade"]["grade"] = 1 - live["dr_grade"]["grade"]
    del stale["lesions"]
    stale["quality"]["measures"] = {"coverage": 1.0}  # fewer measures shown is not drift
    found = mismatches(stale, live)
    assert len(found) == 3, found
    assert any("models" in f and "0.1.0" in f for f in found) and any("dr_grade.grade" in f for f in found)
    assert any("lesions" in f for f in found)
