"""The task abstraction: what the one training loop (:mod:`training.train`), the one export path
(:mod:`training.export`) and the one evaluation (:mod:`training.evaluation`) ask of a model type.

A :class:`Task` owns its data (the patient-disjoint split, the dataset and its collate), its model and loss,
its validation metrics (the one that selects the best epoch among them) and operating point, what its model
card says about the data, its ONNX graph's outputs and their parity rule, the measurements written into the
card, and the sections of its evaluation report. Everything else is shared.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from models.architectures import build
from models.card import FellowEyeRule, GradeRule, OperatingPoint, ScoreThreshold, intended_use_for
from models.preprocess import Recipe, recipe_for
from training.config import TrainConfig
from training.data import is_synthetic_folder, split_by_patient
from training.engine import LossFn
from training.report_html import Page


@dataclass(frozen=True)
class OutputSpec:
    """One output of the exported graph and its parity rule: the card metric ``parity_metric`` is the largest
    absolute difference between ONNX Runtime and PyTorch, divided by the largest reference value
    (``scale="max"``) or by that value but at least 1 (``"max1"``) or not at all (``"abs"``); a ``checked``
    difference above the export's tolerance refuses the export."""

    name: str
    parity_metric: str
    scale: Literal["abs", "max", "max1"] = "abs"
    checked: bool = True


@dataclass(frozen=True)
class Validation:
    """One validation pass: the named ``metrics`` and, for a task with one, the ``operating_point`` chosen on it
    (``threshold``, ``sensitivity``, ``specificity``)."""

    metrics: dict[str, float]
    operating_point: dict[str, float] | None = None


@dataclass(frozen=True)
class Measured:
    """What the exported ONNX file measured for its card: ``metrics``, what they were measured on
    (``metrics_data``), and the operating points or per-class score thresholds it chose."""

    metrics: dict[str, float]
    metrics_data: str
    operating_points: tuple[OperatingPoint, ...] = ()
    score_thresholds: tuple[ScoreThreshold, ...] = ()
    grade_rule: GradeRule | None = None
    fellow_eye: FellowEyeRule | None = None


@dataclass(frozen=True)
class HeldOut:
    """Where export and evaluation measure: the folder ``root`` (layout ``fmt``, published ``split``), or, when
    ``root`` is ``None``, the patient-disjoint validation split training held out."""

    root: Path | None
    fmt: str
    split: str | None = None


class Task(ABC):
    """One model type. Subclasses set the class attributes and implement the abstract methods; one instance
    per task lives in :data:`training.tasks.TASKS` under :attr:`name` (the config's ``task``)."""

    #: the config's ``task`` and the card's
    name: ClassVar[str]
    #: the validation metric that selects the best epoch and stops training early, how logs call it, and the
    #: checkpoint key of its best value
    selection: ClassVar[str]
    selection_label: ClassVar[str]
    best_key: ClassVar[str]
    #: the history curves drawn per epoch: (history key, legend label)
    curves: ClassVar[tuple[tuple[str, str], ...]]
    #: the model's classes (its card's ``classes``; the config's ``num_classes`` must match)
    classes: ClassVar[tuple[str, ...]]
    #: the exported graph's outputs, in order
    outputs: ClassVar[tuple[OutputSpec, ...]]
    #: train in channels-last memory layout whatever the config says
    channels_last: ClassVar[bool] = False
    #: export and evaluate may measure on the validation split when the config names no held-out data
    measures_on_validation: ClassVar[bool] = False
    #: whether the task's export graph can average test-time views (``test_time_views`` in the config)
    test_time_views: ClassVar[bool] = False
    #: whether the task can learn from a teacher's soft targets (``teacher`` in the config, :mod:`training.distill`)
    distills: ClassVar[bool] = False
    #: what the training loss is called in the report's training curves
    loss_label: ClassVar[str] = "loss"
    #: the batch collate of the task's datasets (``None``: PyTorch's default)
    collate: ClassVar[Callable[[list[Any]], Any] | None] = None

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    # --- configuration ---------------------------------------------------------------------------------------
    def check_config(self, cfg: TrainConfig) -> None:
        """``ValueError`` when ``cfg`` cannot train this task (checked before any data is read)."""
        if cfg.task != self.name:
            raise ValueError(f"config task is {cfg.task!r}, not {self.name!r}")
        if cfg.num_classes != len(self.classes):
            raise ValueError(f"num_classes must be {len(self.classes)} for the {self.name} model "
                             f"({', '.join(self.classes)}), got {cfg.num_classes}")
        if cfg.test_time_views != 1 and not self.test_time_views:
            raise ValueError(f"test_time_views applies to the DR grader only; the {self.name} model takes 1")
        if cfg.teacher is not None and not self.distills:
            raise ValueError(f"teacher (distillation) applies to the DR grader only, not the {self.name} model")
        if cfg.sampler == "sqrt-balanced" and type(self).sample_weights is Task.sample_weights:
            raise ValueError(f"sampler sqrt-balanced is not available for {self.name}")

    def recipe(self, cfg: TrainConfig) -> Recipe:
        """The preprocessing the model is trained and served with."""
        return recipe_for(cfg.preprocessing)

    # --- data ------------------------------------------------------------------------------------------------
    @abstractmethod
    def read_items(self, root: Path, fmt: str, *, split: str | None = None, verbose: bool = True) -> list[Any]:
        """The items of the dataset at ``root`` (layout ``fmt``, published ``split``) this task learns from;
        :class:`datasets.readers.DatasetError` when there are none."""

    def split(self, cfg: TrainConfig, *, verbose: bool = True) -> tuple[list[Any], list[Any]]:
        """The training data as (training, validation) items, split by patient."""
        return patient_split(self.read_items(Path(cfg.data.train), cfg.data.format, verbose=verbose), cfg)

    def load_held_out(self, held_out: HeldOut, cfg: TrainConfig) -> list[Any]:
        """The items of ``held_out``: its folder, or the validation split training held out."""
        if held_out.root is not None:
            return self.read_items(held_out.root, held_out.fmt, split=held_out.split)
        if not self.measures_on_validation:
            raise ValueError(f"a {self.name} model is evaluated on held-out data only: pass --data")
        return self.split(cfg, verbose=False)[1]

    def describe_held_out(self, held_out: HeldOut, cfg: TrainConfig, items: Sequence[Any]) -> str:
        """What ``items`` (read from ``held_out``) are, for a report."""
        if held_out.root is None:
            return self.describe_validation(cfg, items)
        return f"{held_out.root} ({held_out.fmt}{', ' + held_out.split if held_out.split else ''}), {len(items)} images"

    def describe_validation(self, cfg: TrainConfig, items: Sequence[Any]) -> str:
        """What the patient-disjoint validation split ``items`` of ``cfg``'s training data is."""
        return (f"patient-disjoint validation split ({cfg.data.val_fraction:.0%}, seed {cfg.seed}) of "
                f"{cfg.data.train} ({cfg.data.format}), {len(items)} images")

    # --- training --------------------------------------------------------------------------------------------

    @abstractmethod
    def dataset(self, items: Sequence[Any], cfg: TrainConfig, *, train: bool, desc: str = "preprocess") -> Dataset:
        """The dataset of ``items`` (augmented when ``train``) yielding what :attr:`collate` batches into
        ``(images, targets)``; it has ``set_epoch(epoch)``."""

    def build_model(self, cfg: TrainConfig) -> nn.Module:
        """A freshly initialised model of ``cfg``'s architecture (from the registry)."""
        return build(cfg.architecture, num_classes=cfg.num_classes, dropout=cfg.dropout)

    @abstractmethod
    def loss_fn(self, cfg: TrainConfig) -> LossFn:
        """The training loss: ``loss_fn(model(images), targets)``."""

    def sample_weights(self, dataset: Dataset) -> np.ndarray:
        """Per-item weights of the ``sqrt-balanced`` sampler; ``ValueError`` for a task without one."""
        raise ValueError(f"sampler sqrt-balanced is not available for {self.name}")

    @abstractmethod
    def validate(self, model: nn.Module, loader: torch.utils.data.DataLoader, cfg: TrainConfig) -> Validation:
        """Metrics of ``model`` on the validation ``loader`` (and the operating point chosen there)."""

    def score(self, metrics: dict[str, float]) -> float:
        """The selection metric, finite (a metric that cannot be computed counts as the worst)."""
        value = metrics.get(self.selection, float("nan"))
        return value if math.isfinite(value) else -1.0

    def summary(self, metrics: dict[str, float]) -> str:
        """One log line's worth of validation metrics."""
        return f"val {self.selection_label} {self.score(metrics):.3f}"

    # --- the model card --------------------------------------------------------------------------------------
    def training_data(self, cfg: TrainConfig) -> str:
        """The card's ``training.data``: the config's description of the data (when it has one), the folder, and
        the share of its training patients when ``train_fraction`` kept only some."""
        where = f"{cfg.data.train} ({cfg.data.format})"
        if cfg.data.train_fraction < 1.0:
            where += f", {cfg.data.train_fraction:.0%} of its training patients"
        return f"{cfg.data.description}: {where}" if cfg.data.description else where

    def data_terms(self, cfg: TrainConfig) -> str | None:
        """The terms the training data was published under (the card's ``training.data_terms``)."""
        return cfg.data.terms

    def intended_use(self, cfg: TrainConfig) -> str:
        """The card's intended-use statement (:func:`models.card.intended_use_for`): synthetic, or research use
        naming the data and the terms it was published under."""
        synthetic = is_synthetic_folder(cfg.data.train, cfg.data.format)
        return intended_use_for(synthetic, data=cfg.data.description or f"{cfg.data.train} ({cfg.data.format})",
                                terms=cfg.data.terms)

    # --- export ----------------------------------------------------------------------------------------------
    @abstractmethod
    def export_module(self, model: nn.Module, cfg: TrainConfig) -> nn.Module:
        """The graph of ``model`` (trained with, or exported under, ``cfg``) that is exported: ``image`` in,
        :attr:`outputs` out."""

    @abstractmethod
    def measure(self, onnx_bytes: bytes, cfg: TrainConfig, ck: dict[str, Any], held_out: HeldOut | None, *,
                out_dir: Path) -> Measured:
        """Choose the operating point(s) with the exported file on the validation split and measure it on
        ``held_out`` (``None``: no held-out data; a :class:`HeldOut` without ``root``: the validation split),
        through ONNX Runtime on the serving preprocessing; may write figures into ``out_dir``."""

    # --- evaluation ------------------------------------------------------------------------------------------
    @abstractmethod
    def evaluate(self, model: nn.Module, cfg: TrainConfig, ck: dict[str, Any], items: list[Any], *,
                 threshold: float | None, page: Page | None, caption: str) -> dict[str, float]:
        """Metrics of the checkpoint's ``model`` on ``items``; with a ``page``, fill it with the task's report
        sections (``caption`` is burned into overlays as serving would)."""


def patient_split(items: list[Any], cfg: TrainConfig) -> tuple[list[Any], list[Any]]:
    """:func:`training.data.split_by_patient` with the config's fractions and seed."""
    return split_by_patient(items, cfg.data.val_fraction, cfg.seed, train_fraction=cfg.data.train_fraction)
