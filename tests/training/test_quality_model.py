"""training.quality_model (labels, data, loss) and the image-quality model end to end: train one epoch on 16
tiny synthetic photographs, export to ONNX, parity, card, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training extras (torch) are not installed")

from datasets.readers import DatasetError, FundusRecord  # noqa: E402
from datasets.synthetic.quality import ARTEFACTS, ArtefactPlan, judge  # noqa: E402
from models.card import ModelCard, verify  # noqa: E402
from analysis.quality import REASONS  # noqa: E402
from training.__main__ import main  # noqa: E402
from training.quality_model import (QUALITY_CLASSES, REASON_GROUPS, QualityDataset, QualityItem,  # noqa: E402
                                    load_quality, quality_loss, quality_targets, read_quality_truth, split_items)


def _targets(**strengths: float) -> dict[str, float]:
    return dict(zip(QUALITY_CLASSES, quality_targets(judge(ArtefactPlan(strengths))).tolist()))


def test_classes_are_gradable_then_the_service_reasons() -> None:
    assert QUALITY_CLASSES == ("gradable", *REASONS)
    assert sorted(a for arts in REASON_GROUPS.values() for a in arts) == sorted(ARTEFACTS)


def test_label_mapping_groups_artefacts_into_the_service_reasons() -> None:
    assert _targets() == {"gradable": 1.0, **dict.fromkeys(REASONS, 0.0)}
    # Below threshold: visible but gradable, and no reason.
    assert _targets(blur=0.3, haze=0.49) == {"gradable": 1.0, **dict.fromkeys(REASONS, 0.0)}
    assert _targets(jpeg_artefacts=0.5) == {"gradable": 0.0, **dict.fromkeys(REASONS, 0.0), "blur": 1.0}
    assert _targets(lid_shadow=0.9, off_centre=0.7) == {
        "gradable": 0.0, **dict.fromkeys(REASONS, 0.0), "uneven": 1.0, "field": 1.0}
    assert _targets(cut_field=0.6, overexposed=0.2)["field"] == 1.0
    assert _targets(cut_field=0.6, overexposed=0.2)["overexposed"] == 0.0
    assert _targets(uneven_illumination=1.0)["uneven"] == 1.0 and _targets(underexposed=0.5)["underexposed"] == 1.0


def test_quality_csv_problems_name_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="quality.csv is missing"):
        read_quality_truth(tmp_path)
    header = "image,gradable,reasons," + ",".join(ARTEFACTS)
    zeros = ",".join("0.000" for _ in ARTEFACTS)
    (tmp_path / "quality.csv").write_text(f"{header}\n00000_left,1,,{zeros}\n00000_right,1,blur,{zeros}\n")
    with pytest.raises(DatasetError, match=r"quality.csv:3.*contradicts"):
        read_quality_truth(tmp_path)
    with pytest.raises(DatasetError, match="only the 'synthetic'"):
        load_quality(tmp_path, "eyepacs")


def test_augmentation_is_exact_and_keeps_the_labels(tmp_path: Path) -> None:
    import cv2

    rgb = np.zeros((64, 64, 3), np.uint8)
    cv2.circle(rgb, (32, 32), 30, (200, 90, 40), -1)
    rgb[20:30, 10:50] = (250, 250, 250)  # an asymmetric mark
    cv2.imwrite(str(tmp_path / "a.png"), rgb[..., ::-1])
    item = QualityItem(FundusRecord(image=tmp_path / "a.png", grade=0, source="synthetic"),
                       judge(ArtefactPlan({"haze": 0.8})))
    plain = QualityDataset([item], 64, train=False)
    aug = QualityDataset([item], 64, train=True, seed=1)
    x0, y0 = plain[0]
    seen = set()
    for epoch in range(8):
        aug.set_epoch(epoch)
        x, y = aug[0]
        assert torch.equal(y, y0) and y.tolist() == quality_targets(item.truth).tolist()
        # Flips and quarter turns only: the same pixel values, rearranged.
        assert torch.equal(x.flatten().sort().values, x0.flatten().sort().values)
        seen.add(x.numpy().tobytes())
    assert len(seen) > 2


def test_loss_prefers_the_truth() -> None:
    y = torch.tensor([[1.0, 0, 0, 0, 0, 0, 0], [0.0, 0, 1, 0, 1, 0, 0]])
    assert float(quality_loss((y * 2 - 1) * 6, y)) < 0.01 < float(quality_loss(-(y * 2 - 1) * 6, y))


def test_config_must_fit_the_quality_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "q.yaml"
    cfg.write_text(f"task: image-quality\nnum_classes: 5\nout: {tmp_path / 'run'}\n"
                   f"data: {{format: synthetic, train: {tmp_path}, test: {tmp_path}}}\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "num_classes must be 7" in capsys.readouterr().err


@pytest.mark.slow
def test_quality_model_trains_exports_and_verifies(tiny_quality_run: tuple[Path, Path]) -> None:
    import onnxruntime as ort

    from training.export import load_checkpoint
    from training.tasks.quality import QualityExport

    cfg, export = tiny_quality_run
    ck = torch.load(cfg.parent / "run" / "best.pt", map_location="cpu", weights_only=True)
    assert json.loads(ck["config"])["task"] == "image-quality"
    card = ModelCard.load(export / "tiny-quality.card.json")
    assert verify(card, export).name == "tiny-quality.onnx"
    assert card.task == "image-quality" and card.classes == QUALITY_CLASSES and card.outputs == ("probabilities",)
    assert card.input.size == 96 and card.opset == 17
    op = card.operating_point("gradable")
    assert op is not None and 0 <= op.threshold <= 1 and op.sensitivity >= 0.9  # chosen for >= 0.90 on validation
    assert card.metrics["n"] == 16 and card.metrics["ungradable"] == 6
    assert {"quality_auc", "ungradable_sensitivity", "ungradable_specificity", "auc_field"} <= set(card.metrics)
    assert card.metrics["max_abs_probability_diff"] <= 1e-4
    # Dynamic batch: three images through ONNX Runtime match PyTorch, and they are probabilities.
    model, _, _ = load_checkpoint(cfg.parent / "run" / "best.pt")
    x = np.random.default_rng(2).standard_normal((3, 3, 96, 96), dtype=np.float32)
    sess = ort.InferenceSession(str(export / "tiny-quality.onnx"), providers=["CPUExecutionProvider"])
    (p,) = sess.run(["probabilities"], {"image": x})
    with torch.inference_mode():
        ref = QualityExport(model)(torch.from_numpy(x)).numpy()
    assert p.shape == (3, 7) and ((p >= 0) & (p <= 1)).all() and np.abs(p - ref).max() <= 1e-4


@pytest.mark.slow
def test_quality_evaluate_cli(tiny_quality_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = tiny_quality_run
    capsys.readouterr()
    assert main(["evaluate", "--config", str(cfg)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 16 and "quality_auc" in metrics and "ungradable_sensitivity" in metrics


def test_real_grades_give_gradable_or_reject_with_unknown_reasons(tmp_path: Path) -> None:
    from training.quality_model import UNKNOWN, read_eyeq

    assert quality_targets(None, 0).tolist() == [1.0] + [0.0] * 6
    assert quality_targets(None, 1).tolist() == [1.0] + [0.0] * 6
    assert quality_targets(None, 2).tolist() == [0.0] + [UNKNOWN] * 6
    with pytest.raises(ValueError):
        quality_targets(None, None)
    csv = tmp_path / "q.csv"
    csv.write_text("image,quality,quality_label\n1_left,0,Good\n1_right,2,Reject\n")
    assert read_eyeq(csv) == {"1_left": 0, "1_right": 2}
    csv.write_text("image,quality\n1_left,7\n")
    with pytest.raises(DatasetError, match="q.csv"):
        read_eyeq(csv)


def test_loss_ignores_unknown_reasons() -> None:
    y = torch.tensor([[0.0, -1, -1, -1, -1, -1, -1]])
    right = torch.tensor([[-6.0, 0, 0, 0, 0, 0, 0]])
    wild = torch.tensor([[-6.0, 9, -9, 9, -9, 9, -9]])  # the reasons' logits do not matter when unknown
    assert float(quality_loss(right, y)) == pytest.approx(float(quality_loss(wild, y)))
    assert float(quality_loss(right, y)) < 0.01


def test_split_items_keeps_a_share_of_each_sources_training_patients_and_the_same_validation() -> None:
    def item(name: str, *, real: bool) -> QualityItem:
        record = FundusRecord(image=Path(f"/d/{name}.png"), grade=0, patient=name.split("_")[0], source="t")
        return QualityItem(record, None if real else judge(ArtefactPlan({})), eyeq=0 if real else None)

    items = [item(f"{src}{p}_{eye}", real=src == "r") for src in "rs" for p in range(20) for eye in "lr"]
    full, val = split_items(items, 0.2, seed=2)
    half, val_half = split_items(items, 0.2, seed=2, train_fraction=0.5)
    assert val_half == val
    for src in "rs":  # each source keeps half its own training patients, a subset of the full split's
        kept = {it.record.group for it in half if it.record.group.startswith(src)}
        assert len(kept) == 8 and kept < {it.record.group for it in full if it.record.group.startswith(src)}
