"""Static int8 quantization of an exported model (ONNX Runtime, QDQ, per-channel) behind a clinical-metric gate.

    python -m training quantize --card models/default/dr-grader.card.json --data data/synthetic-test \\
        --format eyepacs --out runs/int8

1. Calibration: ``--calibration DIR`` (every JPEG/PNG/DICOM under it) or, by default, ``--calibration-count``
   synthetic photographs generated with ``--calibration-seed`` (a seed no training or test set uses), so the
   calibration images are held out from the test set the gate reads. Each goes through
   :func:`models.preprocess.preprocess` with the parent card's recipe, exactly as serving feeds the model.
2. ``onnxruntime.quantization.quantize_static``: QDQ format, per-channel int8 weights, uint8 activations
   with ``reduce_range`` (7-bit weights: AVX2 without VNNI computes u8 x s8 with a 16-bit intermediate that
   saturates at full range), MinMax calibration. The graph is pre-processed first (shape inference and
   fusion, ``quant_pre_process``), as ONNX Runtime recommends.
3. The gate: the fp32 parent and the int8 model are evaluated on the same held-out set (``--data``), with
   the same code the export uses (:func:`training.tasks.grader.onnx_evaluate` for graders,
   :func:`training.tasks.detector.onnx_detections` for detectors). Quadratic weighted kappa may drop by at
   most ``--max-qwk-drop`` (0.01) for a grader, mAP@0.5 by at most ``--max-map-drop`` (0.02) for a detector;
   beyond that :class:`QuantizationRefused` is raised (the CLI exits 2 with the reason) and nothing is written.
4. Otherwise ``<name>-int8.onnx`` and ``<name>-int8.card.json`` are written to ``--out``: a separate model
   version (``<parent version>-int8``) with its own sha256, the int8 model's own metrics, and a
   ``quantization`` block (method, calibration data, the parent's version and sha256, both metric sets and
   their deltas, the gate, fp32 vs int8 latency on this machine). ``python -m training register --card ...``
   puts it in the model store; ``FOVEA_GRADER_TAG=dr-grader:<version>-int8`` makes the service use it.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import preprocess
from models.card import ModelCard, Quantization, recipe_of, sha256_file
from models.store import load_verified
from analysis.runtime import latency_samples
from training.cards import utc_now

MAX_QWK_DROP = 0.01
MAX_MAP_DROP = 0.02
#: Default calibration images: generated with a seed the training (1) and test (2) recipes do not use.
CALIBRATION_SEED = 11
CALIBRATION_COUNT = 64
CALIBRATION_SIZE = 512
METHOD = ("ONNX Runtime static quantization, QDQ format, per-channel int8 weights (reduce_range: 7-bit), "
          "uint8 activations, MinMax calibration, after quant_pre_process")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".dcm"}


class QuantizationRefused(ValueError):
    """The int8 model lost more of the clinical metric than the gate allows; nothing was written."""


@dataclass(frozen=True)
class GateResult:
    """The gate's numbers: the metric it reads, fp32 and int8 metric sets, and the allowed drop."""

    metric: str
    fp32: dict[str, float]
    int8: dict[str, float]
    max_drop: float

    @property
    def drop(self) -> float:
        return self.fp32[self.metric] - self.int8[self.metric]

    @property
    def passed(self) -> bool:
        return bool(self.drop <= self.max_drop)


class _Reader:
    """``CalibrationDataReader``: one preprocessed ``(1, 3, S, S)`` tensor per calibration image."""

    def __init__(self, paths: Sequence[Path], size: int, input_name: str,
                 recipe: preprocess.Recipe = preprocess.DISC_CROP) -> None:
        self._paths, self._size, self._name, self._recipe = list(paths), size, input_name, recipe
        self._it: Iterator[Path] = iter(self._paths)

    def get_next(self) -> dict[str, np.ndarray] | None:
        from training.data import load_rgb

        path = next(self._it, None)
        if path is None:
            return None
        return {self._name: preprocess.preprocess(load_rgb(path), self._size, recipe=self._recipe).tensor[None]}

    def rewind(self) -> None:
        self._it = iter(self._paths)


def calibration_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (sorted); ``ValueError`` if there is none."""
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no calibration images (JPEG/PNG/DICOM) under {folder}")
    return paths


def quantize_bytes(onnx_bytes: bytes, calibration: Sequence[Path], size: int, input_name: str, *,
                   recipe: preprocess.Recipe = preprocess.DISC_CROP) -> bytes:
    """The QDQ int8 model of ``onnx_bytes`` calibrated on ``calibration`` through ``recipe`` (module
    docstring, step 2)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="fovea-quant-") as tmp:
        src, pre, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_bytes)
        quant_pre_process(str(src), str(pre))
        quantize_static(str(pre), str(dst), _Reader(calibration, size, input_name, recipe),
                        quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        return dst.read_bytes()


def evaluate(card: ModelCard, onnx_bytes: bytes, data: Path, fmt: str, split: str | None) -> dict[str, float]:
    """The card task's held-out metrics of ``onnx_bytes`` on ``data`` (the export's own evaluation code)."""
    if card.task == "dr-grading":
        from training.data import load_graded
        from training.tasks.grader import onnx_evaluate
        from training.metrics import grader_metrics

        op = card.operating_point("referable_dr")
        ev = onnx_evaluate(onnx_bytes, load_graded(data, fmt, split=split, verbose=False), card.input.size,
                           recipe=recipe_of(card))
        return grader_metrics(ev.probs, ev.labels, op.threshold if op else None)
    if card.task == "lesion-detection":
        from models.detection import LESION_CLASSES
        from training.detection import load_annotated
        from training.tasks.detector import onnx_detections
        from training.detection_metrics import detection_metrics

        records = load_annotated(data, fmt, split=split, verbose=False)
        return detection_metrics(*onnx_detections(onnx_bytes, records, card.input.size, recipe=recipe_of(card)),
                                 LESION_CLASSES)
    raise ValueError(f"{card.tag}: quantization is gated on QWK (dr-grading) or mAP (lesion-detection), "
                     f"not on task {card.task}")


def gate(card: ModelCard, fp32: dict[str, float], int8: dict[str, float], *, max_qwk_drop: float = MAX_QWK_DROP,
         max_map_drop: float = MAX_MAP_DROP) -> GateResult:
    """The gate for the card's task (grader: QWK; detector: mAP@0.5)."""
    if card.task == "dr-grading":
        return GateResult("quadratic_weighted_kappa", fp32, int8, max_qwk_drop)
    return GateResult("map_50", fp32, int8, max_map_drop)


def latency_ms(onnx_bytes: bytes, size: int, runs: int = 20) -> float:
    """Median batch-1 CPU latency with the service's session options, after warm-up."""
    return float(statistics.median(latency_samples(onnx_bytes, size, runs=runs, providers=["CPUExecutionProvider"])))


def quantize(card_path: Path, data: Path, out_dir: Path, *, fmt: str, split: str | None = None,
             calibration: Path | None = None, calibration_count: int = CALIBRATION_COUNT,
             calibration_seed: int = CALIBRATION_SEED, calibration_size: int = CALIBRATION_SIZE,
             max_qwk_drop: float = MAX_QWK_DROP, max_map_drop: float = MAX_MAP_DROP, command: str = "") -> ModelCard:
    """Quantize the verified model of ``card_path``, gate it on ``data``, write the int8 model + card (module
    docstring); return the new card. :class:`QuantizationRefused` when the gate fails (nothing written)."""
    parent, onnx_bytes = load_verified(card_path)
    recipe = recipe_of(parent)
    with tempfile.TemporaryDirectory(prefix="fovea-calib-") as tmp:
        if calibration is None:
            from datasets.synthetic.writer import generate

            generate(Path(tmp), count=calibration_count, seed=calibration_seed, size=calibration_size, progress=False)
            images = calibration_images(Path(tmp))
            described = (f"{len(images)} synthetic photographs ({calibration_size} px, generator seed "
                         f"{calibration_seed}; held out from the test set) through {recipe.name} "
                         f"v{recipe.version}")
        else:
            images = calibration_images(calibration)
            described = f"{len(images)} images under {calibration} through {recipe.name} v{recipe.version}"
        print(f"calibrating on {described}", file=sys.stderr)
        int8_bytes = quantize_bytes(onnx_bytes, images, parent.input.size, parent.input.name, recipe=recipe)
    fp32_metrics = evaluate(parent, onnx_bytes, data, fmt, split)
    int8_metrics = evaluate(parent, int8_bytes, data, fmt, split)
    result = gate(parent, fp32_metrics, int8_metrics, max_qwk_drop=max_qwk_drop, max_map_drop=max_map_drop)
    if not result.passed:
        raise QuantizationRefused(
            f"int8 {parent.name} refused: {result.metric} {result.fp32[result.metric]:.4f} (fp32) -> "
            f"{result.int8[result.metric]:.4f} (int8) on {data}, a drop of {result.drop:.4f} > the allowed "
            f"{result.max_drop:g}; no model or card written (keep fp32, or calibrate on more representative images)")
    lat = {"fp32": latency_ms(onnx_bytes, parent.input.size), "int8": latency_ms(int8_bytes, parent.input.size)}
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{parent.name}-int8"
    onnx_path = out_dir / f"{stem}.onnx"
    onnx_path.write_bytes(int8_bytes)
    deltas = {k: int8_metrics[k] - fp32_metrics[k] for k in fp32_metrics if k in int8_metrics and k != "n"}
    card = parent.model_copy(update={
        "version": f"{parent.version}-int8", "file": onnx_path.name, "sha256": sha256_file(onnx_path),
        "metrics": int8_metrics,
        "metrics_data": f"{data} ({fmt}{', ' + split if split else ''}; the same held-out set for fp32 and int8)",
        "quantization": Quantization(
            method=METHOD, calibration=described, parent_version=parent.version, parent_sha256=parent.sha256,
            metrics_fp32=fp32_metrics, metrics_int8=int8_metrics, metric_deltas=deltas,
            gate=f"{result.metric} drop <= {result.max_drop:g} (was {result.drop:.4f})",
            latency_ms=lat, command=command),
        "created": utc_now(),
    })
    card = ModelCard.model_validate(card.model_dump())  # re-validate the copy (model_copy does not)
    card.save(out_dir / f"{stem}.card.json")
    return card
