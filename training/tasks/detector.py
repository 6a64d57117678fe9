"""The lesion detector: CenterNet-style heatmaps of microaneurysms, haemorrhages, hard exudates and cotton-wool
spots (:mod:`training.detection` for its data, targets and loss).

Validation: mAP@0.5 and FROC with boxes in model pixels; FROC selects the best epoch. Export:
``DetectorExport(model)`` gives ``heatmap`` (sigmoid), ``size`` and ``offset``; every number in the card comes
from the exported file through ONNX Runtime on the serving preprocessing, with boxes mapped to original pixels
by :func:`models.detection.to_original`, exactly what serving reports. Score thresholds: per class, the score
maximising lesion-level F1 (a hit is a detection centre inside a lesion box,
:mod:`training.detection_metrics`) on the validation split (patients held out from training).
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

from datasets.readers import FundusRecord
from models import preprocess
from models.architectures.detector import DetectorExport
from models.card import ScoreThreshold
from models.detection import LESION_CLASSES, Lesion, decode, to_original
from training import detector_report
from training.config import TrainConfig
from training.data import load_rgb
from training.detection import (CANDIDATE_FLOOR, LesionDataset, collate, detection_loss, load_annotated,
                                predict_lesions)
from training.detection_metrics import Truth, detection_metrics, f1_threshold, froc_curve
from training.engine import LossFn
from training.report import DETECTOR_CURVES
from training.report_html import Page
from training.tasks.base import HeldOut, Measured, OutputSpec, Task, Validation
from training.tasks.registry import register_task


def onnx_detections(onnx_bytes: bytes, records: list[FundusRecord], size: int, *,
                    recipe: preprocess.Recipe = preprocess.DISC_CROP) -> tuple[list[list[Lesion]], list[Truth]]:
    """Candidate detections (score ≥ the training candidate floor) of the exported model on ``records``
    preprocessed with ``recipe`` (the card's), in original pixels, with each record's lesions as truth."""
    names = list(DetectorExport.output_names)
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    detections, truths = [], []
    for record in tqdm(records, desc="evaluate onnx", unit="img", leave=False):
        pre = preprocess.preprocess(load_rgb(record.image), size, recipe=recipe)
        outputs = dict(zip(names, sess.run(names, {"image": pre.tensor[None]})))
        (found,) = decode(outputs, input_size=size, thresholds=CANDIDATE_FLOOR)
        detections.append(to_original(found, pre.transform))
        lesions = record.lesions or ()
        truths.append(Truth(boxes=tuple(l.box for l in lesions), types=tuple(l.type for l in lesions)))
    return detections, truths


def choose_thresholds(detections: list[list[Lesion]], truths: list[Truth], chosen_on: str
                      ) -> tuple[ScoreThreshold, ...]:
    """Per class, the F1-maximising score threshold (0.5 when the data has no lesion of the class)."""
    out = []
    for cls in LESION_CLASSES:
        t, sens, fppi = f1_threshold(froc_curve(detections, truths, cls))
        out.append(ScoreThreshold(name=cls, threshold=min(1.0, max(0.0, t)),
                                  sensitivity=None if np.isnan(sens) else sens,
                                  fp_per_image=None if np.isnan(fppi) else fppi, chosen_on=chosen_on))
    return tuple(out)


def _loss(outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], targets: dict[str, Any]) -> torch.Tensor:
    return detection_loss(outputs, targets)[0]


class DetectorTask(Task):
    """The lesion detector (module docstring)."""

    name = "lesion-detection"
    selection = "froc"
    selection_label = "FROC"
    best_key = "best_froc"
    curves = DETECTOR_CURVES
    classes = LESION_CLASSES
    outputs = tuple(OutputSpec(n, f"max_abs_{n}_diff", "max1" if n == "size" else "abs")
                    for n in DetectorExport.output_names)
    collate = staticmethod(collate)

    def check_config(self, cfg: TrainConfig) -> None:
        super().check_config(cfg)
        if cfg.preprocessing != preprocess.DISC_CROP.name:
            raise ValueError(f"the lesion detector trains on {preprocess.DISC_CROP.name} crops, "
                             f"got preprocessing {cfg.preprocessing!r}")

    def recipe(self, cfg: TrainConfig) -> preprocess.Recipe:
        return preprocess.DISC_CROP

    def read_items(self, root: Path, fmt: str, *, split: str | None = None, verbose: bool = True) -> list[Any]:
        return load_annotated(root, fmt, split=split, verbose=verbose)

    def dataset(self, items: Any, cfg: TrainConfig, *, train: bool, desc: str = "preprocess") -> Dataset:
        return LesionDataset(items, cfg.input_size, train=train, seed=cfg.seed, crop=cfg.train_crop if train else None,
                             desc=desc)

    def loss_fn(self, cfg: TrainConfig) -> LossFn:
        return _loss

    def validate(self, model: nn.Module, loader: DataLoader, cfg: TrainConfig) -> Validation:
        detections, truths = predict_lesions(model, loader, cfg.input_size)
        return Validation(detection_metrics(detections, truths, LESION_CLASSES))

    def score(self, metrics: dict[str, float]) -> float:
        return metrics.get("froc", 0.0)

    def summary(self, metrics: dict[str, float]) -> str:
        return f"val FROC {self.score(metrics):.3f} mAP@0.5 {metrics.get('map_50', float('nan')):.3f}"

    def export_module(self, model: nn.Module) -> nn.Module:
        return DetectorExport(model)  # type: ignore[arg-type]

    def measure(self, onnx_bytes: bytes, cfg: TrainConfig, ck: dict[str, Any], held_out: HeldOut | None, *,
                out_dir: Path) -> Measured:
        _, val_items = self.split(cfg, verbose=False)
        thresholds = choose_thresholds(*onnx_detections(onnx_bytes, val_items, cfg.input_size),
                                       chosen_on=f"validation split ({len(val_items)} images of patients held out "
                                                 f"from training): the score maximising lesion-level F1")
        if held_out is None:
            return Measured({}, "none (no held-out data given)", score_thresholds=thresholds)
        items = self.load_held_out(held_out, cfg)
        metrics = detection_metrics(*onnx_detections(onnx_bytes, items, cfg.input_size), LESION_CLASSES)
        return Measured(metrics, f"{held_out.root} ({len(items)} images, held out from training and validation; "
                                 f"boxes in original pixels)", score_thresholds=thresholds)

    def evaluate(self, model: nn.Module, cfg: TrainConfig, ck: dict[str, Any], items: list[Any], *,
                 threshold: float | None, page: Page | None, caption: str) -> dict[str, float]:
        out = detector_report.predict_detector(model, items, cfg.input_size)
        metrics = detector_report.detector_evaluation_metrics(out)
        if page is not None:
            detector_report.report(out, metrics, cfg=cfg, ck=ck, page=page, caption=caption)
        return metrics


DETECTOR = register_task(DetectorTask())
