"""``python -m training export``: the one export path. A checkpoint becomes ``<name>.onnx`` and
``<name>.card.json`` (and, asked to, a model in the BentoML store) for every task.

1. The task's export graph (:meth:`~training.tasks.base.Task.export_module`) is serialised at opset 17 with the
   TorchScript exporter (``dynamo=False``: one self-contained file with a dynamic batch axis, no onnxscript;
   DESIGN.md measured both exporters as equivalent for classifiers, and torchvision-style detectors export
   only this way).
2. ONNX Runtime must reproduce PyTorch on a random probe within :data:`PARITY_ATOL` for every checked output
   (:class:`~training.tasks.base.OutputSpec`), else :class:`ParityError` and nothing is written.
3. The task measures the exported file itself through ONNX Runtime on the serving preprocessing: operating
   points on the validation split, metrics on the held-out data (:meth:`~training.tasks.base.Task.measure`).
4. The card (:func:`training.cards.build_card`) carries those and the parity differences; the training curves
   travel with the model as ``<name>.history.png``.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from models.card import ModelCard
from training.cards import build_card
from training.config import TrainConfig
from training.checkpoint import load_checkpoint
from training.tasks import HeldOut, Task, get_task

PARITY_ATOL = 1e-4
#: ``data`` settings read at export rather than training (:func:`export`'s ``data_overrides``).
EXPORT_DATA_SETTINGS = ("negatives", "negatives_fp_per_image", "negatives_terms")
#: Top-level settings read at export rather than training (:func:`export`'s ``settings``): the graph's
#: test-time views, and the version the exported artifact is registered under (the same weights exported
#: with other views are another model; the card keeps the training config, version included, as trained).
EXPORT_SETTINGS = ("version", "test_time_views")
OPSET = 17

__all__ = ["OPSET", "PARITY_ATOL", "ParityError", "check_parity", "export", "load_checkpoint", "to_onnx"]


class ParityError(RuntimeError):
    """ONNX Runtime disagrees with PyTorch beyond tolerance: the export is not trustworthy."""


def to_onnx(task: Task, model: torch.nn.Module, cfg: TrainConfig) -> bytes:
    """Serialise ``task``'s export graph of ``model`` under ``cfg`` to ONNX bytes: input ``image``
    ``(N, 3, S, S)`` (``S = cfg.input_size``) with a dynamic batch axis, the task's outputs."""
    buf = io.BytesIO()
    names = list(task.output_names)
    size = cfg.input_size
    torch.onnx.export(
        task.export_module(model, cfg).eval(), (torch.zeros(1, 3, size, size),), buf, input_names=["image"],
        output_names=names, opset_version=OPSET, dynamo=False,
        dynamic_axes={name: {0: "batch"} for name in ("image", *names)},
    )
    return buf.getvalue()


def check_parity(task: Task, model: torch.nn.Module, cfg: TrainConfig, onnx_bytes: bytes,
                 inputs: np.ndarray) -> dict[str, float]:
    """Per output, the difference between ONNX Runtime and PyTorch on ``inputs`` (the output's
    :class:`~training.tasks.base.OutputSpec` rule), keyed by its parity metric; :class:`ParityError` when a
    checked one exceeds :data:`PARITY_ATOL`."""
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = sess.run(list(task.output_names), {"image": inputs})
    with torch.inference_mode():
        ref = task.export_module(model.eval(), cfg).eval()(torch.from_numpy(inputs))
    ref = [r.numpy() for r in (ref if isinstance(ref, (tuple, list)) else (ref,))]
    diffs: dict[str, float] = {}
    for spec, g, r in zip(task.outputs, got, ref):
        scale = {"abs": 1.0, "max": float(np.abs(r).max()) + 1e-12, "max1": max(1.0, float(np.abs(r).max()))}
        diff = float(np.abs(g - r).max()) / scale[spec.scale]
        diffs[spec.parity_metric] = diff
        if spec.checked and not diff <= PARITY_ATOL:
            raise ParityError(f"ONNX Runtime {spec.name} differ from PyTorch by {diff:.2e} (> {PARITY_ATOL:.0e})")
    return diffs


def export(checkpoint: Path, out_dir: Path, *, test_root: Path | None, command: str = "",
           test_format: str | None = None, test_split: str | None = None, held_out_validation: bool = False,
           register: bool = False, data_overrides: dict[str, Any] | None = None,
           settings: dict[str, Any] | None = None) -> ModelCard:
    """Export ``checkpoint`` into ``out_dir`` as ``<name>.onnx`` + ``<name>.card.json``; return the card.

    The held-out data at ``test_root`` is read in layout ``test_format`` (default: the training config's) and
    split ``test_split`` (see :func:`training.data.held_out_split`). With ``held_out_validation`` (and no
    ``test_root``) the card's metrics are measured on the patient-disjoint validation split training held out,
    recomputed from the checkpoint's config, and ``metrics_data`` says so (a task that allows it). Neither:
    the card has no held-out metrics. ``register`` imports the result into the BentoML model store.
    ``data_overrides``: ``data`` settings that belong to the export step (:data:`EXPORT_DATA_SETTINGS`, e.g. the
    real photographs the detector's thresholds are capped on), taken from the config given to export over the
    checkpoint's. ``settings``: the top-level ones (:data:`EXPORT_SETTINGS`), likewise."""
    if held_out_validation and test_root is not None:
        raise ValueError("give held-out data or measure on the validation split, not both")
    model, cfg, ck = load_checkpoint(checkpoint)
    if data_overrides:
        unknown = set(data_overrides) - set(EXPORT_DATA_SETTINGS)
        if unknown:
            raise ValueError(f"not export settings: {sorted(unknown)}")
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data_overrides))
    if settings:
        unknown = set(settings) - set(EXPORT_SETTINGS)
        if unknown:
            raise ValueError(f"not export settings: {sorted(unknown)}")
        trained = cfg
        cfg = dataclasses.replace(cfg, **settings)  # __post_init__ checks them again
        if cfg.test_time_views != trained.test_time_views and cfg.version == trained.version:
            raise ValueError(f"exporting with test_time_views {cfg.test_time_views} (trained with "
                             f"{trained.test_time_views}) makes another model than {cfg.name}:{cfg.version}: give "
                             f"it another version in the config")
    task = get_task(cfg.task)
    task.check_config(cfg)
    onnx_bytes = to_onnx(task, model, cfg)
    probe = np.random.default_rng(0).standard_normal((2, 3, cfg.input_size, cfg.input_size), dtype=np.float32)
    parity = check_parity(task, model, cfg, onnx_bytes, probe)
    print(f"parity: {parity}", file=sys.stderr)

    held_out = None
    if test_root is not None or held_out_validation:
        held_out = HeldOut(test_root, test_format or cfg.data.format, test_split)
    measured = task.measure(onnx_bytes, cfg, ck, held_out, out_dir=out_dir)
    measured.metrics.update(parity)

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{cfg.name}.onnx"
    onnx_path.write_bytes(onnx_bytes)
    card = build_card(task, cfg, ck, onnx_path=onnx_path, opset=OPSET, measured=measured)
    card_path = out_dir / f"{cfg.name}.card.json"
    card.save(card_path)
    history = checkpoint.parent / "history.png"
    if history.is_file():
        shutil.copyfile(history, out_dir / f"{cfg.name}.history.png")
    if register:
        from models.store import import_model

        print(import_model(card_path), file=sys.stderr)
    return card
