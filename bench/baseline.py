"""The naive stack the benchmark compares against: how the usual open-source DR app serves one photograph.

PIL decode (pydicom's ``pixel_array`` for DICOM) → torchvision transforms (resize + centre crop + normalise)
→ PyTorch eager forward → ``pytorch-grad-cam`` ``GradCAM`` on the last feature block (its own forward and a
backward pass) → PIL resize of the map to the photograph + matplotlib ``jet`` + ``Image.blend`` overlay →
PIL PNG at the full photograph size. Each stage is timed separately (:class:`BaselineRun`). The model is the
grader's own weights in torch (:mod:`bench.onnx_torch`), so only the stack differs.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import numpy as np
import pydicom
import torch
from matplotlib import colormaps
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torchvision import transforms

from models.architectures.classifier import FundusClassifier
from models.preprocess import MEAN, STD
from analysis.pipeline import saliency_target

#: Stage names in order; the model-compute stages are ``forward`` and ``gradcam``.
STAGES = ("decode", "transforms", "forward", "gradcam", "overlay", "encode")
MODEL_STAGES = ("forward", "gradcam")


class StageClock:
    """Milliseconds per stage: :meth:`lap` records the time since the previous lap (or since creation)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.ms[name] = 1000 * (now - self._t)
        self._t = now


@dataclass(frozen=True)
class BaselineRun:
    """One photograph through the naive stack: stage milliseconds, the predicted grade, the PNG size."""

    timing_ms: dict[str, float]
    grade: int
    png_bytes: int


class NaiveBaseline:
    """The naive stack around a torch grader (eval mode) with ``size`` px input, on ``device``."""

    def __init__(self, model: FundusClassifier, size: int, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.transform = transforms.Compose([
            transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
            transforms.Normalize(MEAN.tolist(), STD.tolist()),
        ])
        self.cam = GradCAM(model=self.model, target_layers=[self.model.features[-1]])

    @staticmethod
    def decode(data: bytes) -> Image.Image:
        """PIL for JPEG/PNG; pydicom's ``pixel_array`` (its own YBR → RGB) for DICOM Part 10."""
        if data[128:132] == b"DICM":
            return Image.fromarray(pydicom.dcmread(io.BytesIO(data)).pixel_array)
        return Image.open(io.BytesIO(data)).convert("RGB")

    def run(self, data: bytes) -> BaselineRun:
        """Time every stage of one photograph (:data:`STAGES`)."""
        clock = StageClock()
        lap = clock.lap

        img = self.decode(data)
        lap("decode")
        x = self.transform(img).unsqueeze(0).to(self.device)
        lap("transforms")
        with torch.no_grad():
            probs = torch.softmax(self.model(x), dim=1)[0].cpu().numpy()
        grade = int(np.argmax(probs))
        lap("forward")
        heat = self.cam(input_tensor=x, targets=[ClassifierOutputTarget(saliency_target(grade, probs))])[0]
        lap("gradcam")
        # The map covers the centre crop; the usual app stretches it over the whole photograph.
        mask = Image.fromarray(np.uint8(255 * heat)).resize(img.size, Image.BILINEAR)
        jet = colormaps["jet"](np.asarray(mask, dtype=np.float32) / 255.0)[..., :3]
        picture = Image.blend(img, Image.fromarray(np.uint8(255 * jet)), 0.5)
        lap("overlay")
        buf = io.BytesIO()
        picture.save(buf, format="PNG")
        lap("encode")
        return BaselineRun(timing_ms=clock.ms, grade=grade, png_bytes=buf.tell())
