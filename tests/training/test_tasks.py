"""training.tasks: one registered task per config task name, and the checks every task applies to a config."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

pytest.importorskip("torch", reason="training extras (torch) are not installed")

from training.config import TaskName, load_config  # noqa: E402
from training.tasks import TASKS, get_task, register_task  # noqa: E402


def test_every_config_task_has_one_registered_task() -> None:
    assert sorted(TASKS) == sorted(get_args(TaskName))
    assert all(task.name == name for name, task in TASKS.items())
    with pytest.raises(ValueError, match="already registered"):
        register_task(TASKS["dr-grading"])
    with pytest.raises(ValueError, match="unknown task 'segmentation'"):
        get_task("segmentation")


@pytest.mark.parametrize("config", sorted(Path("training/configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_fits_its_task(config: Path) -> None:
    cfg = load_config(config)
    task = get_task(cfg.task)
    task.check_config(cfg)
    assert cfg.num_classes == len(task.classes) and task.selection and task.best_key.startswith("best_")


def test_export_outputs_are_the_graphs(tmp_path: Path) -> None:
    from models.architectures.detector import DetectorExport

    assert get_task("lesion-detection").output_names == DetectorExport.output_names
    assert get_task("dr-grading").output_names == ("logits", "cam")
    assert get_task("image-quality").output_names == ("probabilities",)


def test_a_config_that_does_not_fit_its_task_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: lesion-detection\nnum_classes: 4\nsampler: sqrt-balanced\n")
    with pytest.raises(ValueError, match="sqrt-balanced is not available for lesion-detection"):
        get_task("lesion-detection").check_config(load_config(cfg))
    cfg.write_text("task: lesion-detection\nnum_classes: 5\n")
    with pytest.raises(ValueError, match="num_classes must be 4"):
        get_task("lesion-detection").check_config(load_config(cfg))
    cfg.write_text("task: dr-grading\namp: on\n")  # YAML reads a bare on as true
    with pytest.raises(ValueError, match="unknown amp True"):
        load_config(cfg)


def test_training_data_names_a_partial_share_of_the_patients() -> None:
    import dataclasses

    cfg = load_config(Path("training/configs/real-grader.yaml"), {"out": None})
    task = get_task(cfg.task)
    assert task.training_data(cfg) == (f"{cfg.data.description}: ../shared/real-dev/eyepacs256 (eyepacs)")
    half = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_fraction=0.5))
    assert task.training_data(half).endswith("(eyepacs), 50% of its training patients")
