"""models.store: import into BentoML's store (idempotent, refuses a changed file under a version), defaults,
and verified loading (no pickles, sha256 checked on the bytes used)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from models.card import CardError
from models.store import ensure_defaults, import_model, load_verified


@pytest.fixture()
def export_copy(tiny_export: Path, tmp_path: Path) -> Path:
    d = tmp_path / "export"
    shutil.copytree(tiny_export, d)
    return d / "tiny-grader.card.json"


def test_import_is_idempotent_and_refuses_a_changed_file(export_copy: Path) -> None:
    tag = import_model(export_copy)
    assert tag == "tiny-grader:0.0.1"
    assert import_model(export_copy) == tag
    # Same version, different weights: a rebuilt card for a modified file must not replace the stored one.
    from models.card import ModelCard, sha256_file

    onnx = export_copy.parent / "tiny-grader.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    card = ModelCard.load(export_copy)
    card.model_copy(update={"sha256": sha256_file(onnx)}).save(export_copy)
    with pytest.raises(CardError, match="different file"):
        import_model(export_copy)


def test_load_verified_refuses_pickles_and_tampering(export_copy: Path) -> None:
    card, data = load_verified(export_copy)
    assert data[:4] != b"" and card.name == "tiny-grader"
    (export_copy.parent / "custom_objects.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CardError, match="pickle"):
        load_verified(export_copy)
    (export_copy.parent / "custom_objects.pkl").unlink()
    onnx = export_copy.parent / "tiny-grader.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-1])
    with pytest.raises(CardError, match="sha256"):
        load_verified(export_copy)


def test_ensure_defaults_imports_once() -> None:
    from models.store import DEFAULT_DIR, DEFAULT_MODELS

    from models.card import ModelCard
    from models.store import get_exact

    first = ensure_defaults()  # empty when an earlier test of this session already imported them
    assert ensure_defaults() == []
    embedded = [ModelCard.load(DEFAULT_DIR / f"{n}.card.json") for n in DEFAULT_MODELS
                if (DEFAULT_DIR / f"{n}.card.json").is_file()]
    # Second tags of a name (the synthetic grader beside the real-data default) are imported too.
    alternates = [ModelCard.load(p) for n in DEFAULT_MODELS for p in sorted(DEFAULT_DIR.glob(f"{n}-*.card.json"))]
    assert [c.tag for c in alternates] == ["dr-grader:0.2.0"]
    assert embedded[0].name == "dr-grader" and set(first) <= {c.tag for c in embedded + alternates}
    for card in embedded + alternates:  # every embedded model, at its exact version, with its own file
        assert ModelCard.load(Path(get_exact(card.tag).path) / "card.json").sha256 == card.sha256


def test_a_fresh_store_serves_the_primary_default_as_latest(tmp_path: Path) -> None:
    """The alternates go in first, so on a new store ``dr-grader:latest`` is the embedded default, not the
    second tag (a separate process: BentoML's store is a process-wide singleton)."""
    import os
    import subprocess
    import sys

    from models.card import ModelCard
    from models.store import DEFAULT_DIR

    code = ("import bentoml; from models.store import ensure_defaults; ensure_defaults(); "
            "print(bentoml.models.get('dr-grader:latest').tag.version)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")})
    assert out.stdout.strip().splitlines()[-1] == ModelCard.load(DEFAULT_DIR / "dr-grader.card.json").version


@pytest.mark.parametrize("fixture,card_name,task", [
    ("tiny_export", "tiny-grader", "dr-grading"),
    ("tiny_detector_run", "tiny-detector", "lesion-detection"),
    ("tiny_quality_run", "tiny-quality", "image-quality"),
])
def test_register_stores_onnx_card_labels_and_metadata(fixture: str, card_name: str, task: str, tmp_path: Path,
                                                       request: pytest.FixtureRequest,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m training register`` for each task: the verified ONNX file and the card in the store, with
    labels to filter on and the card's contract and metrics as metadata."""
    import bentoml

    from models.card import ModelCard, sha256_file
    from training.__main__ import main

    value = request.getfixturevalue(fixture)
    export = value if isinstance(value, Path) else value[1]
    d = tmp_path / "export"
    shutil.copytree(export, d)
    card_path = d / f"{card_name}.card.json"
    card = ModelCard.load(card_path)
    capsys.readouterr()
    assert main(["register", "--card", str(card_path)]) == 0
    tag = capsys.readouterr().out.strip()
    assert tag == card.tag
    stored = bentoml.models.get(tag)
    files = {p.name for p in Path(stored.path).iterdir()}
    assert {card.file, "card.json"} <= files and not any(f.endswith(".pkl") for f in files)
    assert sha256_file(Path(stored.path) / card.file) == card.sha256
    assert stored.info.labels == {"task": task, "architecture": card.architecture,
                                  "preprocessing": f"{card.preprocessing.name}-v{card.preprocessing.version}",
                                  "trained-on": "synthetic"}
    meta = stored.info.metadata
    assert meta["sha256"] == card.sha256 and meta["classes"] == list(card.classes)
    assert meta["input_size"] == card.input.size and meta["outputs"] == list(card.outputs)
    assert meta["metrics"] == {k: v for k, v in card.metrics.items() if v == v}  # NaN left out
    assert meta["code_commit"] == card.training.code_commit and meta["created"] == card.created
    if task == "dr-grading":
        assert set(meta["operating_points"]) == {"referable_dr"}
    if task == "image-quality":
        assert set(meta["operating_points"]) == {"gradable"}
    if task == "lesion-detection":
        assert set(meta["score_thresholds"]) == set(card.classes)


def test_an_explicit_version_is_never_matched_by_prefix(export_copy: Path) -> None:
    # BentoML's get() accepts a unique version prefix: with only "0.0.1-int8" stored, "tiny-grader:0.0.1" would
    # resolve to it, and importing the fp32 0.0.1 would then be refused as "a different file".
    from models.card import ModelCard, sha256_file
    from models.store import get_exact

    d = export_copy.parent
    card = ModelCard.load(export_copy)
    q = d / "q"
    q.mkdir()
    (q / "tiny-grader-int8.onnx").write_bytes((d / card.file).read_bytes() + b"\0")
    int8 = card.model_copy(update={"version": "9.9.9-int8", "file": "tiny-grader-int8.onnx",
                                   "sha256": sha256_file(q / "tiny-grader-int8.onnx")})
    int8.save(q / "tiny-grader-int8.card.json")
    assert import_model(q / "tiny-grader-int8.card.json") == "tiny-grader:9.9.9-int8"
    assert get_exact("tiny-grader:9.9.9") is None
    assert get_exact("tiny-grader:9.9.9-int8") is not None
    # What the service serves for FOVEA_GRADER_TAG: the version asked for, or a clear refusal.
    from models.store import exact_dir

    with pytest.raises(CardError, match="no tiny-grader:9.9.9 "):
        exact_dir("tiny-grader:9.9.9")
    assert exact_dir("tiny-grader:9.9.9-int8").name == "9.9.9-int8"
    fp32 = card.model_copy(update={"version": "9.9.9"})
    fp32.save(export_copy)
    assert import_model(export_copy) == "tiny-grader:9.9.9"
    model = get_exact("tiny-grader:9.9.9")
    assert model is not None and str(model.tag) == "tiny-grader:9.9.9"


def test_a_remeasured_card_of_the_same_file_replaces_the_stored_card(export_copy: Path) -> None:
    from models.card import GradeRule, ModelCard
    from models.store import get_exact

    tag = import_model(export_copy)
    card = ModelCard.load(export_copy)
    rule = GradeRule(cutpoints=(0.6, 0.9, 1.5, 2.9), chosen_on="validation")
    card.model_copy(update={"grade_rule": rule}).save(export_copy)
    assert import_model(export_copy) == tag
    model = get_exact(tag)
    assert model is not None
    stored, _ = load_verified(Path(model.path))
    assert stored.grade_rule == rule  # the stored copy follows, the file is the same one
