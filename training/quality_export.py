"""Export a trained image-quality model to ONNX, verify it against PyTorch, choose its threshold, write its card.

Same contract as :mod:`training.export` (the grader's): opset 17 with the TorchScript exporter, input ``image``
with a dynamic batch axis; the card is written only after ONNX Runtime reproduces PyTorch within
:data:`~training.export.PARITY_ATOL`. The graph has one output, ``probabilities`` ``(N, len(classes))``: the
sigmoid is part of the graph, so serving reads probabilities named by the card's ``classes`` (``gradable``
first, then the reasons of :data:`~training.quality_model.REASON_GROUPS`).

The ``gradable`` operating point (gradable iff ``p_gradable >= threshold``, see
:mod:`training.quality_metrics`) is chosen with the exported file on the validation split (patients held out
from training) for an "ungradable" sensitivity of at least ``ungradable_min_sensitivity``; the card's metrics
are those of the exported file through ONNX Runtime on held-out data, with the serving preprocessing.
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
from torch import nn
from tqdm import tqdm

from models import preprocess
from models.card import (InputSpec, ModelCard, OperatingPoint, PreprocessingSpec, TrainingProvenance, intended_use_for,
                         sha256_file)
from training.data import is_synthetic_folder, load_rgb
from training.export import OPSET, PARITY_ATOL, ParityError, load_checkpoint
from training.quality_metrics import choose_gradable_threshold, quality_metrics
from training.quality_model import (EYEQ_DATA, EYEQ_TERMS, QUALITY_CLASSES, QualityItem, check_config, load_quality,
                                    load_training_items, split_items)

OUTPUTS = ("probabilities",)


class QualityExport(nn.Module):
    """Export wrapper: ``image`` → ``probabilities`` (sigmoid of the logits)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x))


def to_onnx(model: nn.Module, size: int) -> bytes:
    """Serialise ``QualityExport(model)`` to ONNX bytes: input ``image`` (dynamic batch), output ``probabilities``."""
    buf = io.BytesIO()
    torch.onnx.export(
        QualityExport(model).eval(), (torch.zeros(1, 3, size, size),), buf, input_names=["image"],
        output_names=list(OUTPUTS), opset_version=OPSET, dynamo=False,
        dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
    )
    return buf.getvalue()


def check_parity(model: nn.Module, onnx_bytes: bytes, inputs: np.ndarray) -> dict[str, float]:
    """Max abs difference of the probabilities between PyTorch and ONNX Runtime; :class:`ParityError` when it
    exceeds :data:`PARITY_ATOL`."""
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (got,) = sess.run(list(OUTPUTS), {"image": inputs})
    with torch.inference_mode():
        ref = QualityExport(model.eval())(torch.from_numpy(inputs)).numpy()
    diff = float(np.abs(got - ref).max())
    if not diff <= PARITY_ATOL:
        raise ParityError(f"ONNX Runtime probabilities differ from PyTorch by {diff:.2e} (> {PARITY_ATOL:.0e})")
    return {"max_abs_probability_diff": diff}


def onnx_probabilities(onnx_bytes: bytes, items: list[QualityItem], size: int,
                       recipe: preprocess.Recipe = preprocess.DISC_CROP) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of the exported model on ``items`` (serving preprocessing, ``recipe``) and their targets."""
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    probs = []
    for it in tqdm(items, desc="evaluate onnx", unit="img", leave=False):
        x = preprocess.preprocess(load_rgb(it.record.image), size, recipe=recipe).tensor[None]
        (p,) = sess.run(list(OUTPUTS), {"image": x})
        probs.append(p[0])
    return np.stack(probs), np.stack([it.targets for it in items])


def export(checkpoint: Path, out_dir: Path, *, test_root: Path | None, command: str, test_format: str | None = None,
           test_split: str | None = None) -> ModelCard:
    """Export the quality ``checkpoint`` into ``out_dir`` as ``<name>.onnx`` + ``<name>.card.json``."""
    model, cfg, ck = load_checkpoint(checkpoint)
    check_config(cfg)
    onnx_bytes = to_onnx(model, cfg.input_size)
    probe = np.random.default_rng(0).standard_normal((2, 3, cfg.input_size, cfg.input_size), dtype=np.float32)
    parity = check_parity(model, onnx_bytes, probe)
    print(f"parity: {parity}", file=sys.stderr)

    recipe = preprocess.recipe_for(cfg.preprocessing)
    items = load_training_items(cfg)
    _, val_items = split_items(items, cfg.data.val_fraction, cfg.seed)
    val_probs, val_targets = onnx_probabilities(onnx_bytes, val_items, cfg.input_size, recipe)
    n_bad = int((val_targets[:, 0] < 0.5).sum())
    if not 0 < n_bad < len(val_items):  # a threshold needs both kinds of photograph to be chosen on
        raise ValueError(f"the validation split of {cfg.data.train} has {n_bad} ungradable of {len(val_items)} "
                         f"photographs: it needs both kinds (generate with a higher p_degraded or more images)")
    op = choose_gradable_threshold(val_probs[:, 0], val_targets[:, 0], cfg.ungradable_min_sensitivity)
    metrics: dict[str, float] = {}
    metrics_data = "none (no held-out data given)"
    if test_root is not None:
        test_items = load_quality(test_root, test_format or cfg.data.format, split=test_split)
        probs, targets = onnx_probabilities(onnx_bytes, test_items, cfg.input_size, recipe)
        metrics = quality_metrics(probs, targets, QUALITY_CLASSES, op.threshold)
        metrics_data = f"{test_root} ({len(test_items)} images, held out from training and validation)"
    metrics.update(parity)

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{cfg.name}.onnx"
    onnx_path.write_bytes(onnx_bytes)
    card = ModelCard(
        name=cfg.name, version=cfg.version, task="image-quality", architecture=cfg.architecture,
        file=onnx_path.name, sha256=sha256_file(onnx_path), opset=OPSET,
        input=InputSpec(size=cfg.input_size, mean=recipe.mean, std=recipe.std),
        outputs=OUTPUTS,
        preprocessing=PreprocessingSpec(name=recipe.name, version=recipe.version),
        classes=QUALITY_CLASSES,
        operating_points=(OperatingPoint(
            name="gradable", threshold=op.threshold, sensitivity=op.sensitivity, specificity=op.specificity,
            chosen_on=f"validation split ({len(val_items)} images of patients held out from training): gradable iff "
                      f"p_gradable >= threshold; sensitivity/specificity of 'ungradable', best Youden index with "
                      f"sensitivity >= {cfg.ungradable_min_sensitivity}"),),
        metrics=metrics, metrics_data=metrics_data,
        training=TrainingProvenance(data=f"{cfg.data.train} ({cfg.data.format})" + (
                                        f" + {cfg.data.real_quality} grades of {cfg.data.real_images}"
                                        if cfg.data.real_quality else ""), command=ck["command"],
                                    code_commit=ck["code_commit"], config=json.loads(ck["config"]),
                                    torch_version=ck["torch_version"], seconds=ck["seconds"],
                                    data_terms=EYEQ_TERMS if cfg.data.real_quality else cfg.data.terms),
        intended_use=(intended_use_for(False, data=f"{EYEQ_DATA} and {cfg.data.train} ({cfg.data.format})",
                                       terms=EYEQ_TERMS)
                      if cfg.data.real_quality else intended_use_for(is_synthetic_folder(cfg.data.train, cfg.data.format))),
        created=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    )
    card.save(out_dir / f"{cfg.name}.card.json")
    return card
