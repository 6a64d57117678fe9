"""training.detection (targets, augmentation, losses, data selection) and the detector end to end: train one
epoch on 12 tiny synthetic photographs, export to ONNX, parity, card, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training extras (torch) are not installed")

from datasets.readers import FundusRecord, LesionBox  # noqa: E402
from models.card import ModelCard, verify  # noqa: E402
from models.detection import LESION_CLASSES, decode_image  # noqa: E402
from models.preprocess import FundusTransform  # noqa: E402
from training.__main__ import main  # noqa: E402
from training.config import load_config  # noqa: E402
from training.detection import (LesionDataset, augment_with_boxes, boxes_to_model, detection_loss,  # noqa: E402
                                encode_targets, gaussian_radius, random_crop, select_annotated)

BOXES = np.array([[10, 12, 30, 20], [64, 64, 67, 66], [100, 40, 126, 90]], np.float32)
LABELS = np.array([1, 0, 2])


def test_encode_targets_places_peaks_sizes_and_offsets() -> None:
    t = encode_targets(BOXES, LABELS, input_size=128)
    assert t["heatmap"].shape == (4, 32, 32) and t["size"].shape == t["offset"].shape == (2, 32, 32)
    # First box: centre (20, 16) px = cell (5, 4) exactly, 5 x 2 cells.
    assert t["heatmap"][1, 4, 5] == 1.0 and t["mask"][4, 5] == 1.0
    assert t["size"][:, 4, 5].tolist() == [5.0, 2.0] and t["offset"][:, 4, 5].tolist() == [0.0, 0.0]
    # Second: centre (65.5, 65) px = cell (16.375, 16.25).
    assert t["offset"][:, 16, 16].tolist() == pytest.approx([0.375, 0.25])
    assert t["mask"].sum() == 3 and (t["heatmap"] == 1.0).sum() == 3
    # The Gaussian spreads over the big exudate box but not into other classes.
    assert 0 < t["heatmap"][2, 16, 29] < 1 and t["heatmap"][3].max() == 0
    assert gaussian_radius(2, 2) < gaussian_radius(20, 20)


def test_targets_decode_back_to_the_boxes() -> None:
    t = encode_targets(BOXES, LABELS, input_size=128)
    lesions = decode_image(t["heatmap"], t["size"], t["offset"], input_size=128, thresholds=0.99)
    got = sorted((LESION_CLASSES.index(l.type), l.box) for l in lesions)
    want = sorted((int(c), tuple(map(float, b))) for b, c in zip(BOXES, LABELS))
    assert [g[0] for g in got] == [w[0] for w in want]
    np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=1e-4)


def test_boxes_to_model_inverts_box_to_original() -> None:
    t = FundusTransform(x0=-20.0, y0=30.0, scale=3.0, size=128, original_width=400, original_height=500)
    lesions = (LesionBox("hard_exudate", (40, 60, 100, 90)),  # inside the crop
               LesionBox("haemorrhage", (350, 60, 399, 90)),  # overhangs the crop's right edge (u = 139.7)
               LesionBox("microaneurysm", (0, 0, 10, 20)))  # above the crop (v < 0): dropped
    boxes, labels = boxes_to_model(FundusRecord(image=Path("x.jpeg"), grade=None, source="coco", lesions=lesions), t)
    assert labels.tolist() == [2, 1]
    assert t.box_to_original(tuple(boxes[0])) == pytest.approx((40, 60, 100, 90))
    assert boxes[1].tolist() == pytest.approx([370 / 3, 10, 128, 20])


def test_augmentation_moves_boxes_with_the_pixels() -> None:
    crop = np.zeros((128, 128, 3), np.uint8)
    crop[40:56, 20:44] = 255  # a bright lesion whose box is (20, 40, 44, 56)
    for seed in range(6):
        out, boxes, labels = augment_with_boxes(crop, np.array([[20, 40, 44, 56]], np.float32), np.array([3]),
                                                np.random.default_rng(seed))
        ys, xs = np.nonzero(out.max(axis=2) > 128)
        seen = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        assert labels.tolist() == [3]
        # The box of the rotated corners contains the rotated square and is at most ~10 % larger per side.
        assert (boxes[0][:2] <= seen[:2] + 1).all() and (boxes[0][2:] >= seen[2:] - 1).all()
        assert np.abs(boxes[0] - seen).max() <= 5


def test_random_crop_shifts_boxes_into_the_window() -> None:
    image = np.zeros((128, 128, 3), np.uint8)
    image[90:100, 70:86] = 255
    box = np.array([[70, 90, 86, 100]], np.float32)
    for seed in range(8):
        window, boxes, labels = random_crop(image, box, np.array([2]), 64, np.random.default_rng(seed))
        assert window.shape == (64, 64, 3)
        ys, xs = np.nonzero(window.max(axis=2))
        if len(boxes):  # the box is where the bright pixels are (clipped to the window)
            assert labels.tolist() == [2]
            np.testing.assert_allclose(boxes[0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        else:  # dropped only when less than half of it is visible
            assert len(xs) < 0.5 * 160
    with pytest.raises(ValueError, match="multiple of 32"):
        LesionDataset([], 128, train=True, crop=48)


def test_augmentation_drops_boxes_pushed_out() -> None:
    crop = np.zeros((64, 64, 3), np.uint8)
    _, boxes, labels = augment_with_boxes(crop, np.array([[0, 0, 1, 1]], np.float32), np.array([0]),
                                          np.random.default_rng(1))
    assert len(boxes) == len(labels) <= 1


def test_loss_prefers_the_true_maps() -> None:
    t = {k: torch.from_numpy(v)[None] for k, v in encode_targets(BOXES, LABELS, input_size=128).items()}
    good = (torch.logit(t["heatmap"].clamp(1e-4, 1 - 1e-4)), t["size"], t["offset"])
    bad = (torch.zeros_like(t["heatmap"]), torch.zeros_like(t["size"]), torch.zeros_like(t["offset"]))
    good_loss, parts = detection_loss(good, t)
    bad_loss, _ = detection_loss(bad, t)
    assert float(good_loss) < 0.05 < float(bad_loss) and parts["size"] == 0.0


def test_select_annotated_counts_records_without_annotation() -> None:
    a = FundusRecord(image=Path("a.jpeg"), grade=0, source="eyepacs")
    b = FundusRecord(image=Path("b.jpeg"), grade=None, source="coco", lesions=())
    assert select_annotated([a, b]) == ([b], 1)


def test_config_task_defaults_and_is_checked(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\n")
    assert load_config(cfg).task == "dr-grading"
    assert load_config(Path("training/configs/detector.yaml")).task == "lesion-detection"
    cfg.write_text("task: segmentation\n")
    with pytest.raises(ValueError, match="unknown task 'segmentation'"):
        load_config(cfg)


@pytest.mark.slow
def test_detector_trains_exports_and_verifies(tiny_detector_run: tuple[Path, Path]) -> None:
    import onnxruntime as ort

    from training.export import load_checkpoint
    from models.architectures.detector import DetectorExport

    cfg, export = tiny_detector_run
    run = cfg.parent / "run"
    ck = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert json.loads(ck["config"])["task"] == "lesion-detection" and "froc" in json.loads(ck["val_metrics"])
    card = ModelCard.load(export / "tiny-detector.card.json")
    assert verify(card, export).name == "tiny-detector.onnx"
    assert card.task == "lesion-detection" and card.classes == LESION_CLASSES
    assert card.outputs == ("heatmap", "size", "offset") and card.input.size == 128 and card.opset == 17
    assert [t.name for t in card.score_thresholds] == list(LESION_CLASSES)
    assert all(0 <= t.threshold <= 1 for t in card.score_thresholds)
    assert {"map_50", "froc", "n"} <= set(card.metrics) and card.metrics["n"] == 12
    assert card.metrics["max_abs_heatmap_diff"] <= 1e-4
    # Dynamic batch: three images through ONNX Runtime match PyTorch.
    model, _, _ = load_checkpoint(run / "best.pt")
    x = np.random.default_rng(2).standard_normal((3, 3, 128, 128), dtype=np.float32)
    sess = ort.InferenceSession(str(export / "tiny-detector.onnx"), providers=["CPUExecutionProvider"])
    heat, size, offset = sess.run(None, {"image": x})
    with torch.inference_mode():
        ref = DetectorExport(model)(torch.from_numpy(x))
    assert heat.shape == (3, 4, 32, 32) and np.abs(heat - ref[0].numpy()).max() <= 1e-4


@pytest.mark.slow
def test_detector_evaluate_cli(tiny_detector_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = tiny_detector_run
    capsys.readouterr()
    assert main(["evaluate", "--config", str(cfg)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 12 and "froc" in metrics


def _lesion(cls: str, score: float, x: float = 10.0) -> "Lesion":
    from models.detection import Lesion

    return Lesion(cls, score, (x, 10.0, x + 6.0, 16.0))


def test_cap_on_negatives_raises_only_the_classes_that_fire_on_real_photographs() -> None:
    from models.card import ScoreThreshold
    from training.detection_metrics import Truth
    from training.tasks.detector import cap_on_negatives

    t = {c: ScoreThreshold(name=c, threshold=0.3, sensitivity=1.0, fp_per_image=0.0, chosen_on="val")
         for c in LESION_CLASSES}
    # Validation: one haemorrhage at x=10 found with 0.9, a false one at x=100 scoring 0.5.
    val = ([[_lesion("haemorrhage", 0.9), _lesion("haemorrhage", 0.5, x=100.0)]],
           [Truth(boxes=((8.0, 8.0, 18.0, 18.0),), types=("haemorrhage",))])
    # Ten real photographs: haemorrhage findings 0.6, 0.45, 0.4, 0.35 (allowed: 0.1 x 10 = 1); one weak
    # microaneurysm below its threshold.
    negatives = [[_lesion("haemorrhage", s)] for s in (0.6, 0.45, 0.4, 0.35)] + [[_lesion("microaneurysm", 0.2)]]
    negatives += [[] for _ in range(5)]
    out = {c.name: c for c in cap_on_negatives(tuple(t.values()), val, negatives, fp_per_image=0.1, where="drive")}
    assert out["microaneurysm"] == t["microaneurysm"] and out["hard_exudate"] == t["hard_exudate"]
    raised = out["haemorrhage"]
    # Just above the second strongest real finding: 0.6 passes (the one allowed), 0.45 does not.
    assert 0.45 < raised.threshold < 0.4501
    assert sum(s >= raised.threshold for s in (0.6, 0.45, 0.4, 0.35)) == 1
    # Re-read on validation: the true lesion (0.9) still passes, the false one (0.5) too.
    assert raised.sensitivity == 1.0 and raised.fp_per_image == 1.0
    assert "raised from 0.300" in raised.chosen_on and "10 real screening photographs" in raised.chosen_on
    # Allowing 0.4 per photograph (4 findings) leaves it alone.
    assert cap_on_negatives((t["haemorrhage"],), val, negatives, fp_per_image=0.4, where="d")[0] == t["haemorrhage"]


def test_export_caps_thresholds_on_the_negatives_of_the_export_config(tiny_detector_run: tuple[Path, Path],
                                                                      tmp_path: Path, retina_path: Path) -> None:
    cfg, _ = tiny_detector_run
    negatives = tmp_path / "real"
    negatives.mkdir()
    for i in range(3):
        (negatives / f"{i}.jpg").write_bytes(retina_path.read_bytes())
    text = cfg.read_text().replace("val_fraction: 0.3}", f"val_fraction: 0.3, negatives: {negatives}, "
                                   "negatives_fp_per_image: 0.0, negatives_terms: test terms}")
    assert "negatives:" in text
    capped = tmp_path / "capped.yaml"
    capped.write_text(text)
    assert main(["export", "--config", str(capped), "--out", str(tmp_path / "export")]) == 0
    card = ModelCard.load(tmp_path / "export" / "tiny-detector.card.json")
    assert card.training.data_terms == "test terms (the real photographs its score thresholds were set on)"
    assert str(negatives) in card.training.data
    # With no finding allowed, no class may pass on the real photographs at its threshold.
    from training.tasks.detector import onnx_detections, read_negatives

    found, _ = onnx_detections((tmp_path / "export" / "tiny-detector.onnx").read_bytes(),
                               read_negatives(negatives), 128)
    limits = {t.name: t.threshold for t in card.score_thresholds}
    assert not [d for dets in found for d in dets if d.score >= limits[d.type]]


def test_export_refuses_settings_that_are_not_export_settings(tiny_detector_run: tuple[Path, Path],
                                                             tmp_path: Path) -> None:
    from training.export import export

    cfg, _ = tiny_detector_run
    with pytest.raises(ValueError, match="not export settings"):
        export(cfg.parent / "run" / "best.pt", tmp_path, test_root=None, data_overrides={"train": "x"})
