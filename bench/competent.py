"""The competent PyTorch stack the benchmark headlines against: what a careful engineer builds on the same grader
weights without Fovea's ONNX graph, before any profiling.

Stages (each timed, :class:`CompetentRun`; names as :mod:`bench.baseline` so the tables line up):

``decode``
    PIL with JPEG draft mode: ``img.draft("RGB", (1024, 1024))`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale
    while the result stays at least :data:`DECODE_SIDE` px on both sides (the same idea as Fovea's reduced
    decoding, a standard PIL feature). PNG is decoded in full (no reduced decode exists); DICOM through pydicom's
    ``pixel_array`` (its own YBR → RGB), as :mod:`bench.baseline` does.
``transforms``
    The card's preprocessing recipe, so the grades mean what the card's metrics say: the recipe's field crop
    (``models.preprocess.crop_field``: field located on the decoded image, integer square around it, one OpenCV
    area resize to the grader's input), ``models.preprocess.normalise_contrast`` when the recipe is
    ``fovea.fundus-contrast`` (no torchvision equivalent exists), then torchvision ``F.to_dtype`` +
    ``F.normalize`` with the card's mean/std. Choice: torchvision's own ``Resize`` (bilinear, antialiased) was
    tried in place of the recipe's area resize and moved the default grader's logits by up to 0.4 on
    ``retina.jpg`` once the contrast step amplified the interpolation difference, i.e. other grades than the
    card measured; a careful engineer feeds a model the resize it was trained with (both cost a few ms, so the
    timing is the same either way). The only difference left from Fovea's input is the decode resolution.
``forward``
    PyTorch eager under ``torch.inference_mode()`` (no autograd bookkeeping), ``torch.set_num_threads`` = the
    machine's cores; the grade from the card's grade rule (cut-points on the expected grade) as served. OpenMP
    keeps PyTorch's default (active wait, :data:`OMP_ENV` is empty): on 2 quiet cores it is 1.6x faster for this
    grader than ``OMP_WAIT_POLICY=PASSIVE`` (forward + GradCAM 91 against 204 ms for the 10 MP photograph), so
    passive wait would handicap the baseline. On cores other processes also use, active wait is pathological
    (forward 0.1-3.7 s instead of ~50 ms); set ``OMP_WAIT_POLICY=PASSIVE`` in the environment to measure that
    case, and the report's thread check flags such a run.
``gradcam``
    pytorch-grad-cam ``GradCAM`` on the last feature block, for Fovea's saliency target (the predicted DR grade,
    or the most probable DR grade for "No DR"): it needs its own forward and a backward pass, which is what
    such a stack does (Fovea's graph returns CAM from the one forward, :mod:`models.architectures.classifier`).
``overlay``
    The photograph reduced (OpenCV area) to at most :data:`RENDER_MAX_SIDE` px on its long side, the map warped
    onto it through the crop's affine map (``cv2.warpAffine``), ``cv2.applyColorMap(JET)`` and
    ``cv2.addWeighted`` (alpha 0.5).
``encode``
    OpenCV PNG (default settings) of the heatmap (uint8, single channel) and of the overlay.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import cv2
import numpy as np
import pydicom
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from bench.baseline import StageClock
from models.architectures.classifier import FundusClassifier
from models.card import ModelCard, recipe_of
from models.grading import grade_from, softmax
from models.preprocess import crop_field, normalise_contrast
from analysis.pipeline import saliency_target

#: Stage names in order (as :data:`bench.baseline.STAGES`); the model-compute stages are ``forward`` and
#: ``gradcam``.
STAGES = ("decode", "transforms", "forward", "gradcam", "overlay", "encode")
MODEL_STAGES = ("forward", "gradcam")
#: OpenMP settings the torch stacks get unless the environment says otherwise (module docstring, ``forward``):
#: none, PyTorch's defaults are what a competent deployment runs and the fastest on quiet cores.
OMP_ENV: dict[str, str] = {}
#: JPEG draft mode keeps at least this many pixels on both sides.
DECODE_SIDE = 1024
#: The heatmap and overlay are drawn at most this many pixels on their long side (as Fovea's).
RENDER_MAX_SIDE = 1024


@dataclass(frozen=True)
class CompetentRun:
    """One photograph through the competent stack: stage milliseconds, the grade and probabilities, the logits,
    the saliency target, the model input tensor and the two PNGs."""

    timing_ms: dict[str, float]
    grade: int
    probabilities: list[float]
    target: int
    tensor: np.ndarray
    heatmap_png: bytes
    overlay_png: bytes


def decode(data: bytes, side: int = DECODE_SIDE) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB: JPEG in draft mode (at least ``side`` px on both sides when the photograph has
    them), PNG in full, DICOM Part 10 through pydicom."""
    if data[128:132] == b"DICM":
        rgb = pydicom.dcmread(io.BytesIO(data)).pixel_array
        return np.ascontiguousarray(rgb if rgb.ndim == 3 else np.repeat(rgb[..., None], 3, axis=2)).astype(np.uint8)
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        img.draft("RGB", (side, side))
    return np.asarray(img.convert("RGB"))


class CompetentStack:
    """The competent stack (module docstring) around a torch grader in eval mode and its card; ``threads``: torch
    intra-op threads (default: the machine's cores)."""

    def __init__(self, model: FundusClassifier, card: ModelCard, *, device: str = "cpu",
                 threads: int | None = None) -> None:
        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.card = card
        self.size = card.input.size
        self.recipe = recipe_of(card)
        self.cutpoints = card.grade_rule.cutpoints if card.grade_rule else None
        self.cam = GradCAM(model=self.model, target_layers=[self.model.features[-1]])

    def transforms(self, rgb: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """The ``(1, 3, S, S)`` model input and the 2×3 affine map from model-input pixel indices to ``rgb``'s."""
        crop, tf = crop_field(rgb, self.size)
        image = normalise_contrast(crop) if self.recipe.contrast else crop
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        x = F.normalize(F.to_dtype(t, torch.float32, scale=True), list(self.recipe.mean), list(self.recipe.std))
        return x.unsqueeze(0).contiguous(), tf.matrix_to_original()

    def run(self, data: bytes) -> CompetentRun:
        """Time every stage of one photograph (:data:`STAGES`)."""
        clock = StageClock()
        lap = clock.lap

        rgb = decode(data)
        lap("decode")
        x, matrix = self.transforms(rgb)
        x = x.to(self.device)
        lap("transforms")
        with torch.inference_mode():
            logits = self.model(x)[0].float().cpu().numpy()
        probs = softmax(logits)
        grade = int(grade_from(probs, self.cutpoints))
        target = saliency_target(grade, probs)
        lap("forward")
        cam = self.cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0]  # (S, S) in [0, 1]
        lap("gradcam")
        h, w = rgb.shape[:2]
        k = max(1.0, max(h, w) / RENDER_MAX_SIDE)
        dw, dh = max(1, round(w / k)), max(1, round(h / k))
        shown = cv2.resize(rgb, (dw, dh), interpolation=cv2.INTER_AREA) if k > 1 else rgb
        to_shown = np.diag([dw / w, dh / h]) @ matrix  # model pixels -> photograph -> shown pixels
        to_shown[:, 2] += 0.5 * np.array([dw / w, dh / h]) - 0.5
        heat = cv2.warpAffine(np.uint8(255 * np.clip(cam, 0, 1)), to_shown, (dw, dh), flags=cv2.INTER_LINEAR)
        jet = cv2.applyColorMap(heat, cv2.COLORMAP_JET)
        picture = cv2.addWeighted(cv2.cvtColor(shown, cv2.COLOR_RGB2BGR), 0.5, jet, 0.5, 0.0)
        lap("overlay")
        ok_h, heat_png = cv2.imencode(".png", heat)
        ok_o, over_png = cv2.imencode(".png", picture)
        if not (ok_h and ok_o):  # pragma: no cover - OpenCV fails only on invalid arrays
            raise RuntimeError("PNG encoding failed")
        lap("encode")
        return CompetentRun(timing_ms=clock.ms, grade=grade, probabilities=[float(p) for p in probs], target=target,
                            tensor=x.cpu().numpy(), heatmap_png=heat_png.tobytes(), overlay_png=over_png.tobytes())
