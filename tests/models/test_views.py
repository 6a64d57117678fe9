"""models.views and models.architectures.views: the test-time views, their inverses, and the view-averaged
grader graph (logits invariant and CAM equivariant under the group it averages, exportable to ONNX)."""

from __future__ import annotations

import numpy as np
import pytest

from models.views import VIEWS, parse_view, view_names

torch = pytest.importorskip("torch", reason="training extras (torch) are not installed")

from models.architectures import build  # noqa: E402
from models.architectures import views as tviews  # noqa: E402
from models.architectures.classifier import WithCam  # noqa: E402


def apply_view(image: np.ndarray, name: str) -> np.ndarray:
    """The numpy reference of a view: mirrored left-right first for ``flip…``, then ``np.rot90``."""
    flipped, turns = parse_view(name)
    return np.rot90(image[..., ::-1] if flipped else image, turns, axes=(-2, -1))


def invert_view(image: np.ndarray, name: str) -> np.ndarray:
    """The numpy reference of undoing :func:`apply_view`."""
    flipped, turns = parse_view(name)
    out = np.rot90(image, -turns, axes=(-2, -1))
    return out[..., ::-1] if flipped else out


def test_view_names_are_prefixes_of_the_group_and_other_counts_are_refused() -> None:
    assert view_names(1) == ("identity",) and view_names(2) == ("identity", "rot90")
    assert view_names(8) == VIEWS and len(set(VIEWS)) == 8
    for bad in (0, 3, 5, 16):
        with pytest.raises(ValueError, match="1, 2, 4, 8"):
            view_names(bad)
    with pytest.raises(ValueError, match="unknown test-time view"):
        parse_view("rot45")


def test_numpy_views_are_the_eight_distinct_symmetries_and_invert() -> None:
    image = np.arange(2 * 4 * 4).reshape(2, 4, 4)
    seen = {apply_view(image, v).tobytes() for v in VIEWS}
    assert len(seen) == 8  # no two views coincide on an asymmetric image
    for v in VIEWS:
        np.testing.assert_array_equal(invert_view(apply_view(image, v), v), image)
    np.testing.assert_array_equal(apply_view(image, "rot90"), np.rot90(image, 1, axes=(1, 2)))
    np.testing.assert_array_equal(apply_view(image, "flip-rot270"), np.rot90(image[..., ::-1], 3, axes=(1, 2)))


@pytest.mark.parametrize("name", VIEWS)
def test_torch_views_match_the_numpy_reference(name: str) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    got = tviews.apply_view(torch.from_numpy(x), name).numpy()
    np.testing.assert_array_equal(got, apply_view(x, name))
    np.testing.assert_array_equal(tviews.invert_view(torch.from_numpy(got), name).numpy(), x)


def _grader() -> torch.nn.Module:
    """A small conv grader whose answer depends on the input's orientation (random 5x5 kernels)."""
    from models.architectures.classifier import FundusClassifier

    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=4, padding=2), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 16, 5, stride=2, padding=2), torch.nn.ReLU())
    return FundusClassifier(trunk, 16, 5).eval()


def test_view_average_is_the_mean_of_the_views_logits_and_of_the_cams_put_back() -> None:
    model = _grader()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        logits, cam = WithCam(model, 4)(x)
        per_view = [WithCam(model)(tviews.apply_view(x, v)) for v in view_names(4)]
        averaged = tviews.ViewAveraged(model, 4)(x)
    torch.testing.assert_close(logits, torch.stack([lg for lg, _ in per_view]).mean(0))
    torch.testing.assert_close(averaged, logits)
    back = [tviews.invert_view(c, v) for (_, c), v in zip(per_view, view_names(4))]
    torch.testing.assert_close(cam, torch.stack(back).mean(0))
    # Still GAP + linear: each logit is its CAM's spatial mean plus the bias.
    torch.testing.assert_close(cam.mean(dim=(2, 3)) + model.head.bias, logits, rtol=1e-4, atol=1e-4)


def test_four_turns_make_the_grade_invariant_and_the_cam_equivariant_to_a_turn() -> None:
    model = _grader()
    x = torch.randn(1, 3, 64, 64)
    turned = tviews.apply_view(x, "rot90")
    with torch.inference_mode():
        logits, cam = WithCam(model, 4)(x)
        logits_t, cam_t = WithCam(model, 4)(turned)
        single, single_t = WithCam(model)(x)[0], WithCam(model)(turned)[0]
    torch.testing.assert_close(logits_t, logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cam_t, tviews.apply_view(cam, "rot90"), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(single, single_t, atol=1e-5)  # one view alone is not invariant: the test can fail


def test_view_averaged_graph_exports_to_onnx(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build("mobilenet_v3_small", num_classes=5).eval()
    x = torch.randn(3, 3, 64, 64)
    path = tmp_path / "views.onnx"
    wrapper = WithCam(model, 8).eval()
    torch.onnx.export(wrapper, (x[:1],), str(path), input_names=["image"], output_names=["logits", "cam"],
                      dynamo=False, dynamic_axes={n: {0: "batch"} for n in ("image", "logits", "cam")})
    logits, cam = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    with torch.inference_mode():
        ref_logits, ref_cam = wrapper(x)
    np.testing.assert_allclose(logits, ref_logits.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cam, ref_cam.numpy(), rtol=1e-4, atol=1e-4)
