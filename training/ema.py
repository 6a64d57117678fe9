"""An exponential moving average of a model's weights, validated, kept and exported instead of the raw weights.

On small, noisily labelled data (real-dev's single-grader EyePACS grades) the raw weights swing from step to step
and the validation kappa from epoch to epoch; their average over the last few hundred steps is a better model
than any one of them (Polyak averaging). :class:`torch.optim.swa_utils.AveragedModel` does the bookkeeping; the
decay warms up (``min(decay, (1 + n) / (10 + n))`` after ``n`` updates) so that the average does not stay
anchored to the initial weights through the first epochs. BatchNorm running statistics are averaged too
(``use_buffers``), so the averaged model needs no extra pass over the data.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def warmup_decay(decay: float, updates: int) -> float:
    """The decay applied at update number ``updates`` (0-based): ``min(decay, (1 + n) / (10 + n))``."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An :class:`AveragedModel` of ``model`` (a copy, on its device) whose :meth:`update_parameters` moves every
    parameter and buffer ``p_avg ← d · p_avg + (1 − d) · p`` with ``d = warmup_decay(decay, n)``."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema_decay must lie strictly between 0 and 1, not {decay}")

    @torch.no_grad()
    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor | int) -> None:
        weight = 1.0 - warmup_decay(decay, int(n))
        for a, c in zip(averaged, current, strict=True):
            if a.is_floating_point():
                a.lerp_(c, weight)
            else:  # integer buffers (BatchNorm's step count): the latest value
                a.copy_(c)

    return AveragedModel(model, multi_avg_fn=average, use_buffers=True)
