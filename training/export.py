"""Export a trained grader to ONNX with in-graph CAM, verify it against PyTorch, measure it, write its card.

The card is written only after ONNX Runtime reproduces PyTorch's logits within :data:`PARITY_ATOL`; the
held-out metrics in the card are those of the exported ONNX file itself, run through ONNX Runtime on the
same preprocessing serving uses: QWK and referable AUC with percentile bootstrap 95 % intervals, and — when
the held-out records carry lesion boxes (e.g. ``--format synthetic``) — the pointing game of the in-graph
CAM on the referable images (:func:`training.metrics.pointing_game`).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import pickle
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

from models import preprocess
from models.grading import softmax
from models.architectures import build
from models.architectures.classifier import WithCam
from models.card import (ICDR_LABELS, InputSpec, ModelCard, OperatingPoint, PreprocessingSpec, TrainingProvenance,
                         intended_use_for, sha256_file)
from training.config import TrainConfig, config_from_dict
from datasets.readers import FundusRecord
from training.data import is_synthetic_folder, load_graded, load_rgb, split_by_patient
from models.grading import REFERABLE_MIN_GRADE, referable_probability
from training.metrics import (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, POINTING_TOLERANCE, cam_peak, choose_operating_point,
                              confusion_matrix, field_centre, grader_intervals, grader_metrics, pointing_game,
                              pointing_hit)
from training.report import plot_confusion

PARITY_ATOL = 1e-4
OPSET = 17


class ParityError(RuntimeError):
    """ONNX Runtime disagrees with PyTorch beyond tolerance: the export is not trustworthy."""


def load_checkpoint(path: Path) -> tuple[torch.nn.Module, TrainConfig, dict]:
    """Rebuild the model from a checkpoint written by :func:`training.train.main` (weights only, no pickle).
    ``ValueError`` naming the file when it is not such a checkpoint (truncated, another format, foreign)."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, RuntimeError, pickle.UnpicklingError, OSError) as exc:
        raise ValueError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0][:200]}") from exc
    if not isinstance(ck, dict) or "config" not in ck or "model" not in ck:
        raise ValueError(f"{path} is not a Fovea training checkpoint (no config/model entries)")
    cfg = config_from_dict(json.loads(ck["config"]))
    model = build(cfg.architecture, num_classes=cfg.num_classes, dropout=cfg.dropout)
    model.load_state_dict(ck["model"])
    return model.eval(), cfg, ck


def to_onnx(model: torch.nn.Module, size: int) -> bytes:
    """Serialise ``WithCam(model)`` to ONNX bytes: input ``image`` (dynamic batch), outputs ``logits``, ``cam``."""
    buf = io.BytesIO()
    # dynamo=False: the TorchScript exporter gives one self-contained file at opset 17 with a dynamic batch
    # axis and needs no onnxscript; DESIGN.md measured both exporters as equivalent for classifiers.
    torch.onnx.export(
        WithCam(model).eval(), (torch.zeros(1, 3, size, size),), buf, input_names=["image"],
        output_names=["logits", "cam"], opset_version=OPSET, dynamo=False,
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "cam": {0: "batch"}},
    )
    return buf.getvalue()


def check_parity(model: torch.nn.Module, onnx_bytes: bytes, inputs: np.ndarray) -> dict[str, float]:
    """Max abs differences of logits and CAM between PyTorch and ONNX Runtime; :class:`ParityError` if the
    logits differ by more than :data:`PARITY_ATOL`."""
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    logits, cam = sess.run(["logits", "cam"], {"image": inputs})
    with torch.inference_mode():
        ref_logits, ref_cam = WithCam(model.eval())(torch.from_numpy(inputs))
    d_logits = float(np.abs(logits - ref_logits.numpy()).max())
    d_cam = float(np.abs(cam - ref_cam.numpy()).max() / (np.abs(ref_cam.numpy()).max() + 1e-12))
    if not d_logits <= PARITY_ATOL:
        raise ParityError(f"ONNX Runtime logits differ from PyTorch by {d_logits:.2e} (> {PARITY_ATOL:.0e})")
    return {"max_abs_logit_diff": d_logits, "max_rel_cam_diff": d_cam}


@dataclass(frozen=True)
class OnnxEvaluation:
    """What the exported model did on graded records: ``probs`` ``(N, 5)``, true ``labels`` ``(N,)``, and one
    pointing-game hit/miss per referable record with at least one lesion box (``pointing_hits``), and whether
    the centre of the fundus field would have hit on those records (``centre_hits``, the baseline)."""

    probs: np.ndarray
    labels: np.ndarray
    pointing_hits: list[bool]
    centre_hits: list[bool]


def onnx_evaluate(onnx_bytes: bytes, items: list[FundusRecord], size: int, *,
                  recipe: preprocess.Recipe = preprocess.DISC_CROP) -> OnnxEvaluation:
    """Run the exported model through ONNX Runtime on the graded records ``items`` with the serving
    preprocessing (``recipe``: the model card's, :func:`models.card.recipe_of`); play the pointing game on the
    referable ones that have lesion boxes: the CAM of the grade
    serving shows (:func:`analysis.pipeline.saliency_target`) must peak within :data:`POINTING_TOLERANCE`
    of the input side (in original pixels) of a lesion."""
    from analysis.pipeline import saliency_target  # the serving rule itself; service imports no torch

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    probs, hits, centre = [], [], []
    for record in tqdm(items, desc="evaluate onnx", unit="img", leave=False):
        pre = preprocess.preprocess(load_rgb(record.image), size, recipe=recipe)
        logits, cam = sess.run(["logits", "cam"], {"image": pre.tensor[None]})
        p = softmax(logits[0])
        probs.append(p)
        if record.grade is not None and record.grade >= REFERABLE_MIN_GRADE and record.lesions:
            target = saliency_target(int(np.argmax(p)), p)
            tolerance = POINTING_TOLERANCE * size * pre.transform.scale  # model pixels -> original pixels
            boxes = [b.box for b in record.lesions]
            hits.append(pointing_hit(cam_peak(cam[0, target], pre.transform), boxes, tolerance))
            centre.append(pointing_hit(field_centre(pre.transform), boxes, tolerance))
    return OnnxEvaluation(np.stack(probs), np.array([r.grade for r in items]), hits, centre)


def onnx_probabilities(onnx_bytes: bytes, items: list[FundusRecord], size: int, *,
                       recipe: preprocess.Recipe = preprocess.DISC_CROP) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and labels of :func:`onnx_evaluate`."""
    ev = onnx_evaluate(onnx_bytes, items, size, recipe=recipe)
    return ev.probs, ev.labels


def training_data(cfg: TrainConfig) -> str:
    """The card's ``training.data``: the config's description of the data (when it has one) and the folder."""
    where = f"{cfg.data.train} ({cfg.data.format})"
    return f"{cfg.data.description}: {where}" if cfg.data.description else where


def intended_use(cfg: TrainConfig) -> str:
    """The card's intended-use statement for a model trained per ``cfg`` (:func:`models.card.intended_use_for`):
    synthetic, or research use naming the data and the terms it was published under."""
    synthetic = is_synthetic_folder(cfg.data.train, cfg.data.format)
    return intended_use_for(synthetic, data=cfg.data.description or f"{cfg.data.train} ({cfg.data.format})",
                            terms=cfg.data.terms)


def validation_description(cfg: TrainConfig, items: list[FundusRecord]) -> str:
    """What the patient-disjoint validation split ``items`` of ``cfg``'s training data is, for a card's
    ``metrics_data`` or a report (see :func:`training.data.split_by_patient`)."""
    patients = len({r.group for r in items})
    return (f"patient-disjoint validation split ({cfg.data.val_fraction:.0%}, seed {cfg.seed}) of "
            f"{cfg.data.train} ({cfg.data.format}), {len(items)} photographs of {patients} patients")


def export(checkpoint: Path, out_dir: Path, *, test_root: Path | None, command: str, test_format: str | None = None,
           test_split: str | None = None, held_out_validation: bool = False) -> ModelCard:
    """Export ``checkpoint`` into ``out_dir`` as ``<name>.onnx`` + ``<name>.card.json``; return the card.

    The held-out data at ``test_root`` is read in layout ``test_format`` (default: the training config's) and
    split ``test_split`` (see :func:`training.data.held_out_split`). With ``held_out_validation`` (and no
    ``test_root``) the card's metrics are measured on the patient-disjoint validation split training held
    out, recomputed from the checkpoint's config, and ``metrics_data`` says so."""
    if held_out_validation and test_root is not None:
        raise ValueError("give held-out data or measure on the validation split, not both")
    model, cfg, ck = load_checkpoint(checkpoint)
    recipe = preprocess.recipe_for(cfg.preprocessing)
    # Checkpoints from before TrainConfig.objective existed were trained with plain cross-entropy.
    objective = json.loads(ck["config"]).get("objective", "ce")
    onnx_bytes = to_onnx(model, cfg.input_size)
    rng = np.random.default_rng(0)
    probe = rng.standard_normal((2, 3, cfg.input_size, cfg.input_size), dtype=np.float32)
    parity = check_parity(model, onnx_bytes, probe)
    print(f"parity: {parity}", file=sys.stderr)

    # The operating point belongs to the exported artifact: choose it on the validation split (the patients
    # training held out) with the ONNX model itself, then measure it on the test split.
    train_items = load_graded(Path(cfg.data.train), cfg.data.format, verbose=False)
    _, val_items = split_by_patient(train_items, cfg.data.val_fraction, cfg.seed)
    val_ev = onnx_evaluate(onnx_bytes, val_items, cfg.input_size, recipe=recipe)
    val_probs, val_labels = val_ev.probs, val_ev.labels
    choice = choose_operating_point(referable_probability(val_probs), (val_labels >= REFERABLE_MIN_GRADE).astype(np.int64),
                                    cfg.referable_min_sensitivity)
    op = {"threshold": choice.threshold, "sensitivity": choice.sensitivity, "specificity": choice.specificity}
    metrics: dict[str, float] = {}
    metrics_data = "none (no held-out data given)"
    if test_root is not None or held_out_validation:
        if test_root is not None:
            items = load_graded(test_root, test_format or cfg.data.format, split=test_split)
            ev = onnx_evaluate(onnx_bytes, items, cfg.input_size, recipe=recipe)
            held_out = f"{test_root} ({len(items)} images, held out from training and validation)"
        else:
            # No separate test split: the validation patients were never trained on, but the operating point
            # was chosen on them too, so its sensitivity/specificity here are optimistic; the card says so.
            items, ev = val_items, val_ev
            held_out = (f"{validation_description(cfg, items)}; the operating point was chosen on the same "
                        f"split (its sensitivity/specificity are optimistic)")
        probs, labels = ev.probs, ev.labels
        metrics = grader_metrics(probs, labels, op["threshold"])
        metrics.update(grader_intervals(probs, labels))
        with_lesions = sum(r.lesions is not None for r in items)
        if with_lesions:
            metrics.update(pointing_game(ev.pointing_hits, ev.centre_hits))
        game = (f"pointing game: {len(ev.pointing_hits)} referable images with lesion boxes, hit = CAM peak of "
                f"the shown grade within {POINTING_TOLERANCE * cfg.input_size:.1f} model pixels of a lesion box; "
                f"centre baseline: the field centre as the point"
                if with_lesions else "pointing game: no lesion ground truth in these records")
        metrics_data = (f"{held_out}; 95 % "
                        f"intervals: percentile bootstrap over images, {BOOTSTRAP_RESAMPLES} resamples, seed "
                        f"{BOOTSTRAP_SEED}; {game}")
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_confusion(confusion_matrix(probs, labels), ICDR_LABELS, out_dir / f"{cfg.name}.confusion.png",
                       f"{cfg.name} {cfg.version}: held-out confusion matrix (n={len(items)})")
    metrics.update(parity)
    metrics_data += f"; training objective {objective}"

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{cfg.name}.onnx"
    onnx_path.write_bytes(onnx_bytes)
    card = ModelCard(
        name=cfg.name, version=cfg.version, task="dr-grading", architecture=cfg.architecture,
        file=onnx_path.name, sha256=sha256_file(onnx_path), opset=OPSET,
        input=InputSpec(size=cfg.input_size, mean=recipe.mean, std=recipe.std),
        outputs=("logits", "cam"),
        preprocessing=PreprocessingSpec(name=recipe.name, version=recipe.version),
        classes=ICDR_LABELS,
        operating_points=(OperatingPoint(name="referable_dr", threshold=op["threshold"],
                                         sensitivity=op["sensitivity"], specificity=op["specificity"],
                                         chosen_on=f"validation split ({len(val_items)} images of patients held out "
                                                   f"from training): best Youden index with sensitivity >= "
                                                   f"{cfg.referable_min_sensitivity}"),),
        metrics=metrics, metrics_data=metrics_data,
        training=TrainingProvenance(data=training_data(cfg), command=ck["command"],
                                    code_commit=ck["code_commit"], config=json.loads(ck["config"]),
                                    torch_version=ck["torch_version"], seconds=ck["seconds"],
                                    data_terms=cfg.data.terms),
        intended_use=intended_use(cfg),
        created=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    )
    card.save(out_dir / f"{cfg.name}.card.json")
    history = checkpoint.parent / "history.png"
    if history.is_file():  # the training curves travel with the model
        shutil.copyfile(history, out_dir / f"{cfg.name}.history.png")
    return card
