"""The one model-card builder: a :class:`models.card.ModelCard` from the task's fields, the training
checkpoint's provenance and what the exported file measured."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.card import InputSpec, ModelCard, PreprocessingSpec, TrainingProvenance, sha256_file
from models.views import view_names
from training.config import TrainConfig

if TYPE_CHECKING:  # the card helpers stay importable without torch (training.quantize uses them)
    from training.tasks.base import Measured, Task


def utc_now() -> str:
    """The card's ``created``: now, UTC, to the second, ISO 8601."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def code_commit() -> str:
    """The git commit of this checkout of the code (with ``-dirty`` if the tree has changes), or ``unknown``
    outside git. Asked in the repository, whatever the current directory."""
    repo = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(task: Task, cfg: TrainConfig, ck: dict[str, Any]) -> TrainingProvenance:
    """The card's ``training``: the task's description of the data and its terms, and the checkpoint's command,
    code commit, resolved config, torch version and training seconds."""
    return TrainingProvenance(data=task.training_data(cfg), command=ck["command"], code_commit=ck["code_commit"],
                              config=json.loads(ck["config"]), torch_version=ck["torch_version"],
                              seconds=ck["seconds"], data_terms=task.data_terms(cfg))


def build_card(task: Task, cfg: TrainConfig, ck: dict[str, Any], *, onnx_path: Path, opset: int,
               measured: Measured) -> ModelCard:
    """The card of the ONNX file at ``onnx_path`` exported from the checkpoint ``ck`` (config ``cfg``) of
    ``task``: name and version from the config, the file's sha256, the input and preprocessing of the task's
    recipe, the task's outputs and classes, the ``measured`` metrics and operating points, the training
    provenance and the intended use that follows from the training data."""
    recipe = task.recipe(cfg)
    return ModelCard(
        name=cfg.name, version=cfg.version, task=task.name, architecture=cfg.architecture,  # type: ignore[arg-type]
        file=onnx_path.name, sha256=sha256_file(onnx_path), opset=opset,
        input=InputSpec(size=cfg.input_size, mean=recipe.mean, std=recipe.std),
        outputs=task.output_names,
        preprocessing=PreprocessingSpec(name=recipe.name, version=recipe.version),
        classes=task.classes,
        operating_points=measured.operating_points, score_thresholds=measured.score_thresholds,
        grade_rule=measured.grade_rule, fellow_eye=measured.fellow_eye, test_time_views=view_names(cfg.test_time_views),
        metrics=measured.metrics, metrics_data=measured.metrics_data,
        training=provenance(task, cfg, ck),
        intended_use=task.intended_use(cfg),
        created=utc_now(),
    )
