"""Refit the linear head of an exported image-quality model on real, human-graded photographs (frozen trunk).

    python -m training.quality_refit --card models/default/image-quality.card.json \\
        --real-quality ../shared/real-dev/eyeq_quality.csv --real-images ../shared/real-dev/eyepacs256 \\
        --synthetic data/synthetic-quality-train --test data/synthetic-quality-test --version 0.2.0 --out models/default

Why: a trunk trained on synthetic photographs already measures defocus, exposure and field, but its head reads
those features with the synthetic generator's thresholds, and on real photographs it calls almost everything
ungradable. Refitting only the head — a 576 → 7 logistic regression, seconds on a CPU — on real graded
photographs *together with* the synthetic ones keeps what the synthetic labels teach (the reasons, the
synthetic artefacts) and moves the gradable boundary to where people put it.

Data: the real photographs' grades (an EyeQ-style CSV: 0 Good, 1 Usable, 2 Reject;
:func:`training.quality_model.load_real_quality`) and a synthetic folder with ``quality.csv``. Both are split by
patient (:func:`training.quality_model.split_items`, ``--val-fraction``, ``--seed``): the head is fitted on the
training patients; the gradable threshold is chosen on the validation patients (real and synthetic together)
for an "ungradable" sensitivity of at least ``--min-sensitivity``. Reject's reasons are unknown and left out of
the loss (:data:`training.quality_model.UNKNOWN`); Good and Usable photographs teach every reason "absent".
The loss weighs both sources alike in total, whatever their sizes.

The new ONNX file is the old graph with the head's weights replaced (same input, same ``probabilities``
output); its card names the real data and its terms. The card's ``metrics`` are the exported file's on
``--test`` (held-out synthetic photographs, as for the synthetic-only model) plus ``real_val_*`` on the
validation patients' real photographs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from tqdm import tqdm

from models.card import ModelCard, OperatingPoint, TrainingProvenance, intended_use_for, recipe_of, sha256_file
from models.preprocess import preprocess
from training.data import load_rgb
from training.quality_metrics import choose_gradable_threshold, quality_metrics
from training.quality_model import (EYEQ_DATA, EYEQ_TERMS, QUALITY_CLASSES, QualityItem, load_quality,
                                    load_real_quality, split_items)
from training.cards import code_commit, utc_now


@dataclasses.dataclass(frozen=True)
class Head:
    """The graph's final ``Gemm``: its input (the pooled features), weight ``(7, F)`` and bias names."""

    features: str
    weight: str
    bias: str


def find_head(model: onnx.ModelProto) -> Head:
    """The last ``Gemm`` of the graph (global-average-pool → linear → sigmoid); ``ValueError`` when absent."""
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    if not gemms:
        raise ValueError("the image-quality graph has no Gemm head to refit")
    g = gemms[-1]
    return Head(features=g.input[0], weight=g.input[1], bias=g.input[2])


def features_and_probabilities(onnx_bytes: bytes, head: Head, items: Sequence[QualityItem], size: int,
                               card: ModelCard) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features ``(N, F)`` and probabilities ``(N, 7)`` of ``items`` through the serving preprocessing."""
    model = onnx.load_from_string(onnx_bytes)
    model.graph.output.append(onnx.helper.make_tensor_value_info(head.features, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    recipe = recipe_of(card)
    feats, probs = [], []
    for it in tqdm(items, desc="features", unit="img", leave=False):
        x = preprocess(load_rgb(it.record.image), size, recipe=recipe).tensor[None]
        p, f = sess.run(["probabilities", head.features], {"image": x})
        feats.append(f.reshape(-1))
        probs.append(p[0])
    return np.stack(feats).astype(np.float64), np.stack(probs)


def fit_head(x: np.ndarray, targets: np.ndarray, weights: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Multi-output logistic regression (L-BFGS) on standardised features; targets < 0 are left out. Returns
    ``(weight (7, F), bias (7,))`` for the *raw* features."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xt = torch.tensor((x - mu) / sd, dtype=torch.float64)
    yt = torch.tensor(targets, dtype=torch.float64)
    wt = torch.tensor(weights, dtype=torch.float64)[:, None] * (yt >= 0)
    w = torch.zeros(x.shape[1], yt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(yt.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt.clamp(min=0), reduction="none")
        loss = (bce * wt).sum() / wt.sum() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = w.detach().numpy() / sd[:, None]
    b_raw = b.detach().numpy() - mu @ w_raw
    return w_raw.T.copy(), b_raw


def replace_head(onnx_bytes: bytes, head: Head, weight: np.ndarray, bias: np.ndarray) -> bytes:
    """The graph with the head's initialisers replaced (same shapes, float32)."""
    model = onnx.load_from_string(onnx_bytes)
    for init in model.graph.initializer:
        new = {head.weight: weight, head.bias: bias}.get(init.name)
        if new is not None:
            old = numpy_helper.to_array(init)
            if old.shape != new.shape:
                raise ValueError(f"{init.name}: refitted shape {new.shape} differs from the graph's {old.shape}")
            init.CopyFrom(numpy_helper.from_array(new.astype(np.float32), init.name))
    return model.SerializeToString()


def _targets(items: Sequence[QualityItem]) -> np.ndarray:
    return np.stack([it.targets for it in items])


def _balance(items: Sequence[QualityItem]) -> np.ndarray:
    """Per-item loss weights giving real and synthetic photographs the same total weight."""
    real = np.array([it.truth is None for it in items])
    w = np.ones(len(items))
    if real.any() and (~real).any():
        w[real] = (~real).sum() / real.sum()
    return w


def refit(card_path: Path, *, real_quality: Path, real_images: Path, real_format: str, synthetic: Path,
          test: Path | None, version: str, out_dir: Path, val_fraction: float, seed: int, min_sensitivity: float,
          l2: float, command: str) -> ModelCard:
    """Refit, export and write the card (see the module docstring); returns the new card."""
    t0 = time.perf_counter()
    card = ModelCard.load(card_path)
    onnx_bytes = (card_path.parent / card.file).read_bytes()
    head = find_head(onnx.load_from_string(onnx_bytes))
    size = card.input.size
    real = load_real_quality(real_quality, real_images, real_format)
    synth = load_quality(synthetic, "synthetic")
    train, val = split_items([*synth, *real], val_fraction, seed)
    x_train, _ = features_and_probabilities(onnx_bytes, head, train, size, card)
    weight, bias = fit_head(x_train, _targets(train), _balance(train), l2)
    new_bytes = replace_head(onnx_bytes, head, weight, bias)

    _, p_val = features_and_probabilities(new_bytes, head, val, size, card)
    t_val = _targets(val)
    op = choose_gradable_threshold(p_val[:, 0], t_val[:, 0], min_sensitivity)
    metrics: dict[str, float] = {}
    metrics_data = "none (no held-out synthetic data given)"
    if test is not None:
        test_items = load_quality(test, "synthetic")
        _, p_test = features_and_probabilities(new_bytes, head, test_items, size, card)
        metrics = quality_metrics(p_test, _targets(test_items), QUALITY_CLASSES, op.threshold)
        metrics_data = (f"{test} ({len(test_items)} synthetic images, held out); real_val_*: the validation "
                        f"patients' photographs of {real_quality}")
    is_real = np.array([it.truth is None for it in val])
    for k, v in quality_metrics(p_val[is_real], t_val[is_real], QUALITY_CLASSES, op.threshold).items():
        metrics[f"real_val_{k}"] = v

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / card.file
    onnx_path.write_bytes(new_bytes)
    n_real = sum(it.truth is None for it in train)
    config = {"base_model": card.tag, "real_quality": str(real_quality), "real_images": str(real_images),
              "synthetic": str(synthetic), "val_fraction": val_fraction, "seed": seed, "l2": l2,
              "min_sensitivity": min_sensitivity, "trunk": dict(card.training.config)}
    new = card.model_copy(update=dict(
        version=version, sha256=sha256_file(onnx_path),
        operating_points=(OperatingPoint(
            name="gradable", threshold=op.threshold, sensitivity=op.sensitivity, specificity=op.specificity,
            chosen_on=f"validation patients ({len(val)} photographs, real and synthetic, held out from the refit): "
                      f"gradable iff p_gradable >= threshold; best Youden index with 'ungradable' sensitivity "
                      f">= {min_sensitivity}"),),
        metrics=metrics, metrics_data=metrics_data,
        training=TrainingProvenance(
            data=(f"trunk: {card.training.data}; head: {n_real} real EyePACS photographs with EyeQ grades "
                  f"({real_quality}, Good+Usable gradable, Reject ungradable) and {len(train) - n_real} synthetic "
                  f"({synthetic})"),
            command=command, code_commit=code_commit(), config=config, torch_version=str(torch.__version__),
            seconds=time.perf_counter() - t0, data_terms=EYEQ_TERMS),
        intended_use=intended_use_for(False, data=f"{EYEQ_DATA} (its last layer)",
                                      terms=EYEQ_TERMS),
        created=utc_now(),
    ))
    new.save(out_dir / card_path.name)
    return new


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.quality_refit", description=__doc__.split("\n")[0])
    p.add_argument("--card", type=Path, default=Path("models/default/image-quality.card.json"))
    p.add_argument("--real-quality", type=Path, default=Path("../shared/real-dev/eyeq_quality.csv"))
    p.add_argument("--real-images", type=Path, default=Path("../shared/real-dev/eyepacs256"))
    p.add_argument("--real-format", default="eyepacs")
    p.add_argument("--synthetic", type=Path, default=Path("data/synthetic-quality-train"))
    p.add_argument("--test", type=Path, default=Path("data/synthetic-quality-test"))
    p.add_argument("--version", required=True)
    p.add_argument("--out", type=Path, default=Path("models/default"))
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-sensitivity", type=float, default=0.90)
    p.add_argument("--l2", type=float, default=1e-3)
    args = p.parse_args(argv)
    command = "python -m training.quality_refit " + " ".join(sys.argv[1:] if argv is None else argv)
    card = refit(args.card, real_quality=args.real_quality, real_images=args.real_images,
                 real_format=args.real_format, synthetic=args.synthetic,
                 test=args.test if args.test and args.test.is_dir() else None, version=args.version,
                 out_dir=args.out, val_fraction=args.val_fraction, seed=args.seed,
                 min_sensitivity=args.min_sensitivity, l2=args.l2, command=command)
    print(json.dumps({"threshold": card.operating_points[0].threshold, **card.metrics}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
