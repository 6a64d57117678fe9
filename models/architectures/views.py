"""Test-time views in the graph (:mod:`models.views`): the torch side, exportable to ONNX (transposes and
flips only, no resampling)."""

from __future__ import annotations

import torch
from torch import nn

from models.views import parse_view, view_names


def _turn(x: torch.Tensor, turns: int) -> torch.Tensor:
    """``np.rot90(x, turns, axes=(-2, -1))`` with ONNX-exportable ops."""
    turns %= 4
    if turns == 1:
        return x.transpose(-2, -1).flip(-2)
    if turns == 2:
        return x.flip((-2, -1))
    if turns == 3:
        return x.transpose(-2, -1).flip(-1)
    return x


def apply_view(x: torch.Tensor, name: str) -> torch.Tensor:
    """:func:`models.views.apply_view` on a tensor ``(..., H, W)``."""
    flipped, turns = parse_view(name)
    return _turn(x.flip(-1) if flipped else x, turns)


def invert_view(x: torch.Tensor, name: str) -> torch.Tensor:
    """:func:`models.views.invert_view` on a tensor ``(..., H, W)``."""
    flipped, turns = parse_view(name)
    out = _turn(x, -turns)
    return out.flip(-1) if flipped else out


class ViewAveraged(nn.Module):
    """A classifier's logits averaged over its first ``count`` test-time views, in one batched pass (the
    views of an ``(N, 3, S, S)`` batch go through the network as one ``(count · N, …)`` batch). Averaging
    logits, not probabilities, keeps a CAM's spatial mean plus the bias equal to the logit
    (:class:`models.architectures.classifier.WithCam`)."""

    def __init__(self, model: nn.Module, count: int = 1) -> None:
        super().__init__()
        self.model = model
        self.views = view_names(count)

    def stacked(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, …)`` → the views, concatenated along the batch: ``(count · N, …)``, view-major."""
        return torch.cat([apply_view(x, v) for v in self.views]) if len(self.views) > 1 else x

    def mean_over_views(self, y: torch.Tensor, *, spatial: bool = False) -> torch.Tensor:
        """``(count · N, …)`` view-major → ``(N, …)``: the mean over views, each first put back onto the input's
        grid when ``spatial`` (a map ``(…, h, w)``)."""
        if len(self.views) == 1:
            return y
        parts = y.chunk(len(self.views))
        if spatial:
            parts = tuple(invert_view(p, v) for p, v in zip(parts, self.views))
        return torch.stack(parts).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean_over_views(self.model(self.stacked(x)))
