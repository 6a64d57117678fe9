"""training.report, training.report_html and ``python -m training evaluate``'s report: the pictures are real
PNGs, the reliability bins reproduce torchmetrics' calibration error, and a tiny evaluation of each task writes
a self-contained page holding every figure and the very metrics ``evaluate`` printed."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="training extras are not installed")
torch = pytest.importorskip("torch", reason="training extras (torch) are not installed")

from training.__main__ import main  # noqa: E402
from training.report import (Curve, Point, plot_confusion, plot_history, reliability_bins,  # noqa: E402
                             reliability_figure, roc_figure)
from training.report_html import (SYNTHETIC_DATA_NOTICE, SYNTHETIC_TRAINING_NOTICE, Page, format_metric,  # noqa: E402
                                  format_value, is_synthetic_folder)


def test_history_and_confusion_pictures(tmp_path: Path) -> None:
    hist = [{"epoch": e, "train_loss": 1.5 - 0.1 * e, "val_quadratic_weighted_kappa": 0.2 * e,
             "val_referable_auc": 0.5 + 0.1 * e, "val_accuracy": 0.3 + 0.1 * e} for e in range(4)]
    img = cv2.imread(str(plot_history(hist, tmp_path / "h.png")))
    assert img is not None and img.shape[1] >= 800 and img.std() > 5
    # With training time recorded, a third panel draws QWK and AUC against minutes (wall and CPU / threads).
    timed = [{**h, "minutes": 5.0 * (h["epoch"] + 1), "cpu_minutes": 8.0 * (h["epoch"] + 1), "threads": 2}
             for h in hist]
    wide = cv2.imread(str(plot_history(timed, tmp_path / "t.png")))
    assert wide is not None and wide.shape[1] >= 1.4 * img.shape[1]
    cm = np.array([[5, 1, 0, 0, 0], [1, 4, 1, 0, 0], [0, 1, 6, 1, 0], [0, 0, 1, 5, 1], [0, 0, 0, 0, 7]])
    img = cv2.imread(str(plot_confusion(cm, ["a", "b", "c", "d", "e"], tmp_path / "c.png", "t")))
    assert img is not None and img.shape[0] >= 400


def test_reliability_bins_reproduce_torchmetrics_ece() -> None:
    from torchmetrics.functional.classification import multiclass_calibration_error

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 5)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 5, 300)
    # Confidences exactly on bin edges go to the bin above, as torchmetrics' bucketize puts them.
    probs[:2] = [[0.5, 0.125, 0.125, 0.125, 0.125], [0.25, 0.25, 0.25, 0.125, 0.125]]
    bins = reliability_bins(probs.max(1), probs.argmax(1) == labels)
    filled = bins.counts > 0
    ece = float(np.sum(bins.counts[filled] / 300 * np.abs(bins.accuracy[filled] - bins.confidence[filled])))
    ref = float(multiclass_calibration_error(torch.from_numpy(probs).float(), torch.from_numpy(labels), num_classes=5,
                                             n_bins=10))
    assert bins.counts.sum() == 300 and ece == pytest.approx(ref, abs=1e-5)
    png = reliability_figure(bins, ref, "t")
    assert cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).shape[0] >= 500
    roc = roc_figure([Curve(np.array([0, 0.2, 1.0]), np.array([0, 0.9, 1.0]), "c")], "t", [Point(0.2, 0.9, "op")])
    assert roc.startswith(b"\x89PNG")


def test_page_escapes_text_and_states_synthetic_data(tmp_path: Path, tiny_dataset: Path) -> None:
    assert is_synthetic_folder(tiny_dataset, "eyepacs") and is_synthetic_folder(tmp_path / "x", "synthetic")
    assert not is_synthetic_folder(tmp_path, "eyepacs") and not is_synthetic_folder(None)
    page = Page(title="<script>x</script>", synthetic_data=True, synthetic_training=False, meta=(("data", "a&b"),))
    page.metrics_table({"auc": 0.91234, "auc_ci95_low": 0.8, "auc_ci95_high": 0.95, "n": 20.0})
    text = page.write(tmp_path / "r").read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text and "a&amp;b" in text
    assert html.escape(SYNTHETIC_DATA_NOTICE) in text and html.escape(SYNTHETIC_TRAINING_NOTICE) not in text
    assert "<td>0.9123</td><td>[0.8000, 0.9500]</td>" in text and "<td>20</td>" in text
    assert "http" not in text.replace("http-equiv", "")  # no external asset
    assert format_value(float("nan")) == "n/a" and format_value(1.0) == "1.0000" and format_value(3) == "3"
    assert format_metric("pointing_game_n", 7.0) == "7" and format_metric("referable_auc", 1.0) == "1.0000"
    with pytest.raises(ValueError, match="PNG"):
        page.figure(b"GIF89a", name="x", caption="x")


def _png(data: str) -> np.ndarray:
    raw = base64.b64decode(data)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[0] >= 50 and img.shape[1] >= 50 and img.std() > 3
    return img


def _figures(text: str) -> dict[str, np.ndarray]:
    found = re.findall(r'<figure data-figure="([^"]+)"><img src="data:image/png;base64,([^"]+)"', text)
    return {name: _png(data) for name, data in found}


def _grid(text: str, name: str) -> tuple[list[np.ndarray], list[str]]:
    match = re.search(rf'<div class="grid" data-grid="{name}">(.*?)</div>', text, re.S)
    assert match, f"no {name} grid"
    images = [_png(d) for d in re.findall(r'<img src="data:image/png;base64,([^"]+)"', match.group(1))]
    return images, re.findall(r"<figcaption>(.*?)</figcaption>", match.group(1))


def _evaluate(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, float], str]:
    capsys.readouterr()
    assert main(["evaluate", *args]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    page = Path(re.search(r"report: (\S+)", captured.err).group(1))  # type: ignore[union-attr]
    text = page.read_text(encoding="utf-8")
    # The page carries exactly the printed metrics, and shows each in its table.
    shown = re.search(r'<pre data-json="metrics">(.*?)</pre>', text, re.S)
    assert shown and json.loads(html.unescape(shown.group(1))) == metrics
    for key, value in metrics.items():
        if not key.endswith(("_ci95_low", "_ci95_high")):
            assert f"<td>{key}</td><td>{format_metric(key, value)}</td>" in text, key
    assert "<script" not in text and 'src="http' not in text
    return metrics, text


def test_grader_report(tiny_export: Path, tiny_config: Path, tiny_dataset: Path, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    """Read as ``synthetic``, the tiny set has lesion boxes: the pointing game is played and marked."""
    metrics, text = _evaluate(["--config", str(tiny_config), "--data", str(tiny_dataset), "--format", "synthetic",
                               "--report", str(tmp_path / "r")], capsys)
    assert (tmp_path / "r" / "index.html").is_file()
    assert {"roc", "confusion", "calibration", "history"} <= set(_figures(text))
    assert html.escape(SYNTHETIC_DATA_NOTICE) in text and html.escape(SYNTHETIC_TRAINING_NOTICE) in text
    for key in ("quadratic_weighted_kappa_ci95_low", "referable_auc_ci95_high", "pointing_game_hit_rate",
                "pointing_game_centre_baseline", "referable_sensitivity"):
        assert key in metrics
    assert re.search(rf"<td>quadratic_weighted_kappa</td><td>[^<]+</td><td>\["
                     rf"{format_value(metrics['quadratic_weighted_kappa_ci95_low'])}, ", text)
    images, captions = _grid(text, "saliency")
    assert len(images) == 12 and images[0].shape[1] == 360
    # Referable images with lesion boxes come first, each marked; the marks agree with the hit rate.
    n_game = int(metrics["pointing_game_n"])
    marks = [re.search(r'class="(hit|miss)">(hit|miss)<', c) for c in captions]
    assert all(m is not None for m in marks[:min(n_game, 12)]) and all(m is None for m in marks[n_game:])
    if n_game <= 12:
        hits = sum(m.group(2) == "hit" for m in marks if m)  # type: ignore[union-attr]
        assert hits == round(metrics["pointing_game_hit_rate"] * n_game)


def test_grader_report_default_folder_and_same_metrics_as_before(tiny_export: Path, tiny_config: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Without --report the page goes to report/ in the run folder; the metrics equal those of the training
    loop's own evaluation (torch on FundusDataset), so the single CAM pass changed no number."""
    from torch.utils.data import DataLoader

    from training.config import load_config
    from training.data import FundusDataset, load_graded
    from training.export import load_checkpoint
    from training.tasks.grader import evaluate

    metrics, text = _evaluate(["--config", str(tiny_config)], capsys)
    cfg = load_config(tiny_config)
    assert (Path(cfg.out) / "report" / "index.html").is_file()
    assert "pointing_game_n" not in metrics  # EyePACS layout: no lesion annotation
    model, cfg_ck, ck = load_checkpoint(Path(cfg.out) / "best.pt")
    ds = FundusDataset(load_graded(Path(cfg.data.test), cfg.data.format), cfg_ck.input_size, train=False)
    before = evaluate(model, DataLoader(ds, batch_size=32), json.loads(ck["operating_point"])["threshold"])
    assert before.keys() <= metrics.keys()
    for key, value in before.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    _, captions = _grid(text, "saliency")
    assert len(captions) == 12 and not any("class=" in c for c in captions)


def test_detector_report(tiny_detector_run: tuple[Path, Path], tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = tiny_detector_run
    metrics, text = _evaluate(["--config", str(cfg), "--report", str(tmp_path / "r")], capsys)
    assert {"pr", "froc", "history"} <= set(_figures(text))
    row = re.search(r"<td>all classes</td><td>(\d+)</td><td>([^<]+)</td><td>([^<]+)</td>", text)
    assert row and int(row.group(1)) > 0
    assert row.group(2) == format_value(metrics["map_50"]) and row.group(3) == format_value(metrics["froc"])
    images, captions = _grid(text, "detections")
    assert len(images) == 8 and images[0].shape[1] == 2 * 384 + 4  # truth | predictions
    assert all("true lesions" in c for c in captions)
    assert html.escape(SYNTHETIC_DATA_NOTICE) in text


def test_quality_report(tiny_quality_run: tuple[Path, Path], tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = tiny_quality_run
    metrics, text = _evaluate(["--config", str(cfg), "--report", str(tmp_path / "r")], capsys)
    assert {"roc", "confusion", "history"} <= set(_figures(text))
    assert metrics["quality_auc_ci95_low"] <= metrics["quality_auc"] <= metrics["quality_auc_ci95_high"]
    images, captions = _grid(text, "examples")
    assert len(images) == 12
    # Ungradable photographs first (6 of the 16 are), each caption with its truth, decision and reasons.
    assert all("truth ungradable" in c for c in captions[:6]) and all("truth gradable" in c for c in captions[6:])
    assert all("reasons:" in c and ("correct" in c or "wrong" in c) for c in captions)
