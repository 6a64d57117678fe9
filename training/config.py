"""Training configuration: a frozen dataclass loaded from YAML, saved resolved with every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from models.preprocess import RECIPES
from models.views import VIEW_COUNTS, view_names


@dataclass(frozen=True, kw_only=True)
class SyntheticSpec:
    """How to generate a synthetic split when its folder does not exist yet."""

    count: int
    seed: int
    size: int = 512
    #: probability that a photograph gets quality artefacts (the generator's default; the quality model wants more)
    p_degraded: float = 0.1


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where images and labels come from. ``format`` names a reader in :mod:`training.data`.

    ``test`` is the held-out folder; ``None`` when the data has no separate test split: ``evaluate`` and
    ``export`` then measure on the patient-disjoint validation split training held out (the card says so).
    ``description`` names the data for the model card (default: the folder and format); ``terms`` are the
    terms it was published under, which the model inherits (its card's intended use and ``data_terms``).
    """

    train: str
    test: str | None = None
    format: str = "eyepacs"
    description: str | None = None
    terms: str | None = None
    val_fraction: float = 0.15
    #: train on this share of the training patients only (nested, seeded; the validation split is unchanged):
    #: a learning curve against the amount of data (README, Real photographs)
    train_fraction: float = 1.0
    synthetic_train: SyntheticSpec | None = None
    synthetic_test: SyntheticSpec | None = None
    #: image quality: human quality grades of real photographs (an EyeQ-style CSV ``image,quality`` with 0 Good,
    #: 1 Usable, 2 Reject), trained on beside ``train``; the images are read from ``real_images`` (``format``
    #: ``real_format``). Missing files are an error.
    real_quality: str | None = None
    real_images: str | None = None
    real_format: str = "eyepacs"
    #: lesion detection: a folder of real screening photographs without lesion annotation (e.g. raw DRIVE
    #: photographs, mostly without DR). At export each class's score threshold is raised, if need be, until at
    #: most ``negatives_fp_per_image`` of its findings per photograph there score above it: the synthetic
    #: validation split cannot show how a synthetic-trained detector answers real vessels and reflexes.
    #: ``negatives_terms``: the terms those photographs were published under (the card names them). A folder
    #: that is missing is skipped with a warning (the thresholds then come from the validation split alone).
    negatives: str | None = None
    negatives_fp_per_image: float = 0.1
    negatives_terms: str | None = None


#: What a config trains: the name of a task in :data:`training.tasks.TASKS` (the DR grader, the lesion detector or
#: the image-quality model).
TaskName = Literal["dr-grading", "lesion-detection", "image-quality"]


#: Mixed precision of the training step (:mod:`training.precision`).
AmpMode = Literal["auto", "always", "never"]


#: The grader's training objectives; :mod:`training.losses` says what each is and why ``ce+emd`` is the default.
Objective = Literal["ce", "ce+emd", "sord", "ce+expected"]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that determines a trained model (a grader unless ``task`` says otherwise)."""

    task: TaskName = "dr-grading"
    name: str = "dr-grader"
    version: str = "0.1.0"
    architecture: str = "mobilenet_v3_large_rt"
    input_size: int = 384
    #: the :data:`models.preprocess.RECIPES` entry the model is trained and served with
    preprocessing: str = "fovea.fundus-disc-crop"
    num_classes: int = 5
    dropout: float = 0.2
    epochs: int = 10
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    #: grader training objective (:mod:`training.losses`): cross-entropy, + squared EMD, or soft ordinal labels
    objective: Objective = "ce+emd"
    early_stopping_patience: int = 4
    #: ``shuffle`` (each photograph once per epoch) or ``sqrt-balanced`` (drawn with replacement, weight
    #: count(class)^-0.5, the class being the task's: the grade, or gradable/ungradable; rare grades are seen
    #: often enough that the first epochs do not collapse to the majority grade on real, imbalanced data)
    sampler: Literal["shuffle", "sqrt-balanced"] = "shuffle"
    #: grader augmentation: largest rotation in degrees
    max_rotation: float = 20.0
    #: learning rate of the trunk (``features``) relative to ``lr``, which the head gets: below 1 fine-tunes
    #: pretrained features gently while the new head learns fast
    backbone_lr_scale: float = 1.0
    #: freeze the first this many modules of the trunk (``features``: the stem, then one per block): no
    #: gradients, and their BatchNorm keeps its (pretrained) statistics in training too. The early layers work at
    #: the highest resolution: for EfficientNet-Lite0 at 288 px, freezing the first 6 (to stride 8) halves a
    #: CPU training step. 0: train everything
    frozen_layers: int = 0
    #: keep an exponential moving average of the weights with this decay per step (:mod:`training.ema`) and
    #: validate, keep and export it instead of the raw weights; None: the raw weights
    ema_decay: float | None = None
    #: graders: average the logits (and CAMs) over this many test-time views of the input, built into the exported
    #: graph and used by validation too (:mod:`models.views`: 1, 2, 4 or 8); an export setting as well, so the
    #: same weights can be exported with other views
    test_time_views: int = 1
    #: graders: a grader checkpoint whose test-time-view average is distilled into this model
    #: (:mod:`training.distill`): its softmax over ``teacher_views`` views of each training photograph becomes a
    #: soft target beside the grade. It must have been trained on the same data, split and preprocessing (its
    #: validation patients are this run's), which training checks.
    teacher: str | None = None
    #: how many test-time views of the teacher are averaged into its soft targets (1, 2, 4 or 8)
    teacher_views: int = 8
    #: weight of the cross-entropy to the teacher's distribution, added to the ``objective`` on the grades
    distill_weight: float = 1.0
    #: train and run in channels-last memory layout (faster for depthwise nets on CPUs; measured: README, Training)
    channels_last: bool = False
    #: mixed precision (:mod:`training.precision`): ``auto`` float16 on CUDA only, ``always`` also bfloat16 on
    #: the CPU, ``never`` float32 everywhere
    amp: AmpMode = "auto"
    seed: int = 0
    workers: int = 0
    out: str = "runs/grader"
    referable_min_sensitivity: float = 0.90
    #: image quality: least sensitivity for "ungradable" at the card's gradable threshold
    ungradable_min_sensitivity: float = 0.90
    #: lesion detection: train on random windows of this side of the ``input_size`` crop (None: whole crop)
    train_crop: int | None = None
    data: DataConfig = field(default_factory=lambda: DataConfig(train="data/train", test="data/test"))

    def __post_init__(self) -> None:
        if self.task not in get_args(TaskName):
            raise ValueError(f"unknown task {self.task!r}; known: {', '.join(get_args(TaskName))}")
        if self.amp not in get_args(AmpMode):
            raise ValueError(f"unknown amp {self.amp!r}; known: {', '.join(get_args(AmpMode))}")
        if self.preprocessing not in RECIPES:
            raise ValueError(f"unknown preprocessing {self.preprocessing!r}; known: {', '.join(RECIPES)}")
        if self.objective not in get_args(Objective):
            raise ValueError(f"unknown objective {self.objective!r}; known: {', '.join(get_args(Objective))}")
        view_names(self.test_time_views)  # ValueError naming the allowed counts
        if self.teacher_views not in VIEW_COUNTS:
            raise ValueError(f"teacher_views must be one of {', '.join(map(str, VIEW_COUNTS))}, not {self.teacher_views}")
        if not self.distill_weight > 0.0:
            raise ValueError(f"distill_weight must be positive, not {self.distill_weight}")
        if self.frozen_layers < 0:
            raise ValueError(f"frozen_layers must be 0 or more, not {self.frozen_layers}")
        if not 0.0 < self.data.train_fraction <= 1.0:
            raise ValueError(f"data.train_fraction must be above 0 and at most 1, not {self.data.train_fraction}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie strictly between 0 and 1 (e.g. 0.998), not {self.ema_decay}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for YAML, the checkpoint and the model card)."""
        return dataclasses.asdict(self)


def _build(cls: type, values: dict[str, Any]) -> Any:
    """Instantiate nested frozen dataclasses from plain dicts, rejecting unknown keys with a clear message."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    nested = {"data": DataConfig, "synthetic_train": SyntheticSpec, "synthetic_test": SyntheticSpec}
    for key, value in values.items():
        kwargs[key] = _build(nested[key], value) if key in nested and isinstance(value, dict) else value
    return cls(**kwargs)


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Load a YAML config and apply top-level ``overrides`` (e.g. ``{"epochs": 1}``); ``None`` values are
    ignored so unset CLI flags do not override the file."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"config {path} must be a mapping at the top level")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in {"train", "test"}:
            raw.setdefault("data", {})[key] = value
        else:
            raw[key] = value
    return _build(TrainConfig, raw)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a :class:`TrainConfig` from its :meth:`TrainConfig.to_dict` form (e.g. from a checkpoint)."""
    return _build(TrainConfig, values)
