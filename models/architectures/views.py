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
    """``x`` ``(..., H, W)`` seen in view ``name`` (:data:`models.views.VIEWS`): mirrored left-right first for
    ``flip…``, then turned as ``np.rot90``."""
    flipped, turns = parse_view(name)
    return _turn(x.flip(-1) if flipped else x, turns)


def invert_view(x: torch.Tensor, name: str) -> torch.Tensor:
    """Undo :func:`apply_view`: a map computed on the view, put back onto the input's grid."""
    flipped, turns = parse_view(name)
    out = _turn(x, -turns)
    return out.flip(-1) if flipped else out


def stack_views(x: torch.Tensor, views: tuple[str, ...]) -> torch.Tensor:
    """``(N, …)`` → its ``views``, concatenated along the batch: ``(len(views) · N, …)``, view-major."""
    return torch.cat([apply_view(x, v) for v in views]) if len(views) > 1 else x


def mean_over_views(y: torch.Tensor, views: tuple[str, ...], *, spatial: bool = False) -> torch.Tensor:
    """``(len(views) · N, …)`` view-major (:func:`stack_views`) → ``(N, …)``: the mean over views, each first
    put back onto the input's grid when ``spatial`` (a map ``(…, h, w)``)."""
    if len(views) == 1:
        return y
    parts = y.chunk(len(views))
    if spatial:
        parts = tuple(invert_view(p, v) for p, v in zip(parts, views))
    return torch.stack(parts).mean(0)


class ViewAveraged(nn.Module):
    """A classifier's logits averaged over its first ``count`` test-time views, in one batched pass (the
    views of an ``(N, 3, S, S)`` batch go through the network as one ``(count · N, …)`` batch). Averaging
    logits, not probabilities, keeps a CAM's spatial mean plus the bias equal to the logit
    (:class:`models.architectures.classifier.WithCam`)."""

    def __init__(self, model: nn.Module, count: int = 1) -> None:
        super().__init__()
        self.model = model
        self.views = view_names(count)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mean_over_views(self.model(stack_views(x, self.views)), self.views)
