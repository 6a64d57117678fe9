"""models.architectures: registry rules, the uniform interface, and CAM == Grad-CAM for every classifier."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training extras (torch) are not installed")

from models.architectures import build, names, register  # noqa: E402
from models.architectures.classifier import WithCam  # noqa: E402
from models.architectures.detector import DETECTOR_NAMES  # noqa: E402


def test_registry_refuses_duplicates_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register("resnet18")(lambda **_: None)
    with pytest.raises(KeyError, match="known:"):
        build("no-such-net", num_classes=5)
    assert {"resnet18", "mobilenet_v3_large", "efficientnet_b0"} <= set(names())


@pytest.mark.parametrize("name", [n for n in names() if n not in DETECTOR_NAMES])
def test_uniform_interface_shapes_and_logit_identity(name: str) -> None:
    torch.manual_seed(0)
    model = build(name, num_classes=5).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        f = model.forward_features(x)
        logits = model.forward_head(f)
        logits2, cam = WithCam(model)(x)
    assert f.ndim == 4 and f.shape[1] == model.num_features
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    assert cam.shape == (2, 5, *f.shape[2:])
    torch.testing.assert_close(logits, logits2)
    # The head is GAP + linear: each logit is its CAM's spatial mean plus the bias.
    torch.testing.assert_close(cam.mean(dim=(2, 3)) + model.head.bias, logits, rtol=1e-4, atol=1e-4)


def _grad_cam(model: torch.nn.Module, x: torch.Tensor, cls: int) -> np.ndarray:
    """Textbook Grad-CAM (Selvaraju et al.) at the last feature map, with autograd."""
    f = model.forward_features(x).detach().requires_grad_(True)
    logit = model.forward_head(f)[0, cls]
    (grad,) = torch.autograd.grad(logit, f)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    return (weights * f).sum(dim=1)[0].detach().numpy()


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "resnet18"])
def test_cam_equals_grad_cam(name: str) -> None:
    torch.manual_seed(1)
    model = build(name, num_classes=5).eval()
    x = torch.randn(1, 3, 160, 160)
    with torch.inference_mode():
        _, cam = WithCam(model)(x)
    for cls in range(5):
        gc = _grad_cam(model, x, cls).ravel()
        c = cam[0, cls].numpy().ravel()
        assert np.corrcoef(gc, c)[0, 1] >= 0.99
        # Exactly proportional: Grad-CAM = CAM / (h*w) before the ReLU, hence after it too.
        np.testing.assert_allclose(gc * c.size, c, rtol=1e-3, atol=1e-4)
