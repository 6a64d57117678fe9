"""The service's quality gate (classic measures + the default image-quality model) on real photographs from
``../shared/real-dev``: EyeQ-graded EyePACS copies of patients the model's head was not fitted on, raw DRIVE
camera photographs and scikit-image's ``retina.jpg``. Skipped where the folder is absent (it may not be
redistributed), except in CI, where it must be there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="training extras (torch) are not installed")

from training.quality_real import eyeq_images, gate, validation_names  # noqa: E402
from training.data import load_rgb  # noqa: E402

REAL_DEV = Path(__file__).resolve().parents[2] / ".." / "shared" / "real-dev"
CARD = Path(__file__).resolve().parents[2] / "models" / "default" / "image-quality.card.json"
#: Most photographs per EyeQ class taken from the validation patients (by name): all their Rejects (66), as many
#: Goods; a smaller sample's binomial noise (±6 % at 40) would swamp the margin to the 80 % bar.
PER_CLASS = 70


@pytest.fixture(scope="module")
def real_dev() -> Path:
    if not (REAL_DEV / "eyeq_quality.csv").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{REAL_DEV} is missing: CI must provide the real development photographs")
        pytest.skip(f"{REAL_DEV} (real photographs, not redistributable) is not on this machine")
    return REAL_DEV


def test_gate_passes_good_and_stops_reject_eyeq_photographs(real_dev: Path) -> None:
    val = validation_names(real_dev, 0.15, 0)  # the patients training.quality_refit held out
    images = sorted((n, p, q) for n, p, q in eyeq_images(real_dev) if n in val)
    reject = [p for _, p, q in images if q == 2][:PER_CLASS]
    good = [p for _, p, q in images if q == 0][:len(reject)]
    assert len(good) == len(reject) >= 40
    g = gate(CARD)
    good_fail = sum(not g(load_rgb(p)).gradable for p in good)
    reject_caught = sum(not g(load_rgb(p)).gradable for p in reject)
    assert good_fail <= 0.10 * len(good), f"{good_fail} of {len(good)} Good photographs called ungradable"
    assert reject_caught >= 0.80 * len(reject), f"only {reject_caught} of {len(reject)} Reject photographs stopped"


def test_gate_passes_raw_camera_photographs(real_dev: Path, retina_path: Path) -> None:
    g = gate(CARD)
    drive = sorted((real_dev / "drive" / "images").glob("*.png"))
    assert len(drive) == 30
    verdicts = {p.name: g(load_rgb(p)) for p in drive}
    failed = {name: q.reasons for name, q in verdicts.items() if not q.gradable}
    assert len(failed) <= 0.05 * len(drive), f"raw DRIVE photographs called ungradable: {failed}"
    q = g(load_rgb(retina_path))
    assert q.gradable, q
