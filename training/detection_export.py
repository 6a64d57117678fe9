"""Export a trained lesion detector to ONNX, verify it against PyTorch, choose its thresholds, write its card.

Same contract as :mod:`training.export` (the grader's): opset 17 with the TorchScript exporter and a dynamic
batch axis; the card is written only after ONNX Runtime reproduces PyTorch within :data:`PARITY_ATOL`; every
number in the card comes from the exported file run through ONNX Runtime on the serving preprocessing, with
boxes mapped to original pixels by :func:`models.detection.to_original` — exactly what serving will report.

Operating points: per class, the score maximising lesion-level F1 (hits = detection centre inside a lesion
box, see :mod:`training.detection_metrics`) on the validation split (patients held out from training).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

from datasets.readers import FundusRecord
from models import preprocess
from models.architectures.detector import DetectorExport
from models.card import InputSpec, ModelCard, PreprocessingSpec, ScoreThreshold, TrainingProvenance, sha256_file
from models.detection import LESION_CLASSES, Lesion, decode, to_original
from training.data import load_rgb, split_by_patient
from training.detection import CANDIDATE_FLOOR, load_annotated
from training.detection_metrics import Truth, detection_metrics, f1_threshold, froc_curve
from training.export import OPSET, PARITY_ATOL, ParityError, intended_use, load_checkpoint, training_data

OUTPUTS = DetectorExport.output_names


def to_onnx(model: torch.nn.Module, size: int) -> bytes:
    """Serialise ``DetectorExport(model)`` to ONNX bytes: input ``image`` (dynamic batch), outputs
    ``heatmap``, ``size``, ``offset``."""
    buf = io.BytesIO()
    torch.onnx.export(
        DetectorExport(model).eval(), (torch.zeros(1, 3, size, size),), buf, input_names=["image"],
        output_names=list(OUTPUTS), opset_version=OPSET, dynamo=False,
        dynamic_axes={name: {0: "batch"} for name in ("image", *OUTPUTS)},
    )
    return buf.getvalue()


def check_parity(model: torch.nn.Module, onnx_bytes: bytes, inputs: np.ndarray) -> dict[str, float]:
    """Max abs differences of the three outputs between PyTorch and ONNX Runtime (size relative to its
    largest value); :class:`ParityError` when any exceeds :data:`PARITY_ATOL`."""
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = sess.run(list(OUTPUTS), {"image": inputs})
    with torch.inference_mode():
        ref = [t.numpy() for t in DetectorExport(model.eval())(torch.from_numpy(inputs))]
    diffs = {f"max_abs_{name}_diff": float(np.abs(g - r).max() / max(1.0, float(np.abs(r).max())) if name == "size"
                                            else np.abs(g - r).max())
             for name, g, r in zip(OUTPUTS, got, ref)}
    bad = {k: v for k, v in diffs.items() if not v <= PARITY_ATOL}
    if bad:
        raise ParityError(f"ONNX Runtime differs from PyTorch beyond {PARITY_ATOL:.0e}: {bad}")
    return diffs


def onnx_detections(onnx_bytes: bytes, records: list[FundusRecord], size: int, *,
                    recipe: preprocess.Recipe = preprocess.DISC_CROP) -> tuple[list[list[Lesion]], list[Truth]]:
    """Candidate detections (score ≥ the training candidate floor) of the exported model on ``records``
    preprocessed with ``recipe`` (the card's), in original pixels, with each record's lesions as truth."""
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    detections, truths = [], []
    for record in tqdm(records, desc="evaluate onnx", unit="img", leave=False):
        pre = preprocess.preprocess(load_rgb(record.image), size, recipe=recipe)
        outputs = dict(zip(OUTPUTS, sess.run(list(OUTPUTS), {"image": pre.tensor[None]})))
        (found,) = decode(outputs, input_size=size, thresholds=CANDIDATE_FLOOR)
        detections.append(to_original(found, pre.transform))
        lesions = record.lesions or ()
        truths.append(Truth(boxes=tuple(l.box for l in lesions), types=tuple(l.type for l in lesions)))
    return detections, truths


def choose_thresholds(detections: list[list[Lesion]], truths: list[Truth], chosen_on: str
                      ) -> tuple[ScoreThreshold, ...]:
    """Per class, the F1-maximising score threshold (0.5 when the data has no lesion of the class)."""
    out = []
    for cls in LESION_CLASSES:
        t, sens, fppi = f1_threshold(froc_curve(detections, truths, cls))
        out.append(ScoreThreshold(name=cls, threshold=min(1.0, max(0.0, t)),
                                  sensitivity=None if np.isnan(sens) else sens,
                                  fp_per_image=None if np.isnan(fppi) else fppi, chosen_on=chosen_on))
    return tuple(out)


def export(checkpoint: Path, out_dir: Path, *, test_root: Path | None, command: str, test_format: str | None = None,
           test_split: str | None = None) -> ModelCard:
    """Export the detector ``checkpoint`` into ``out_dir`` as ``<name>.onnx`` + ``<name>.card.json``."""
    model, cfg, ck = load_checkpoint(checkpoint)
    onnx_bytes = to_onnx(model, cfg.input_size)
    probe = np.random.default_rng(0).standard_normal((2, 3, cfg.input_size, cfg.input_size), dtype=np.float32)
    parity = check_parity(model, onnx_bytes, probe)
    print(f"parity: {parity}", file=sys.stderr)

    records = load_annotated(Path(cfg.data.train), cfg.data.format, verbose=False)
    _, val_items = split_by_patient(records, cfg.data.val_fraction, cfg.seed)
    thresholds = choose_thresholds(*onnx_detections(onnx_bytes, val_items, cfg.input_size),
                                   chosen_on=f"validation split ({len(val_items)} images of patients held out from "
                                             f"training): the score maximising lesion-level F1")
    metrics: dict[str, float] = {}
    metrics_data = "none (no held-out data given)"
    if test_root is not None:
        items = load_annotated(test_root, test_format or cfg.data.format, split=test_split)
        metrics = detection_metrics(*onnx_detections(onnx_bytes, items, cfg.input_size), LESION_CLASSES)
        metrics_data = (f"{test_root} ({len(items)} images, held out from training and validation; boxes in "
                        f"original pixels)")
    metrics.update(parity)

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{cfg.name}.onnx"
    onnx_path.write_bytes(onnx_bytes)
    card = ModelCard(
        name=cfg.name, version=cfg.version, task="lesion-detection", architecture=cfg.architecture,
        file=onnx_path.name, sha256=sha256_file(onnx_path), opset=OPSET,
        # The detector trains on DISC_CROP crops (training.detection): its card names that recipe.
        input=InputSpec(size=cfg.input_size, mean=preprocess.DISC_CROP.mean, std=preprocess.DISC_CROP.std),
        outputs=OUTPUTS,
        preprocessing=PreprocessingSpec(name=preprocess.DISC_CROP.name, version=preprocess.DISC_CROP.version),
        classes=LESION_CLASSES, score_thresholds=thresholds, metrics=metrics, metrics_data=metrics_data,
        training=TrainingProvenance(data=training_data(cfg), command=ck["command"],
                                    code_commit=ck["code_commit"], config=json.loads(ck["config"]),
                                    torch_version=ck["torch_version"], seconds=ck["seconds"],
                                    data_terms=cfg.data.terms),
        intended_use=intended_use(cfg),
        created=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    )
    card.save(out_dir / f"{cfg.name}.card.json")
    return card
