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
    first = ensure_defaults()
    assert ensure_defaults() == []
    assert all(t.startswith("dr-grader:") for t in first)
