"""The lesion detector: CenterNet-style heatmaps of microaneurysms, haemorrhages, hard exudates and cotton-wool
spots (:mod:`training.detection` for its data, targets and loss).

Validation: mAP@0.5 and FROC with boxes in model pixels; FROC selects the best epoch. Export:
``DetectorExport(model)`` gives ``heatmap`` (sigmoid), ``size`` and ``offset``; every number in the card comes
from the exported file through ONNX Runtime on the serving preprocessing, with boxes mapped to original pixels
by :func:`models.detection.to_original`, exactly what serving reports. Score thresholds: per class, the score
maximising lesion-level F1 (a hit is a detection centre inside a lesion box,
:mod:`training.detection_metrics`) on the validation split (patients held out from training), raised where
the config names real screening photographs without annotation (``data.negatives``) until at most
``data.negatives_fp_per_image`` findings per photograph score above it there (:func:`cap_on_negatives`).
"""

from __future__ import annotations

import math
import sys
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
from training.detection_metrics import FrocCurve, Truth, detection_metrics, f1_threshold, froc_curve
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


#: Photographs :func:`read_negatives` takes from a ``data.negatives`` folder.
NEGATIVE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def read_negatives(folder: Path) -> list[FundusRecord]:
    """The photographs of ``folder`` (sorted by name) as records with no lesion."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in NEGATIVE_SUFFIXES)
    return [FundusRecord(image=p, grade=None, lesions=(), source="negatives") for p in paths]


def _at(curve: FrocCurve, threshold: float) -> tuple[float | None, float | None]:
    """Sensitivity and false positives per image of ``curve`` for findings scoring at least ``threshold``."""
    if curve.lesions == 0:
        return None, None
    kept = np.flatnonzero(curve.scores >= threshold)
    if kept.size == 0:
        return 0.0, 0.0
    i = int(kept[-1])
    return float(curve.hits[i] / curve.lesions), float(curve.false_positives[i] / max(curve.images, 1))


def cap_on_negatives(thresholds: tuple[ScoreThreshold, ...], val: tuple[list[list[Lesion]], list[Truth]],
                     negatives: list[list[Lesion]], *, fp_per_image: float, where: str
                     ) -> tuple[ScoreThreshold, ...]:
    """Raise each class's threshold, where needed, just above the score of its ``floor(fp_per_image * n) + 1``-th
    strongest finding on the ``n`` real photographs without annotation (``negatives``: their candidate
    detections), so that at most ``fp_per_image`` findings per photograph pass there; a raised threshold's
    sensitivity and false positives per image are re-read from the validation detections ``val``."""
    allowed = math.floor(fp_per_image * len(negatives))
    out = []
    for t in thresholds:
        scores = sorted((d.score for dets in negatives for d in dets if d.type == t.name), reverse=True)
        if len(scores) <= allowed or scores[allowed] < t.threshold:
            out.append(t)
            continue
        # Serving keeps scores >= threshold (float32 heatmaps): the next float32 above drops that finding.
        raised = float(np.nextafter(np.float32(scores[allowed]), np.float32(np.inf)))
        sens, fppi = _at(froc_curve(*val, t.name), raised)
        out.append(ScoreThreshold(
            name=t.name, threshold=min(1.0, raised), sensitivity=sens, fp_per_image=fppi,
            chosen_on=f"{t.chosen_on}; raised from {t.threshold:.3f} so that at most {fp_per_image:g} findings "
                      f"per photograph pass on {len(negatives)} real screening photographs without lesion "
                      f"annotation ({where}); sensitivity and false positives per image on the validation split "
                      f"at the raised threshold"))
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

    def export_module(self, model: nn.Module, cfg: TrainConfig) -> nn.Module:
        return DetectorExport(model)  # type: ignore[arg-type]

    def measure(self, onnx_bytes: bytes, cfg: TrainConfig, ck: dict[str, Any], held_out: HeldOut | None, *,
                out_dir: Path) -> Measured:
        _, val_items = self.split(cfg, verbose=False)
        val = onnx_detections(onnx_bytes, val_items, cfg.input_size)
        thresholds = choose_thresholds(*val, chosen_on=f"validation split ({len(val_items)} images of patients "
                                                       f"held out from training): the score maximising "
                                                       f"lesion-level F1")
        negatives = self._negatives(cfg)
        if negatives:
            found, _ = onnx_detections(onnx_bytes, negatives, cfg.input_size)
            thresholds = cap_on_negatives(thresholds, val, found, fp_per_image=cfg.data.negatives_fp_per_image,
                                          where=self._negatives_where(cfg))
        if held_out is None:
            return Measured({}, "none (no held-out data given)", score_thresholds=thresholds)
        items = self.load_held_out(held_out, cfg)
        metrics = detection_metrics(*onnx_detections(onnx_bytes, items, cfg.input_size), LESION_CLASSES)
        return Measured(metrics, f"{held_out.root} ({len(items)} images, held out from training and validation; "
                                 f"boxes in original pixels)", score_thresholds=thresholds)

    @staticmethod
    def _negatives(cfg: TrainConfig) -> list[FundusRecord]:
        """The ``data.negatives`` photographs; none (with a warning) when the folder is missing or empty."""
        if not cfg.data.negatives:
            return []
        folder = Path(cfg.data.negatives)
        records = read_negatives(folder) if folder.is_dir() else []
        if not records:
            print(f"warning: data.negatives {folder}: no photographs there; the score thresholds come from the "
                  f"validation split alone", file=sys.stderr)
        return records

    @staticmethod
    def _negatives_where(cfg: TrainConfig) -> str:
        terms = f"; {cfg.data.negatives_terms}" if cfg.data.negatives_terms else ""
        return f"{cfg.data.negatives}{terms}"

    def training_data(self, cfg: TrainConfig) -> str:
        if not self._negatives(cfg):
            return super().training_data(cfg)
        return (super().training_data(cfg) + f"; score thresholds capped on the real photographs of "
                                            f"{self._negatives_where(cfg)}")

    def data_terms(self, cfg: TrainConfig) -> str | None:
        if cfg.data.negatives_terms and self._negatives(cfg):
            own = f"{cfg.data.terms}; " if cfg.data.terms else ""
            return f"{own}{cfg.data.negatives_terms} (the real photographs its score thresholds were set on)"
        return cfg.data.terms

    def evaluate(self, model: nn.Module, cfg: TrainConfig, ck: dict[str, Any], items: list[Any], *,
                 threshold: float | None, page: Page | None, caption: str) -> dict[str, float]:
        out = detector_report.predict_detector(model, items, cfg.input_size)
        metrics = detector_report.detector_evaluation_metrics(out)
        if page is not None:
            detector_report.report(out, metrics, cfg=cfg, ck=ck, page=page, caption=caption)
        return metrics


DETECTOR = register_task(DetectorTask())
