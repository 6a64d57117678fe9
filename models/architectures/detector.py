"""Fundus lesion detector: a CenterNet-style fully-convolutional network (Zhou et al., "Objects as Points").

A MobileNetV3 trunk (no pretrained weights: nothing is downloaded) feeds an FPN-lite neck that merges the
stride-32/16/8/4 stages top-down into one stride-4 map; three small heads predict per cell

* ``heatmap`` ``(N, K, H/4, W/4)``: the probability that a lesion of class ``k`` is centred in the cell (a
  sigmoid; it is also the detector's saliency);
* ``size`` ``(N, 2, H/4, W/4)``: box width and height in cells (model pixels / :data:`STRIDE`);
* ``offset`` ``(N, 2, H/4, W/4)``: the sub-cell position of the centre, in cells.

A box whose centre is at model pixel ``(cx, cy)`` (edge coordinates) peaks in cell ``(floor(cx/4),
floor(cy/4))`` with offset ``(cx/4 - floor(cx/4), ...)``; :mod:`models.detection` inverts this in numpy.
Everything is convolution, upsampling and addition: the graph exports to ONNX at any input size and a
dynamic batch, unlike torchvision's detectors (DESIGN.md: fixed size, 0.7-1.5 s in ONNX Runtime).

Interface as the classifiers': ``forward_features(x)`` -> the stride-4 map, ``forward_head(features)`` ->
``(heatmap_logits, size, offset)``; :class:`DetectorExport` is the export wrapper (sigmoid applied).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torchvision import models as tvm

from models.architectures.registry import register

#: Output stride of every detector here: heatmap cells are STRIDE × STRIDE model pixels.
STRIDE = 4
#: Prior probability of a lesion centre in a cell: the heatmap bias starts at logit(PRIOR) so the focal loss
#: does not begin with every cell confidently wrong (CenterNet/RetinaNet initialisation).
PRIOR = 0.1
#: Registered detector names (the classifier tests parametrize over the others).
DETECTOR_NAMES = ("centernet_mnv3_small", "centernet_mnv3_large", "centernet_mnv3_large_050")


def _separable(cin: int, cout: int) -> nn.Sequential:
    """Depthwise 3×3 + pointwise 1×1, each with BatchNorm and ReLU. At stride 4 (192² cells for a 768-px
    input) a dense 3×3 64→64 convolution costs 1.4 GFLOP and ~37 ms in ONNX Runtime on 2 cores; four of them
    (neck + three heads) dominated the whole network. The separable form is ~8× cheaper."""
    return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                         nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _split_stages(features: nn.Sequential) -> tuple[nn.ModuleList, list[int]]:
    """Cut a torchvision trunk into the stages ending at strides 4, 8, 16 and 32; return them with their
    output channels. Strides are measured with a dummy pass so any MobileNetV3 variant works."""
    strides, chans = [], []
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        for block in features:
            x = block(x)
            strides.append(64 // x.shape[-1])
            chans.append(int(x.shape[1]))
    # A stage ends at the last block of each stride >= 4.
    ends = [i for i, s in enumerate(strides) if s >= 4 and (i + 1 == len(strides) or strides[i + 1] != s)]
    starts = [0] + [e + 1 for e in ends[:-1]]
    stages = [nn.Sequential(*features[a:b + 1]) for a, b in zip(starts, ends)]
    channels = [chans[e] for e in ends]
    if len(stages) != 4:
        raise ValueError(f"expected a trunk with stride-4/8/16/32 stages, found {len(stages)} stages")
    return nn.ModuleList(stages), channels


class CenterNetDetector(nn.Module):
    """Trunk stages → FPN-lite (lateral 1×1 convs, nearest upsampling, sums) → stride-4 map → three heads."""

    def __init__(self, features: nn.Sequential, num_classes: int, neck_channels: int = 64,
                 head_channels: int = 64, *, fused_head: bool = False) -> None:
        super().__init__()
        for m in features.modules():  # see FundusClassifier: BatchNorm momentum 0.01 lags when training from scratch
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.1
        self.stages, chans = _split_stages(features)
        self.lateral = nn.ModuleList(nn.Conv2d(c, neck_channels, 1) for c in chans)
        self.smooth = _separable(neck_channels, neck_channels)
        self.num_classes = num_classes
        self.num_features = neck_channels
        self.fused_head = fused_head
        if fused_head:
            # One separable block and one 1x1 convolution give all K + 4 maps: at stride 4 each separable
            # block costs as much as a third of a small trunk, and the three maps read the same features.
            self.head = nn.Sequential(_separable(neck_channels, head_channels),
                                      nn.Conv2d(head_channels, num_classes + 4, 1))
            with torch.no_grad():
                self.head[-1].bias[:num_classes].fill_(math.log(PRIOR / (1 - PRIOR)))
        else:
            self.heatmap = nn.Sequential(_separable(neck_channels, head_channels),
                                         nn.Conv2d(head_channels, num_classes, 1))
            self.size = nn.Sequential(_separable(neck_channels, head_channels), nn.Conv2d(head_channels, 2, 1))
            self.offset = nn.Sequential(_separable(neck_channels, head_channels), nn.Conv2d(head_channels, 2, 1))
            nn.init.constant_(self.heatmap[-1].bias, math.log(PRIOR / (1 - PRIOR)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` → merged feature map ``(N, neck_channels, S/4, S/4)``."""
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        y = self.lateral[3](maps[3])
        for level in (2, 1, 0):
            lat = self.lateral[level](maps[level])
            y = lat + F.interpolate(y, size=lat.shape[-2:], mode="nearest")
        return self.smooth(y)

    def forward_head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Feature map → ``(heatmap_logits, size, offset)``; size is kept non-negative with a ReLU."""
        if self.fused_head:
            out = self.head(features)
            k = self.num_classes
            return out[:, :k], F.relu(out[:, k:k + 2]), out[:, k + 2:k + 4]
        return self.heatmap(features), F.relu(self.size(features)), self.offset(features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.forward_head(self.forward_features(x))


class DetectorExport(nn.Module):
    """Export wrapper: outputs ``heatmap`` (sigmoid probabilities), ``size`` and ``offset``."""

    output_names = ("heatmap", "size", "offset")

    def __init__(self, model: CenterNetDetector) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, size, offset = self.model(x)
        return torch.sigmoid(logits), size, offset


@register("centernet_mnv3_small")
def centernet_mnv3_small(*, num_classes: int = 4, dropout: float = 0.0) -> CenterNetDetector:
    """MobileNetV3-Small trunk: the test suite's tiny detector. ``dropout`` is accepted for a uniform builder
    signature and unused (a dense head has no pooled vector to drop)."""
    return CenterNetDetector(tvm.mobilenet_v3_small(weights=None).features, num_classes)


@register("centernet_mnv3_large")
def centernet_mnv3_large(*, num_classes: int = 4, dropout: float = 0.0) -> CenterNetDetector:
    """MobileNetV3-Large trunk (reduced tail: the stride-32 stage is context only)."""
    return CenterNetDetector(tvm.mobilenet_v3_large(weights=None, reduced_tail=True).features, num_classes)


@register("centernet_mnv3_large_050")
def centernet_mnv3_large_050(*, num_classes: int = 4, dropout: float = 0.0) -> CenterNetDetector:
    """The CPU detector: MobileNetV3-Large at width 0.5 (reduced tail), a 48-channel neck and one fused head.
    At 768 px it is 1.8 GFLOP against 5.9 for :func:`centernet_mnv3_large` (2.3x faster in ONNX Runtime on 2
    cores); the stride-4 output is kept, since microaneurysms are a few model pixels across."""
    trunk = tvm.mobilenet_v3_large(weights=None, width_mult=0.5, reduced_tail=True).features
    return CenterNetDetector(trunk, num_classes, neck_channels=48, head_channels=48, fused_head=True)
