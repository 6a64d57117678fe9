"""The real-photograph path end to end, in miniature: real EyePACS photographs -> train (the real-grader
config's recipe, data and terms) -> export (parity, validation-split metrics) -> register in the model store ->
serve by ``FOVEA_GRADER_TAG`` -> analyse a raw camera photograph (DRIVE).

The photographs are read where they lie (``../shared/real-dev`` from the repository root, never copied into the
repository): a temporary folder holds a ``trainLabels.csv`` of a deterministic slice and symlinks to them.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
REAL_DEV = REPO.parent / "shared" / "real-dev"
EYEPACS = REAL_DEV / "eyepacs256"
DRIVE = REAL_DEV / "drive" / "images"
REAL_CONFIG = REPO / "training" / "configs" / "real-grader.yaml"
#: Patients in the slice: referable ones first (so validation sees both referral classes), then others.
REFERABLE_PATIENTS = 12
OTHER_PATIENTS = 18
TAG_VERSION = "0.0.1-eyepacs-test"


@pytest.fixture(scope="module")
def real_dev() -> Path:
    if not (EYEPACS / "trainLabels.csv").is_file() or not any(DRIVE.glob("*.png")):
        reason = f"{REAL_DEV} (real photographs, outside the repository) is not here"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI must provide it")
        pytest.skip(reason)
    return REAL_DEV


def _slice(tmp: Path) -> Path:
    """A temporary EyePACS folder: ``trainLabels.csv`` of both eyes of the first :data:`REFERABLE_PATIENTS`
    patients (sorted) with a referable eye and the first :data:`OTHER_PATIENTS` without, ``train/`` symlinks."""
    with (EYEPACS / "trainLabels.csv").open(newline="") as f:
        rows = [(r["image"], int(r["level"])) for r in csv.DictReader(f)]
    eyes: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for image, level in rows:
        eyes[image.rsplit("_", 1)[0]].append((image, level))
    patients = sorted(p for p in eyes if len(eyes[p]) == 2)
    referable = [p for p in patients if max(lv for _, lv in eyes[p]) >= 2][:REFERABLE_PATIENTS]
    other = [p for p in patients if max(lv for _, lv in eyes[p]) < 2][:OTHER_PATIENTS]
    root = tmp / "eyepacs-slice"
    (root / "train").mkdir(parents=True)
    with (root / "trainLabels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "level"])
        for p in sorted(referable + other):
            for image, level in eyes[p]:
                w.writerow([image, level])
                (root / "train" / f"{image}.jpeg").symlink_to(EYEPACS / "train" / f"{image}.jpeg")
    return root


def test_real_path_end_to_end(real_dev: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch", reason="training extras (torch) are not installed")
    import bentoml

    from models.card import RESEARCH_USE, ModelCard, recipe_of, verify
    from models.preprocess import CONTRAST
    from models.store import exact_dir, get_exact
    from analysis.dicom_out import AI_STATEMENT_RESEARCH, ai_statement
    from analysis.pipeline import Analyzer
    from analysis.render import CAPTION_RESEARCH, caption_for
    from service.settings import load_settings
    from training.__main__ import main

    data = _slice(tmp_path)
    # The shipped real-grader config, made tiny: its recipe, data format, description, terms and split stay.
    raw = yaml.safe_load(REAL_CONFIG.read_text(encoding="utf-8"))
    raw.update(name="tiny-real-grader", version=TAG_VERSION, architecture="mobilenet_v3_small", input_size=96,
               epochs=1, batch_size=16, out=str(tmp_path / "run"))
    raw["data"]["val_fraction"] = 0.2
    cfg_path = tmp_path / "real.yaml"
    cfg_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    terms, description = raw["data"]["terms"], raw["data"]["description"]
    assert raw["preprocessing"] == CONTRAST.name and "non-commercial research use only" in terms
    assert "test" not in raw["data"]

    export_dir = tmp_path / "export"
    assert main(["train", "--config", str(cfg_path), "--data", str(data)]) == 0
    assert main(["export", "--config", str(cfg_path), "--out", str(export_dir)]) == 0
    card_path = export_dir / "tiny-real-grader.card.json"
    card = ModelCard.load(card_path)
    verify(card, export_dir)
    assert card.metrics["max_abs_logit_diff"] <= 1e-4  # the export's parity check passed
    assert recipe_of(card) == CONTRAST and tuple(card.input.mean) == CONTRAST.mean
    assert card.training.data_terms == terms and card.training.data.startswith(description)
    assert card.intended_use.startswith(RESEARCH_USE) and terms in card.intended_use
    assert description in card.intended_use and "synthetic" not in card.intended_use.lower()
    assert card.metrics_data.startswith(f"patient-disjoint validation split (20%, seed 0) of {data} (eyepacs), "
                                        f"{int(card.metrics['n'])} photographs of ")

    # Register into this run's temporary store (tests/conftest.py sets BENTOML_HOME), serve by the tag.
    assert main(["register", "--card", str(card_path)]) == 0
    tag = f"tiny-real-grader:{TAG_VERSION}"
    stored = get_exact(tag)
    assert stored is not None and str(stored.tag) == tag
    assert stored.info.metadata["data_terms"] == terms
    monkeypatch.setenv("FOVEA_GRADER_TAG", tag)
    settings = load_settings()
    assert settings.grader_tag == tag
    # What service.service.Fovea does with the setting: a BentoModel reference, its exact store folder verified.
    ref = bentoml.models.BentoModel(settings.grader_tag)
    analyzer = Analyzer.load(exact_dir(str(ref.tag)))
    assert analyzer.grader_card.sha256 == card.sha256

    photo = sorted(DRIVE.glob("*.png"))[0]  # a raw camera photograph, another domain than the training copies
    findings = analyzer.analyze(photo.read_bytes())
    assert findings.models[0].name == "tiny-real-grader" and findings.models[0].version == TAG_VERSION
    assert findings.disclaimer == card.intended_use and terms in findings.disclaimer
    assert findings.disclaimer.startswith("Research use, not for clinical use")
    assert ai_statement(findings) == AI_STATEMENT_RESEARCH and caption_for(card) == CAPTION_RESEARCH
    assert sum(findings.dr_grade.probabilities) == pytest.approx(1.0, abs=1e-5)
