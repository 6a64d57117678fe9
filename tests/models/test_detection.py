"""models.architectures.detector (shapes, finiteness, export wrapper) and models.detection (numpy decoding)."""

from __future__ import annotations

import numpy as np
import pytest

from models.detection import LESION_CLASSES, Lesion, decode, decode_image, to_original
from models.preprocess import FundusTransform

DETECTORS = ("centernet_mnv3_small", "centernet_mnv3_large", "centernet_mnv3_large_050")


@pytest.mark.parametrize("name", DETECTORS)
def test_detector_shapes_and_finite_outputs(name: str) -> None:
    torch = pytest.importorskip("torch", reason="training extras (torch) are not installed")
    from models.architectures import build
    from models.architectures.detector import DETECTOR_NAMES, STRIDE, DetectorExport

    assert name in DETECTOR_NAMES
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


def _maps(h: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    heat = np.zeros((4, h, h), np.float32)
    size = np.zeros((2, h, h), np.float32)
    offset = np.zeros((2, h, h), np.float32)
    return heat, size, offset


def test_decode_exact_peaks_give_exact_boxes() -> None:
    heat, size, offset = _maps()
    # A haemorrhage centred at model pixel (4 * (5 + 0.25), 4 * (3 + 0.5)) = (21, 14), 8 x 4 px.
    heat[1, 3, 5] = 0.9
    heat[1, 3, 6] = 0.5  # a shoulder of the same peak: not a 3x3 maximum, suppressed
    size[:, 3, 5] = (2.0, 1.0)
    offset[:, 3, 5] = (0.25, 0.5)
    # An exudate at cell (10, 12) without offset, 4 x 4 px; and a weak microaneurysm below the threshold.
    heat[2, 12, 10] = 0.6
    size[:, 12, 10] = (1.0, 1.0)
    heat[0, 0, 0] = 0.1
    lesions = decode_image(heat, size, offset, input_size=64, thresholds=0.3)
    assert lesions == [Lesion("haemorrhage", pytest.approx(0.9), (17.0, 12.0, 25.0, 16.0)),
                       Lesion("hard_exudate", pytest.approx(0.6), (38.0, 46.0, 42.0, 50.0))]


def test_decode_per_class_thresholds_top_k_and_clipping() -> None:
    heat, size, offset = _maps()
    for i in range(5):  # five separate microaneurysm peaks with rising scores
        heat[0, 2 * i, 2 * i] = 0.5 + 0.1 * i
    size[:, 0, 0] = (3.0, 3.0)  # the first one's box overhangs the top-left corner
    heat[3, 8, 1] = 0.4
    lesions = decode_image(heat, size, offset, input_size=64, thresholds={"microaneurysm": 0.55}, top_k=3)
    assert [l.type for l in lesions] == ["microaneurysm"] * 3  # cotton-wool spots not asked for
    assert [round(l.score, 2) for l in lesions] == [0.9, 0.8, 0.7]
    everything = decode_image(heat, size, offset, input_size=64, thresholds=0.0, top_k=10)
    corner = next(l for l in everything if l.score == pytest.approx(0.5))
    assert corner.box == (0.0, 0.0, 6.0, 6.0)  # centre (0, 0), 12 px: clipped at the input's edge


def test_decode_batch_and_shape_errors() -> None:
    heat, size, offset = _maps()
    heat[3, 4, 4] = 0.8
    size[:, 4, 4] = (1.0, 2.0)
    out = decode({"heatmap": np.stack([heat, heat * 0]), "size": np.stack([size, size]),
                  "offset": np.stack([offset, offset])}, input_size=64)
    assert [len(x) for x in out] == [1, 0] and out[0][0].type == LESION_CLASSES[3]
    with pytest.raises(ValueError, match="channels"):
        decode_image(heat[:3], size, offset, input_size=64)
    with pytest.raises(ValueError, match="must be"):
        decode_image(heat, size[:, :8], offset, input_size=64)


def test_to_original_maps_boxes_with_the_preprocessing_transform() -> None:
    t = FundusTransform(x0=-10.0, y0=20.0, scale=2.5, size=64, original_width=150, original_height=200)
    (mapped,) = to_original([Lesion("haemorrhage", 0.9, (4.0, 8.0, 12.0, 16.0))], t)
    assert mapped.box == (0.0, 40.0, 20.0, 60.0) and mapped.score == 0.9


def test_classes_match_the_dataset_lesion_types() -> None:
    from datasets.readers.record import LESION_TYPES

    assert LESION_CLASSES == LESION_TYPES
