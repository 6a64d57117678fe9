"""Findings schema helpers: finding a result's model by task."""

from __future__ import annotations

from analysis.findings import ModelRef, model_for


def _ref(name: str, task: str | None) -> ModelRef:
    return ModelRef(name=name, version="1", sha256="0" * 64, provider="cpu", task=task)  # type: ignore[arg-type]


def test_models_are_found_by_task_not_position() -> None:
    models = [_ref("g", "dr-grading"), _ref("q", "image-quality")]  # a quality model, no detector
    assert model_for(models, "dr-grading").name == "g"  # type: ignore[union-attr]
    assert model_for(models, "image-quality").name == "q"  # type: ignore[union-attr]
    assert model_for(models, "lesion-detection") is None


def test_results_without_tasks_keep_the_old_order() -> None:
    models = [_ref("g", None), _ref("d", None)]
    assert model_for(models, "dr-grading").name == "g"  # type: ignore[union-attr]
    assert model_for(models, "lesion-detection").name == "d"  # type: ignore[union-attr]
    assert model_for(models, "image-quality") is None
