"""Torch model definitions and their registry (imported by training only; serving never imports torch).

Every architecture follows one interface (timm style) so export, CAM and tests treat them alike:
``forward_features(x) -> (N, C, h, w)``, ``forward_head(features) -> logits``, ``forward(x) -> logits``, and
``head: nn.Linear`` applied after global average pooling.
"""

from models.architectures.registry import build, names, register
from models.architectures import classifier as _classifier  # noqa: F401  (registers the classifiers)
from models.architectures import detector as _detector  # noqa: F401  (registers the lesion detectors)

__all__ = ["build", "names", "register"]
