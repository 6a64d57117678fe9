"""Distilling a grader's test-time views into a single pass (config ``teacher``).

A grader's answer varies with the symmetries of the same photograph (each of the eight dihedral views alone
scores a referable AUC of 0.80-0.85 on real-dev; their average 0.865), so the served graph averages views, at
one network pass per view. Distillation moves that average into the weights instead: a trained grader (the
*teacher*, a checkpoint) grades every training photograph in ``teacher_views`` views once, before training, and
the softmax of its averaged logits becomes a soft target beside the photograph's grade (Hinton, Vinyals & Dean
2015, "Distilling the Knowledge in a Neural Network"). The student then learns, from each augmented view, the
answer the teacher gives to all views together, and on noisy single-grader labels also the teacher's doubt.

The teacher must have learnt nothing about this run's validation patients: :func:`check_teacher` refuses a
teacher trained on other data, another patient split, another preprocessing or input size.

Measured on real-dev (README, "What was tried"): an EfficientNet-Lite0 student of its own eight-view average
gained referable AUC +0.005 in one view (0.836 against 0.831) and lost 0.008 in two, so the shipped recipe serves
the views instead; distillation is kept for a teacher larger than its student.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from models.grading import softmax
from training.checkpoint import load_checkpoint
from training.config import TrainConfig

#: Photographs per teacher batch (views multiply it inside the pass).
TEACHER_BATCH = 16


def check_teacher(teacher: TrainConfig, cfg: TrainConfig) -> None:
    """``ValueError`` unless a grader trained as ``teacher`` may teach a run of ``cfg``: a DR grader, trained on
    the same folder and layout with the same patient split (so no validation patient of ``cfg`` was seen), the
    same preprocessing and input size (its soft targets are computed on this run's crops)."""
    if teacher.task != "dr-grading":
        raise ValueError(f"the teacher must be a DR grader, not a {teacher.task} model")
    same = {
        # the same folder however it is written (relative or absolute)
        "training data": (str(Path(teacher.data.train).resolve()), str(Path(cfg.data.train).resolve())),
        "data format": (teacher.data.format, cfg.data.format),
        "val_fraction": (teacher.data.val_fraction, cfg.data.val_fraction),
        "seed (the patient split)": (teacher.seed, cfg.seed),
        "preprocessing": (teacher.preprocessing, cfg.preprocessing),
        "input_size": (teacher.input_size, cfg.input_size),
    }
    differ = [f"{name} {t!r} vs {c!r}" for name, (t, c) in same.items() if t != c]
    if differ:
        raise ValueError("the teacher was trained differently from this run, so its soft targets could leak this "
                         "run's validation patients or describe other inputs: " + "; ".join(differ))


def teacher_probabilities(checkpoint: str, crops: np.ndarray, cfg: TrainConfig,
                          to_tensor: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The teacher's class probabilities ``(N, C)`` float32 for the preprocessed uint8 ``crops`` ``(N, S, S, 3)``
    (not augmented): the softmax of its logits averaged over ``cfg.teacher_views`` views. ``to_tensor``: the
    recipe's crop → ``(3, S, S)`` float32 normalisation.

    The teacher runs as serving would run it: exported with its views in the graph (:func:`training.export.to_onnx`,
    the export the card's model gets) and run in ONNX Runtime, ~3x eager PyTorch on these CPUs (8 views of 4,849
    photographs at 288 px: ~7 min instead of ~24)."""
    # Here, not at the top: training.export imports the tasks, which import this module.
    from training.export import to_onnx
    from training.tasks import get_task

    model, teacher_cfg, _ = load_checkpoint(Path(checkpoint))
    check_teacher(teacher_cfg, cfg)
    if teacher_cfg.num_classes != cfg.num_classes:
        raise ValueError(f"the teacher has {teacher_cfg.num_classes} classes, this run {cfg.num_classes}")
    graph = to_onnx(get_task(teacher_cfg.task), model,
                    dataclasses.replace(teacher_cfg, test_time_views=cfg.teacher_views))
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    out = []
    for start in tqdm(range(0, len(crops), TEACHER_BATCH), desc=f"teacher ({cfg.teacher_views} views)",
                      unit="batch", leave=False):
        batch = np.stack([to_tensor(c) for c in crops[start:start + TEACHER_BATCH]])
        (logits,) = session.run(["logits"], {"image": batch})
        out.append(softmax(logits))
    return np.concatenate(out).astype(np.float32)


class DistillationLoss(nn.Module):
    """``base(logits, grade) + weight · H(teacher, softmax(logits))``: the run's objective on the grades plus the
    cross-entropy to the teacher's distribution (its KL divergence up to the teacher's constant entropy). Targets
    are ``{"grade": (N,), "teacher": (N, C)}`` for training batches; plain grades (validation) get ``base``."""

    def __init__(self, base: nn.Module, weight: float) -> None:
        super().__init__()
        self.base = base
        self.weight = weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(target, dict):
            return self.base(logits, target)
        soft = -(target["teacher"].float() * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
        return self.base(logits, target["grade"]) + self.weight * soft
