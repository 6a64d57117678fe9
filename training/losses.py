"""Ordinal-aware training objectives for the ICDR 0–4 grader that keep its 5-way softmax logits.

The serving contract fixes the grader's output: ``logits`` ``(N, 5)``, turned into class probabilities by a
softmax, and P(referable) = P(grade ≥ 2) summed from them (:mod:`models.grading`). That rules out
objectives that change the head's meaning (CORAL's K−1 cumulative logits, a single regression output with
tuned thresholds). Among those that train ordinary softmax logits:

* ``ce`` — plain cross-entropy (with label smoothing): every wrong grade costs the same, so calling a
  proliferative eye "no DR" is no worse than calling it "severe" — at odds with quadratic-weighted kappa
  and with screening, where distance along the scale is what matters.
* ``ce+emd`` (**default**) — cross-entropy plus the squared earth mover's distance between the predicted
  and the true distribution on the ordered grades (Hou, Yu & Samaras 2017, "Squared Earth Mover's
  Distance-based Loss for Training Deep Neural Networks"; used for ordinal image grading by Talebi &
  Milanfar's NIMA). On an ordered scale EMD² is ``Σ_k (CDF_pred(k) − CDF_true(k))²``: putting the mass
  ``d`` grades away costs ``d``, so it is rank-aware, and being a function of the *cumulative* softmax
  it pushes mass across the referable boundary (grade 2) as a whole — the quantity serving thresholds.
  The CE term keeps strong per-class gradients early in training (EMD² alone trains slowly from a uniform
  start: its gradient vanishes as predictions spread) and keeps probabilities calibrated.
* ``sord`` — soft ordinal labels (Díaz & Marathe 2019, "Soft Labels for Ordinal Regression"): the target
  is ``softmax(−α (k − y)²)`` over grades and the loss is cross-entropy to it. Equally simple, but it
  trains the model to put mass on neighbouring grades by design, which lowers confidence in the correct
  grade and blurs the 1-vs-2 split the referral decision rests on; kept as an option for comparison.

* ``ce+expected`` — cross-entropy plus a smooth-L1 regression of the *expected grade* ``Σ_k k·p_k`` on the
  true grade: the regression a single-output grader would learn, taken through the softmax, so the head,
  the CAM and P(referable) keep their meaning and the card's grade rule (cut-points on the expected grade,
  :mod:`training.grade_rule`) decides on exactly the quantity trained.

All return a scalar mean over the batch and accept integer grades ``(N,)``.
"""

from __future__ import annotations

from typing import get_args

import torch
import torch.nn.functional as F
from torch import nn

from training.config import Objective

#: The objectives :func:`build_loss` knows (``TrainConfig.objective``).
OBJECTIVES: tuple[str, ...] = get_args(Objective)

#: Weight of the EMD² term against cross-entropy: both are O(1) per image at a confident one-grade error
#: (CE ≈ log-odds, EMD² = 1), so equal weights keep neither term dominant.
EMD_WEIGHT = 1.0
#: SORD's distance scale α in ``softmax(−α (k − y)²)``: with α = 2 a middle grade keeps ~0.79 of the mass
#: and each neighbour ~0.11 (the paper's squared-distance form).
SORD_ALPHA = 2.0
#: Weight of the expected-grade smooth-L1 term against cross-entropy (a one-grade error costs ~0.5 + 1 / 2).
EXPECTED_WEIGHT = 1.0


def squared_emd(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample squared earth mover's distance ``Σ_k (CDF_softmax(logits)(k) − CDF_onehot(target)(k))²``
    between the predicted class distribution and the one-hot true grade, shape ``(N,)``."""
    probs = torch.softmax(logits.float(), dim=1)
    cdf_pred = probs.cumsum(dim=1)
    grades = torch.arange(logits.shape[1], device=logits.device)
    cdf_true = (grades[None, :] >= target[:, None]).to(cdf_pred.dtype)
    return ((cdf_pred - cdf_true) ** 2).sum(dim=1)


def sord_targets(target: torch.Tensor, num_classes: int, alpha: float = SORD_ALPHA) -> torch.Tensor:
    """Soft ordinal labels ``softmax(−α (k − y)²)`` over ``k = 0 … num_classes − 1``, shape ``(N, C)``."""
    grades = torch.arange(num_classes, device=target.device, dtype=torch.float32)
    return torch.softmax(-alpha * (grades[None, :] - target[:, None].float()) ** 2, dim=1)


class OrdinalLoss(nn.Module):
    """The training objective named by ``objective`` (see the module docstring); ``forward(logits, target)``
    returns the batch mean. ``label_smoothing`` applies to the cross-entropy of ``ce`` and ``ce+emd``
    (SORD's targets are soft already)."""

    def __init__(self, objective: str = "ce+emd", *, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
        self.objective = objective
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # under autocast the logits may be float16; the losses want float32
        if self.objective == "sord":
            soft = sord_targets(target, logits.shape[1])
            return -(soft * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        ce = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        if self.objective == "ce":
            return ce
        if self.objective == "ce+expected":
            grades = torch.arange(logits.shape[1], device=logits.device, dtype=torch.float32)
            expected = (torch.softmax(logits, dim=1) * grades).sum(dim=1)
            return ce + EXPECTED_WEIGHT * F.smooth_l1_loss(expected, target.float())
        return ce + EMD_WEIGHT * squared_emd(logits, target).mean()


def build_loss(objective: str, *, label_smoothing: float = 0.0) -> OrdinalLoss:
    """The loss module for ``objective``; ``ValueError`` listing the known names for an unknown one."""
    return OrdinalLoss(objective, label_smoothing=label_smoothing)
