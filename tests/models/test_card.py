"""models.card: schema, sha256 verification, preprocessing-version check, path confinement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from models.card import CardError, ModelCard, verify
from models.store import DEFAULT_DIR


def _copy_default(tmp_path: Path, stem: str = "dr-grader") -> tuple[ModelCard, Path]:
    for f in DEFAULT_DIR.glob("dr-grader*"):
        shutil.copy(f, tmp_path / f.name)
    return ModelCard.load(tmp_path / f"{stem}.card.json"), tmp_path


def test_embedded_default_card_verifies_and_is_honest() -> None:
    """The default grader is the research model trained on real EyePACS photographs: it says so, with the data's
    terms, and its metrics are real held-out figures. The floors below are "far above chance", not its goal (QWK
    0.70, AUC 0.88: README "Real photographs"), which it does not reach yet."""
    card = ModelCard.load(DEFAULT_DIR / "dr-grader.card.json")
    assert verify(card, DEFAULT_DIR).name == "dr-grader.onnx"
    assert card.intended_use.startswith("Research use, not for clinical use") and "not clinically validated" in card.intended_use
    assert card.training.data_terms and "non-commercial research use only" in card.training.data_terms
    assert card.training.data_terms in card.intended_use and "synthetic" not in card.intended_use
    assert "patient-disjoint" in card.metrics_data and card.preprocessing.name == "fovea.fundus-contrast"
    op = card.operating_point("referable_dr")
    assert op is not None and op.sensitivity >= 0.9
    assert card.metrics["max_abs_logit_diff"] <= 1e-4 and card.training.command.startswith("python -m training train")
    assert "/tmp" not in card.model_dump_json()
    assert card.metrics["n"] >= 500 and card.metrics["quadratic_weighted_kappa"] >= 0.3
    assert card.metrics["referable_auc"] >= 0.75


def test_embedded_synthetic_grader_card_verifies_and_is_honest() -> None:
    card = ModelCard.load(DEFAULT_DIR / "dr-grader-synthetic.card.json")
    assert verify(card, DEFAULT_DIR).name == "dr-grader-synthetic.onnx" and card.tag == "dr-grader:0.2.0"
    assert "synthetic" in card.intended_use and "not clinically validated" in card.intended_use
    assert card.classes[0] == "No DR" and len(card.classes) == 5
    op = card.operating_point("referable_dr")
    assert op is not None and op.sensitivity >= 0.9
    assert {"quadratic_weighted_kappa", "referable_auc", "max_abs_logit_diff"} <= set(card.metrics)
    assert card.metrics["max_abs_logit_diff"] <= 1e-4
    assert card.training.command.startswith("python -m training train")
    # A real training run, not a smoke test: a release version, provenance without scratch paths, and
    # held-out metrics well above chance.
    assert "dev" not in card.version and "/tmp" not in card.model_dump_json()
    assert card.metrics["n"] >= 200 and card.metrics["quadratic_weighted_kappa"] >= 0.7
    assert card.metrics["referable_auc"] >= 0.9 and card.metrics["referable_sensitivity"] >= 0.85


def test_tampered_model_is_refused(tmp_path: Path) -> None:
    card, d = _copy_default(tmp_path)
    with (d / "dr-grader.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(CardError, match="sha256"):
        verify(card, d)


def test_missing_file_and_foreign_preprocessing_are_refused(tmp_path: Path) -> None:
    card, d = _copy_default(tmp_path)
    other = card.model_copy(update={"preprocessing": card.preprocessing.model_copy(update={"version": "999"})})
    with pytest.raises(CardError, match="preprocessing"):
        verify(other, d)
    (d / "dr-grader.onnx").unlink()
    with pytest.raises(CardError, match="missing"):
        verify(card, d)


def test_card_cannot_point_outside_its_directory(tmp_path: Path) -> None:
    card, d = _copy_default(tmp_path)
    with pytest.raises(CardError, match="outside"):
        verify(card.model_copy(update={"file": "../dr-grader.onnx"}), d)


def test_malformed_card_is_a_card_error(tmp_path: Path) -> None:
    p = tmp_path / "bad.card.json"
    p.write_text(json.dumps({"name": "x"}))
    with pytest.raises(CardError, match="invalid"):
        ModelCard.load(p)
    p.write_text("{not json")
    with pytest.raises(CardError):
        ModelCard.load(p)


def test_intended_use_statements() -> None:
    from models.card import RESEARCH_USE, RESEARCH_WARNING, SYNTHETIC_WARNING, intended_use_for, statement_kind

    assert intended_use_for(True) == SYNTHETIC_WARNING and "synthetic" in SYNTHETIC_WARNING.lower()
    plain = intended_use_for(False)
    assert plain.startswith(RESEARCH_USE) and plain.endswith(RESEARCH_WARNING) and "synthetic" not in plain.lower()
    assert "not for diagnostic use" in RESEARCH_WARNING.lower()
    real = intended_use_for(False, data="EyePACS photographs",
                            terms="non-commercial research use only (Kaggle EyePACS terms)")
    assert real.startswith("Research use, not for clinical use. Trained on EyePACS photographs")
    assert "non-commercial research use only (Kaggle EyePACS terms)" in real
    assert intended_use_for(True, data="x", terms="y") == SYNTHETIC_WARNING
    assert [statement_kind(t) for t in (SYNTHETIC_WARNING, real, plain, RESEARCH_WARNING)] == [
        "synthetic", "research", "research", "unstated"]


def test_cards_without_data_terms_still_load() -> None:
    """``training.data_terms`` came later: a card that lacks it (the embedded default) loads with ``None``."""
    raw = json.loads((DEFAULT_DIR / "dr-grader-synthetic.card.json").read_text())
    assert "data_terms" not in raw["training"]
    assert ModelCard.load(DEFAULT_DIR / "dr-grader-synthetic.card.json").training.data_terms is None


def test_unknown_recipe_or_foreign_normalisation_is_refused(tmp_path: Path) -> None:
    from models.card import recipe_of
    from models.preprocess import CONTRAST, DISC_CROP

    assert recipe_of(ModelCard.load(DEFAULT_DIR / "dr-grader.card.json")) == CONTRAST
    card, d = _copy_default(tmp_path, "dr-grader-synthetic")
    assert recipe_of(card) == DISC_CROP
    unknown = card.model_copy(update={"preprocessing": card.preprocessing.model_copy(
        update={"name": "acme.fundus-magic"})})
    with pytest.raises(CardError, match="acme.fundus-magic"):
        verify(unknown, d)
    with pytest.raises(CardError, match="preprocessing"):
        recipe_of(unknown)
    # The contrast recipe's name with ImageNet statistics: a model trained with other numbers than serving's.
    foreign = card.model_copy(update={"preprocessing": card.preprocessing.model_copy(
        update={"name": CONTRAST.name, "version": CONTRAST.version})})
    with pytest.raises(CardError, match="normalisation"):
        verify(foreign, d)
    with pytest.raises(CardError, match="normalisation"):
        recipe_of(card.model_copy(update={"input": card.input.model_copy(update={"std": (0.5, 0.5, 0.5)})}))


def test_test_time_views_default_to_the_identity_and_must_be_a_prefix_of_the_group(tmp_path: Path) -> None:
    raw = json.loads((DEFAULT_DIR / "dr-grader-synthetic.card.json").read_text())
    assert "test_time_views" not in raw  # older cards: one view
    assert ModelCard.load(DEFAULT_DIR / "dr-grader-synthetic.card.json").test_time_views == ("identity",)
    for views in (["rot90"], ["identity", "rot90", "rot180"], []):
        path = tmp_path / "c.card.json"
        path.write_text(json.dumps({**raw, "test_time_views": views}))
        with pytest.raises(CardError, match="test_time_views"):
            ModelCard.load(path)
    path.write_text(json.dumps({**raw, "test_time_views": ["identity", "rot90"]}))
    assert ModelCard.load(path).test_time_views == ("identity", "rot90")
