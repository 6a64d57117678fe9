"""training.distill: a teacher's view-averaged soft targets, the distillation loss, and the guard against a teacher
that saw this run's validation patients."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training extras (torch) are not installed")

from training.checkpoint import load_checkpoint  # noqa: E402
from training.config import DataConfig, TrainConfig, load_config  # noqa: E402
from training.distill import DistillationLoss, check_teacher, teacher_probabilities  # noqa: E402
from training.losses import build_loss  # noqa: E402
from models.preprocess import recipe_for  # noqa: E402


def test_loss_adds_the_cross_entropy_to_the_teacher() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    grades = torch.tensor([0, 1, 2, 3, 4, 0])
    teacher = torch.softmax(torch.randn(6, 5), dim=1)
    base = build_loss("ce+emd", label_smoothing=0.05)
    loss = DistillationLoss(base, 0.5)
    soft = -(teacher * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    assert torch.isclose(loss(logits, {"grade": grades, "teacher": teacher}), base(logits, grades) + 0.5 * soft)
    # validation batches carry plain grades: the run's own objective
    assert torch.isclose(loss(logits, grades), base(logits, grades))


def test_the_soft_term_is_least_at_the_teachers_distribution() -> None:
    teacher = torch.tensor([[0.6, 0.3, 0.05, 0.03, 0.02]])
    loss = DistillationLoss(build_loss("ce"), 1.0)
    grade = torch.tensor([0])
    at_teacher = loss(teacher.log(), {"grade": grade, "teacher": teacher})
    sharper = loss(torch.tensor([[5.0, 0, 0, 0, 0]]), {"grade": grade, "teacher": teacher})
    # a one-hot-confident student gains on the hard term but loses more on the soft one
    assert float(at_teacher) < float(sharper)


def _cfg(**data: object) -> TrainConfig:
    base = {"train": "real/eyepacs256", "format": "eyepacs", "val_fraction": 0.1}
    return TrainConfig(input_size=288, preprocessing="fovea.fundus-contrast",
                       data=DataConfig(**(base | data)))  # type: ignore[arg-type]


def test_a_teacher_trained_on_the_same_split_is_accepted() -> None:
    check_teacher(_cfg(), _cfg())


@pytest.mark.parametrize(("change", "named"), [
    ({"seed": 1}, "seed (the patient split)"),
    ({"input_size": 224}, "input_size"),
    ({"preprocessing": "fovea.fundus-disc-crop"}, "preprocessing"),
    ({"data": DataConfig(train="other", format="eyepacs", val_fraction=0.1)}, "training data"),
    ({"data": DataConfig(train="real/eyepacs256", format="eyepacs", val_fraction=0.2)}, "val_fraction"),
    ({"task": "image-quality"}, "DR grader"),
])
def test_a_teacher_that_could_leak_validation_patients_is_refused(change: dict[str, object], named: str) -> None:
    teacher = dataclasses.replace(_cfg(), **change)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        check_teacher(teacher, _cfg())


def test_config_checks_its_distillation_keys() -> None:
    with pytest.raises(ValueError, match="teacher_views must be one of 1, 2, 4, 8"):
        TrainConfig(teacher_views=3)
    with pytest.raises(ValueError, match="distill_weight must be positive"):
        TrainConfig(distill_weight=0.0)


def test_student_trains_on_the_teachers_view_averaged_targets(tiny_export: Path, tiny_config: Path,
                                                               tmp_path: Path) -> None:
    """The tiny grader (trained by the fixture) teaches a student of the same config: its soft targets are the
    softmax of its logits averaged over the photograph and its quarter turn, and training and export run."""
    from training.__main__ import main
    from training.tasks import TASKS

    cfg0 = load_config(tiny_config)
    teacher_ck = Path(cfg0.out) / "last.pt"
    student_yaml = tmp_path / "student.yaml"
    raw = cfg0.to_dict() | {"version": "0.0.2", "out": str(tmp_path / "student"), "teacher": str(teacher_ck),
                            "teacher_views": 2, "distill_weight": 2.0}
    student_yaml.write_text(json.dumps(raw))  # JSON is YAML
    cfg = load_config(student_yaml)

    task = TASKS["dr-grading"]
    train_items, _ = task.split(cfg, verbose=False)
    ds = task.dataset(train_items, cfg, train=True)
    assert ds.teacher is not None and ds.teacher.shape == (len(train_items), 5)
    np.testing.assert_allclose(ds.teacher.sum(axis=1), 1.0, atol=1e-5)
    # independently: the teacher on the crop and on its quarter turn, logits averaged, softmax
    model, _, _ = load_checkpoint(teacher_ck)
    recipe = recipe_for(cfg.preprocessing)
    crop = ds.crops[3]
    x = torch.from_numpy(np.stack([recipe.to_tensor(crop), recipe.to_tensor(np.ascontiguousarray(np.rot90(crop)))]))
    with torch.inference_mode():
        expected = torch.softmax(model(x).mean(dim=0), dim=0).numpy()
    np.testing.assert_allclose(ds.teacher[3], expected, atol=1e-5)
    image, target = ds[3]
    assert isinstance(target, dict) and target["grade"] == int(ds.labels[3])
    np.testing.assert_array_equal(target["teacher"].numpy(), ds.teacher[3])
    assert isinstance(task.loss_fn(cfg), DistillationLoss)

    assert main(["train", "--config", str(student_yaml)]) == 0
    assert (tmp_path / "student" / "best.pt").is_file()


def test_a_leaking_teacher_stops_training_with_a_message(tiny_export: Path, tiny_config: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from training.__main__ import main

    cfg0 = load_config(tiny_config)
    raw = cfg0.to_dict() | {"seed": 5, "out": str(tmp_path / "s"), "teacher": str(Path(cfg0.out) / "last.pt")}
    student_yaml = tmp_path / "student.yaml"
    student_yaml.write_text(json.dumps(raw))
    assert main(["train", "--config", str(student_yaml)]) != 0
    assert "seed (the patient split) 0 vs 5" in capsys.readouterr().err


def test_a_missing_teacher_is_named(tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.__main__ import main

    raw = load_config(tiny_config).to_dict() | {"out": str(tmp_path / "s"), "teacher": str(tmp_path / "no.pt")}
    student_yaml = tmp_path / "student.yaml"
    student_yaml.write_text(json.dumps(raw))
    assert main(["train", "--config", str(student_yaml)]) != 0
    err = capsys.readouterr().err
    assert "teacher checkpoint" in err and "does not exist" in err
