"""The DR grader: ICDR grade 0-4 from a fundus photograph (softmax over five grades), with its in-graph CAM.

Data: the graded records of any layout (:func:`training.data.load_graded`), preprocessed once with the config's
recipe and augmented per item (:class:`training.data.FundusDataset`); ``sqrt-balanced`` sampling weighs grades.
Loss: the config's ``objective`` (:mod:`training.losses`). Validation: quadratic weighted kappa selects the best
epoch; the referable-DR operating point is the best Youden index with sensitivity >= ``referable_min_sensitivity``.

Export: ``WithCam(model, cfg.test_time_views)`` gives ``logits`` and ``cam`` in one pass (test-time views, if any,
averaged inside the graph). The card's metrics are the exported file's
through ONNX Runtime on the serving preprocessing: QWK and referable AUC with percentile bootstrap 95 %
intervals, and, when the held-out records carry lesion boxes (e.g. ``--format synthetic``), the pointing game of
the CAM on the referable images (:func:`training.metrics.pointing_game`). A config without a test folder is
measured on the patient-disjoint validation split training held out, and the card says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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
from models.architectures.classifier import WithCam
from models.architectures.views import ViewAveraged
from models.card import ICDR_LABELS, OperatingPoint
from models.views import view_names
from training.fellow_eye import fellow_eye_rule, fellow_indices
from training.grade_rule import grade_rule
from models.grading import REFERABLE_MIN_GRADE, referable_probability, softmax
from training import grader_report
from training.config import TrainConfig
from training.data import FundusDataset, balanced_weights, load_graded, load_rgb
from training.engine import LossFn, predict
from training.distill import DistillationLoss, teacher_probabilities
from training.losses import build_loss
from training.metrics import (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, POINTING_TOLERANCE, cam_peak, choose_operating_point,
                              confusion_matrix, field_centre, grader_intervals, grader_metrics, pointing_game,
                              pointing_hit)
from training.report import GRADER_CURVES, plot_confusion
from training.report_html import Page
from training.tasks.base import HeldOut, Measured, OutputSpec, Task, Validation
from training.tasks.registry import register_task


def predict_probabilities(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities ``(N, 5)`` and grades ``(N,)`` over ``loader``."""
    probs, labels = predict(model, loader, lambda logits: torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(probs), np.concatenate([y.numpy() for y in labels])


def evaluate(model: nn.Module, loader: DataLoader, threshold: float | None = None) -> dict[str, float]:
    """Grader metrics (see :func:`training.metrics.grader_metrics`) on ``loader``."""
    probs, labels = predict_probabilities(model, loader)
    return grader_metrics(probs, labels, threshold)


def choose_referable_point(probs: np.ndarray, labels: np.ndarray, min_sensitivity: float) -> dict[str, float]:
    """The referable-DR operating point on ``probs``/``labels`` (:func:`training.metrics.choose_operating_point`)."""
    op = choose_operating_point(referable_probability(probs), (labels >= REFERABLE_MIN_GRADE).astype(np.int64),
                                min_sensitivity)
    return {"threshold": op.threshold, "sensitivity": op.sensitivity, "specificity": op.specificity}


@dataclass(frozen=True)
class OnnxEvaluation:
    """What the exported model did on graded records: ``probs`` ``(N, 5)``, true ``labels`` ``(N,)``, and one
    pointing-game hit/miss per referable record with at least one lesion box (``pointing_hits``), and whether
    the centre of the fundus field would have hit on those records (``centre_hits``, the baseline)."""

    probs: np.ndarray
    labels: np.ndarray
    pointing_hits: list[bool]
    centre_hits: list[bool]


def onnx_evaluate(onnx_bytes: bytes, items: list[FundusRecord], size: int, *,
                  recipe: preprocess.Recipe = preprocess.DISC_CROP) -> OnnxEvaluation:
    """Run the exported model through ONNX Runtime on the graded records ``items`` with the serving
    preprocessing (``recipe``: the model card's, :func:`models.card.recipe_of`); play the pointing game on the
    referable ones that have lesion boxes: the CAM of the grade serving shows
    (:func:`analysis.pipeline.saliency_target`) must peak within :data:`~training.metrics.POINTING_TOLERANCE`
    of the input side (in original pixels) of a lesion."""
    from analysis.pipeline import saliency_target  # the serving rule itself

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    probs, hits, centre = [], [], []
    for record in tqdm(items, desc="evaluate onnx", unit="img", leave=False):
        pre = preprocess.preprocess(load_rgb(record.image), size, recipe=recipe)
        logits, cam = sess.run(["logits", "cam"], {"image": pre.tensor[None]})
        p = softmax(logits[0])
        probs.append(p)
        if record.grade is not None and record.grade >= REFERABLE_MIN_GRADE and record.lesions:
            target = saliency_target(int(np.argmax(p)), p)
            tolerance = POINTING_TOLERANCE * size * pre.transform.scale  # model pixels -> original pixels
            boxes = [b.box for b in record.lesions]
            hits.append(pointing_hit(cam_peak(cam[0, target], pre.transform), boxes, tolerance))
            centre.append(pointing_hit(field_centre(pre.transform), boxes, tolerance))
    return OnnxEvaluation(np.stack(probs), np.array([r.grade for r in items]), hits, centre)


def onnx_probabilities(onnx_bytes: bytes, items: list[FundusRecord], size: int, *,
                       recipe: preprocess.Recipe = preprocess.DISC_CROP) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and labels of :func:`onnx_evaluate`."""
    ev = onnx_evaluate(onnx_bytes, items, size, recipe=recipe)
    return ev.probs, ev.labels


class GraderTask(Task):
    """The DR grader (module docstring)."""

    name = "dr-grading"
    selection = "quadratic_weighted_kappa"
    selection_label = "kappa"
    best_key = "best_kappa"
    curves = GRADER_CURVES
    classes = ICDR_LABELS
    outputs = (OutputSpec("logits", "max_abs_logit_diff"), OutputSpec("cam", "max_rel_cam_diff", "max", checked=False))
    measures_on_validation = True
    test_time_views = True
    distills = True

    def read_items(self, root: Path, fmt: str, *, split: str | None = None, verbose: bool = True) -> list[Any]:
        return load_graded(root, fmt, split=split, verbose=verbose)

    def dataset(self, items: Any, cfg: TrainConfig, *, train: bool, desc: str = "preprocess") -> Dataset:
        if train and cfg.teacher is not None and not Path(cfg.teacher).is_file():  # before minutes of preprocessing
            raise ValueError(f"teacher checkpoint {cfg.teacher} does not exist: train the teacher first")
        ds = FundusDataset(items, cfg.input_size, train=train, seed=cfg.seed, desc=desc, recipe=self.recipe(cfg),
                           max_angle=cfg.max_rotation)
        if train and cfg.teacher is not None:
            ds.teacher = teacher_probabilities(cfg.teacher, ds.crops, cfg, ds.recipe.to_tensor)
        return ds

    def loss_fn(self, cfg: TrainConfig) -> LossFn:
        base = build_loss(cfg.objective, label_smoothing=cfg.label_smoothing)
        return base if cfg.teacher is None else DistillationLoss(base, cfg.distill_weight)

    def sample_weights(self, dataset: Dataset) -> np.ndarray:
        assert isinstance(dataset, FundusDataset)
        return balanced_weights(dataset.labels)

    def validate(self, model: nn.Module, loader: DataLoader, cfg: TrainConfig) -> Validation:
        # What is validated is what is exported: the same test-time views.
        probs, labels = predict_probabilities(ViewAveraged(model, cfg.test_time_views), loader)
        op = choose_referable_point(probs, labels, cfg.referable_min_sensitivity)
        return Validation(grader_metrics(probs, labels, op["threshold"]), op)

    def summary(self, metrics: dict[str, float]) -> str:
        return (f"val kappa {self.score(metrics):.3f} acc {metrics['accuracy']:.3f} "
                f"ref-AUC {metrics.get('referable_auc', float('nan')):.3f}")

    def describe_validation(self, cfg: TrainConfig, items: Any) -> str:
        patients = len({r.group for r in items})
        return (f"patient-disjoint validation split ({cfg.data.val_fraction:.0%}, seed {cfg.seed}) of "
                f"{cfg.data.train} ({cfg.data.format}), {len(items)} photographs of {patients} patients")

    def export_module(self, model: nn.Module, cfg: TrainConfig) -> nn.Module:
        return WithCam(model, cfg.test_time_views)

    def measure(self, onnx_bytes: bytes, cfg: TrainConfig, ck: dict[str, Any], held_out: HeldOut | None, *,
                out_dir: Path) -> Measured:
        recipe = self.recipe(cfg)
        # The operating point belongs to the exported artifact: chosen on the validation split (the patients
        # training held out) with the ONNX model itself, then measured on the test split.
        _, val_items = self.split(cfg, verbose=False)
        val_ev = onnx_evaluate(onnx_bytes, val_items, cfg.input_size, recipe=recipe)
        op = choose_referable_point(val_ev.probs, val_ev.labels, cfg.referable_min_sensitivity)
        point = OperatingPoint(name="referable_dr", threshold=op["threshold"], sensitivity=op["sensitivity"],
                               specificity=op["specificity"],
                               chosen_on=f"validation split ({len(val_items)} images of patients held out from "
                                         f"training): best Youden index with sensitivity >= "
                                         f"{cfg.referable_min_sensitivity}")
        # The grade rule too: cut-points on the expected grade, with a patient-grouped cross-validated kappa.
        rule, rule_metrics = grade_rule(val_ev.probs, val_ev.labels, [r.group for r in val_items],
                                        where=self.describe_validation(cfg, val_items))
        # And how a study's per-eye grade uses the other eye, where the split has both eyes of enough patients.
        fellow, fellow_metrics = fellow_eye_rule(val_ev.probs, val_ev.labels, [r.group for r in val_items],
                                                 fellow_indices(val_items),
                                                 where=self.describe_validation(cfg, val_items))
        metrics: dict[str, float] = {}
        metrics_data = "none (no held-out data given)"
        if held_out is not None:
            if held_out.root is not None:
                items = self.load_held_out(held_out, cfg)
                ev = onnx_evaluate(onnx_bytes, items, cfg.input_size, recipe=recipe)
                where = f"{held_out.root} ({len(items)} images, held out from training and validation)"
            else:
                # The validation patients were never trained on, but the operating point was chosen on them
                # too, so its sensitivity/specificity here are optimistic; the card says so.
                items, ev = val_items, val_ev
                where = (f"{self.describe_validation(cfg, items)}; the operating point was chosen on the same "
                         f"split (its sensitivity/specificity are optimistic)")
            metrics = grader_metrics(ev.probs, ev.labels, op["threshold"])
            metrics.update(grader_intervals(ev.probs, ev.labels))
            with_lesions = sum(r.lesions is not None for r in items)
            if with_lesions:
                metrics.update(pointing_game(ev.pointing_hits, ev.centre_hits))
            game = (f"pointing game: {len(ev.pointing_hits)} referable images with lesion boxes, hit = CAM peak of "
                    f"the shown grade within {POINTING_TOLERANCE * cfg.input_size:.1f} model pixels of a lesion "
                    f"box; centre baseline: the field centre as the point"
                    if with_lesions else "pointing game: no lesion ground truth in these records")
            metrics_data = (f"{where}; 95 % intervals: percentile bootstrap over images, {BOOTSTRAP_RESAMPLES} "
                            f"resamples, seed {BOOTSTRAP_SEED}; {game}")
            out_dir.mkdir(parents=True, exist_ok=True)
            plot_confusion(confusion_matrix(ev.probs, ev.labels), ICDR_LABELS, out_dir / f"{cfg.name}.confusion.png",
                           f"{cfg.name} {cfg.version}: held-out confusion matrix (n={len(items)})")
        # A checkpoint whose config has no objective was trained with plain cross-entropy.
        objective = json.loads(ck["config"]).get("objective", "ce")
        views = ", ".join(view_names(cfg.test_time_views))
        fellow_note = "; fellow-eye rule and its figures on the validation split" if fellow_metrics else ""
        return Measured({**metrics, **rule_metrics, **fellow_metrics}, f"{metrics_data}; training objective "
                        f"{objective}; test-time views averaged in the graph: {views}; grade rule and its kappas on "
                        f"the validation split{fellow_note}",
                        operating_points=(point,), grade_rule=rule, fellow_eye=fellow)

    def evaluate(self, model: nn.Module, cfg: TrainConfig, ck: dict[str, Any], items: list[Any], *,
                 threshold: float | None, page: Page | None, caption: str) -> dict[str, float]:
        out = grader_report.predict_with_cam(model, items, cfg.input_size, recipe=self.recipe(cfg),
                                             views=cfg.test_time_views)
        pointing = grader_report.play_pointing_game(out)
        metrics = grader_report.grader_evaluation_metrics(out, threshold, pointing)
        if page is not None:
            grader_report.report(out, metrics, cfg=cfg, ck=ck, threshold=threshold, pointing=pointing, page=page,
                                 caption=caption)
        return metrics


GRADER = register_task(GraderTask())
