"""models.architectures.detector (shapes, finiteness, export wrapper) and models.detection (numpy decoding)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training extras (torch) are not installed")

from models.architectures import build  # noqa: E402
from models.architectures.detector import DETECTOR_NAMES, STRIDE, DetectorExport  # noqa: E402


@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_detector_shapes_and_finite_outputs(name: str) -> None:
    torch.manual_seed(0)
    model = build(name, num_classes=4).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.inference_mode():
        f = model.forward_features(x)
        logits, size, offset = model.forward_head(f)
        heatmap, size2, offset2 = DetectorExport(model)(x)
    assert f.shape == (2, model.num_features, 128 // STRIDE, 128 // STRIDE)
    assert logits.shape == (2, 4, 32, 32) and size.shape == offset.shape == (2, 2, 32, 32)
    for t in (logits, size, offset):
        assert torch.isfinite(t).all()
    assert (size >= 0).all()
    torch.testing.assert_close(heatmap, torch.sigmoid(logits))
    torch.testing.assert_close(size2, size)
    # Before training the heatmap sits near the prior, not at 0.5 (focal-loss initialisation).
    assert 0.02 < float(heatmap.mean()) < 0.3
