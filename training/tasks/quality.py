"""The image-quality model: p(gradable) and one probability per reason group (:mod:`training.quality_model` for
its labels, data and loss).

Validation: the quality AUC (of "ungradable", scored by ``1 - p_gradable``) selects the best epoch; the
``gradable`` operating point (gradable iff ``p_gradable >= threshold``, :mod:`training.quality_metrics`) is
chosen for an "ungradable" sensitivity of at least ``ungradable_min_sensitivity``. ``sqrt-balanced`` sampling
weighs gradable and ungradable photographs.

Export: ``QualityExport(model)`` has one output, ``probabilities`` ``(N, len(classes))``: the sigmoid is part of
the graph, so serving reads probabilities named by the card's ``classes`` (``gradable`` first, then the reasons
of :data:`~training.quality_model.REASON_GROUPS`). The operating point is chosen with the exported file on the
validation split; the card's metrics are the exported file's through ONNX Runtime on held-out data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from models import preprocess
from models.card import OperatingPoint, intended_use_for
from training import quality_report
from training.config import TrainConfig
from training.data import balanced_weights, load_rgb
from training.engine import LossFn
from training.quality_metrics import choose_gradable_threshold, quality_metrics
from training.quality_model import (EYEQ_DATA, EYEQ_TERMS, QUALITY_CLASSES, QUALITY_FORMAT, QualityDataset,
                                    QualityItem, load_quality, load_training_items, quality_loss,
                                    quality_probabilities, split_items)
from training.report import QUALITY_CURVES
from training.report_html import Page
from training.tasks.base import HeldOut, Measured, OutputSpec, Task, Validation
from training.tasks.registry import register_task


class QualityExport(nn.Module):
    """Export wrapper: ``image`` → ``probabilities`` (sigmoid of the logits)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x))


def onnx_probabilities(onnx_bytes: bytes, items: list[QualityItem], size: int,
                       recipe: preprocess.Recipe = preprocess.DISC_CROP) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of the exported model on ``items`` (serving preprocessing, ``recipe``) and their targets."""
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    probs = []
    for it in tqdm(items, desc="evaluate onnx", unit="img", leave=False):
        x = preprocess.preprocess(load_rgb(it.record.image), size, recipe=recipe).tensor[None]
        (p,) = sess.run(["probabilities"], {"image": x})
        probs.append(p[0])
    return np.stack(probs), np.stack([it.targets for it in items])


def choose_gradable_point(probs: np.ndarray, targets: np.ndarray, min_sensitivity: float) -> dict[str, float]:
    """The gradable operating point on ``probs``/``targets`` (:func:`~training.quality_metrics.choose_gradable_threshold`)."""
    op = choose_gradable_threshold(probs[:, 0], targets[:, 0], min_sensitivity)
    return {"threshold": op.threshold, "sensitivity": op.sensitivity, "specificity": op.specificity}


class QualityTask(Task):
    """The image-quality model (module docstring)."""

    name = "image-quality"
    selection = "quality_auc"
    selection_label = "quality AUC"
    best_key = "best_auc"
    curves = QUALITY_CURVES
    classes = QUALITY_CLASSES
    outputs = (OutputSpec("probabilities", "max_abs_probability_diff"),)
    # channels-last convolutions are markedly faster on these CPUs (DESIGN.md, measured facts)
    channels_last = True

    def check_config(self, cfg: TrainConfig) -> None:
        super().check_config(cfg)
        if cfg.data.real_quality and not cfg.data.real_images:
            raise ValueError("data.real_quality needs data.real_images (the folder of the graded photographs)")
        if cfg.data.format != QUALITY_FORMAT:
            raise ValueError(f"data.format must be {QUALITY_FORMAT!r} (the layout with quality.csv), "
                             f"got {cfg.data.format!r}")

    def read_items(self, root: Path, fmt: str, *, split: str | None = None, verbose: bool = True) -> list[Any]:
        return load_quality(root, fmt, split=split)

    def split(self, cfg: TrainConfig, *, verbose: bool = True) -> tuple[list[Any], list[Any]]:
        return split_items(load_training_items(cfg), cfg.data.val_fraction, cfg.seed,
                           train_fraction=cfg.data.train_fraction)

    def dataset(self, items: Any, cfg: TrainConfig, *, train: bool, desc: str = "preprocess") -> Dataset:
        return QualityDataset(items, cfg.input_size, train=train, seed=cfg.seed, desc=desc, recipe=self.recipe(cfg))

    def loss_fn(self, cfg: TrainConfig) -> LossFn:
        return quality_loss

    def sample_weights(self, dataset: Dataset) -> np.ndarray:
        assert isinstance(dataset, QualityDataset)
        return balanced_weights((dataset.targets[:, 0] >= 0.5).astype(np.int64))

    def validate(self, model: nn.Module, loader: DataLoader, cfg: TrainConfig) -> Validation:
        probs, targets = quality_probabilities(model, loader)
        op = choose_gradable_point(probs, targets, cfg.ungradable_min_sensitivity)
        return Validation(quality_metrics(probs, targets, QUALITY_CLASSES, op["threshold"]), op)

    def score(self, metrics: dict[str, float]) -> float:
        return metrics.get("quality_auc", 0.0)

    def training_data(self, cfg: TrainConfig) -> str:
        real = f" + {cfg.data.real_quality} grades of {cfg.data.real_images}" if cfg.data.real_quality else ""
        return super().training_data(cfg) + real

    def data_terms(self, cfg: TrainConfig) -> str | None:
        return EYEQ_TERMS if cfg.data.real_quality else cfg.data.terms

    def intended_use(self, cfg: TrainConfig) -> str:
        if cfg.data.real_quality:
            return intended_use_for(False, data=f"{EYEQ_DATA} and {cfg.data.train} ({cfg.data.format})",
                                    terms=EYEQ_TERMS)
        return super().intended_use(cfg)

    def export_module(self, model: nn.Module, cfg: TrainConfig) -> nn.Module:
        return QualityExport(model)

    def measure(self, onnx_bytes: bytes, cfg: TrainConfig, ck: dict[str, Any], held_out: HeldOut | None, *,
                out_dir: Path) -> Measured:
        recipe = self.recipe(cfg)
        _, val_items = self.split(cfg, verbose=False)
        val_probs, val_targets = onnx_probabilities(onnx_bytes, val_items, cfg.input_size, recipe)
        n_bad = int((val_targets[:, 0] < 0.5).sum())
        if not 0 < n_bad < len(val_items):  # a threshold needs both kinds of photograph to be chosen on
            raise ValueError(f"the validation split of {cfg.data.train} has {n_bad} ungradable of {len(val_items)} "
                             f"photographs: it needs both kinds (generate with a higher p_degraded or more images)")
        op = choose_gradable_point(val_probs, val_targets, cfg.ungradable_min_sensitivity)
        point = OperatingPoint(
            name="gradable", threshold=op["threshold"], sensitivity=op["sensitivity"], specificity=op["specificity"],
            chosen_on=f"validation split ({len(val_items)} images of patients held out from training): gradable iff "
                      f"p_gradable >= threshold; sensitivity/specificity of 'ungradable', best Youden index with "
                      f"sensitivity >= {cfg.ungradable_min_sensitivity}")
        if held_out is None:
            return Measured({}, "none (no held-out data given)", operating_points=(point,))
        items = self.load_held_out(held_out, cfg)
        probs, targets = onnx_probabilities(onnx_bytes, items, cfg.input_size, recipe)
        metrics = quality_metrics(probs, targets, QUALITY_CLASSES, op["threshold"])
        return Measured(metrics, f"{held_out.root} ({len(items)} images, held out from training and validation)",
                        operating_points=(point,))

    def evaluate(self, model: nn.Module, cfg: TrainConfig, ck: dict[str, Any], items: list[Any], *,
                 threshold: float | None, page: Page | None, caption: str) -> dict[str, float]:
        out = quality_report.predict_quality(model, items, cfg.input_size, cfg.preprocessing)
        metrics = quality_report.quality_evaluation_metrics(out, threshold)
        if page is not None:
            quality_report.report(out, metrics, cfg=cfg, ck=ck, threshold=threshold, page=page)
        return metrics


QUALITY = register_task(QualityTask())
