"""Fundus image classifiers: a torchvision backbone + global-average-pool + one linear layer.

That head is what makes saliency free: for ``logit_c = b_c + mean_ij(sum_k w_ck F_k(i, j))`` the class
activation map ``CAM_c(i, j) = sum_k w_ck F_k(i, j)`` is exactly Grad-CAM up to a positive constant
(Grad-CAM's channel weights are ``d logit_c / d F_k(i, j) = w_ck / (h w)``), so the exported graph can return
``cam`` from the same forward pass, with no autograd at serving time.

Weights are initialised from scratch: nothing is downloaded (no model hub is reachable here).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from models.architectures.registry import register


class FundusClassifier(nn.Module):
    """``features`` (a conv trunk) → global average pool → dropout → ``head`` (linear)."""

    def __init__(self, features: nn.Module, num_features: int, num_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        # torchvision's MobileNet/EfficientNet use BatchNorm momentum 0.01, tuned for long ImageNet runs. From
        # scratch on a few thousand images the running statistics then lag the weights by ~100 steps and
        # evaluation-mode outputs collapse to one class for several epochs (seen here); 0.1 tracks them.
        for m in features.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.1
        self.features = features
        self.num_features = num_features
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` → last feature map ``(N, C, h, w)``."""
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Feature map → logits ``(N, num_classes)``."""
        return self.head(self.dropout(features.mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def cam(self, features: torch.Tensor) -> torch.Tensor:
        """Class activation maps ``(N, num_classes, h, w)``; their spatial mean plus the bias is the logit."""
        return torch.einsum("kc,nchw->nkhw", self.head.weight, features)


class WithCam(nn.Module):
    """Export wrapper: one forward pass returns ``(logits, cam)``."""

    def __init__(self, model: FundusClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.model.forward_features(x)
        return self.model.forward_head(f), self.model.cam(f)


def _resnet_trunk(net: tvm.ResNet) -> nn.Module:
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)


@register("resnet18")
def resnet18(*, num_classes: int, dropout: float = 0.2) -> FundusClassifier:
    """ResNet-18 trunk (512 channels at stride 32)."""
    return FundusClassifier(_resnet_trunk(tvm.resnet18(weights=None)), 512, num_classes, dropout)


@register("mobilenet_v3_large")
def mobilenet_v3_large(*, num_classes: int, dropout: float = 0.2) -> FundusClassifier:
    """MobileNetV3-Large trunk (960 channels). Its stock classifier has a hidden layer, which would break
    CAM = Grad-CAM; it is replaced by the plain linear head."""
    return FundusClassifier(tvm.mobilenet_v3_large(weights=None).features, 960, num_classes, dropout)


@register("mobilenet_v3_large_rt")
def mobilenet_v3_large_rt(*, num_classes: int, dropout: float = 0.2) -> FundusClassifier:
    """MobileNetV3-Large with torchvision's reduced tail (last stage at half width, 480 channels): the same
    compute at 1/32 resolution is negligible, so it runs as fast as the full trunk with 55 % of its weights
    (6.5 MB of float32 instead of 12 MB) — the embedded default must stay a few MB in git."""
    return FundusClassifier(tvm.mobilenet_v3_large(weights=None, reduced_tail=True).features, 480, num_classes, dropout)


@register("mobilenet_v3_small")
def mobilenet_v3_small(*, num_classes: int, dropout: float = 0.2) -> FundusClassifier:
    """MobileNetV3-Small trunk (576 channels): the test suite's tiny model."""
    return FundusClassifier(tvm.mobilenet_v3_small(weights=None).features, 576, num_classes, dropout)


@register("efficientnet_b0")
def efficientnet_b0(*, num_classes: int, dropout: float = 0.2) -> FundusClassifier:
    """EfficientNet-B0 trunk (1280 channels)."""
    return FundusClassifier(tvm.efficientnet_b0(weights=None).features, 1280, num_classes, dropout)
