"""The batchable inference service: the grader's ONNX session behind BentoML adaptive batching.

``Fovea`` (the HTTP front, :mod:`service.service`) decodes, gates and renders; it sends preprocessed tensors
here through ``bentoml.depends``. Under ``bentoml serve`` this service runs in its own worker process(es), so
on a GPU concurrent requests are grouped into batches (``max_batch_size``, ``max_latency_ms`` below); on a CPU,
where batching does not lower the cost per image (DESIGN.md), throughput comes from workers
(``FOVEA_INFERENCE_WORKERS``) with ONNX Runtime threads divided among them (:mod:`analysis.runtime`).

Wire format: BentoML splits a batchable API's input and output along axis 0, so both must be single arrays.
The grader's two outputs are packed into one ``(N, C, 1 + h*w)`` float32 array — ``[..., 0]`` the logits,
``[..., 1:]`` the CAM flattened — and :func:`unpack` restores them (the input is square, so is the CAM).
"""

from __future__ import annotations

import math
import os

import bentoml
import numpy as np

from models.store import ensure_defaults, exact_dir, load_verified
from analysis.runtime import INFERENCE_WORKERS_ENV, OnnxModel, worker_count
from service.settings import load_settings

#: Images per batch: 16 × 3 × 320² float32 is 20 MB of input and fits any GPU; CPU batches stay small anyway.
MAX_BATCH_SIZE = int(os.environ.get("FOVEA_MAX_BATCH_SIZE", "16"))
#: How long a request may wait for companions. BentoML's default (60 s) suits LLMs, not a screening call.
MAX_LATENCY_MS = int(os.environ.get("FOVEA_MAX_LATENCY_MS", "50"))


def pack(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """``{"logits": (N, C), "cam": (N, C, h, w)}`` → ``(N, C, 1 + h*w)`` float32."""
    logits, cam = outputs["logits"], outputs["cam"]
    n, c = logits.shape
    return np.concatenate([logits.reshape(n, c, 1), cam.reshape(n, c, -1)], axis=2).astype(np.float32, copy=False)


def unpack(packed: np.ndarray) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack` (the CAM is square: the model input is)."""
    n, c, length = packed.shape
    side = math.isqrt(length - 1)
    if side * side != length - 1:
        raise ValueError(f"packed grader output of length {length} does not hold a square CAM")
    return {"logits": packed[:, :, 0], "cam": packed[:, :, 1:].reshape(n, c, side, side)}


# DESIGN.md: if the store has none, import the embedded defaults before a service resolves its models (a
# BentoModel reference is resolved when the class is defined).
ensure_defaults()


WORKERS = worker_count(INFERENCE_WORKERS_ENV)


@bentoml.service(name="fovea-inference", workers=WORKERS, traffic={"timeout": 60})
class Inference:
    """Runs the verified grader. Not exposed to clients: the front calls it."""

    grader_ref = bentoml.models.BentoModel(load_settings().grader_tag)

    def __init__(self) -> None:
        card, onnx = load_verified(exact_dir(str(self.grader_ref.tag)))
        self.grader = OnnxModel.load(card, onnx, workers=WORKERS)

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def grade(self, tensors: np.ndarray) -> np.ndarray:
        """``(N, 3, S, S)`` float32 preprocessed photographs → packed logits + CAM (see :func:`pack`)."""
        return pack(self.grader.run(np.ascontiguousarray(tensors, dtype=np.float32)))

    @bentoml.api
    def provider(self) -> str:
        """The ONNX Runtime execution provider in use (reported by the front at readiness and per result)."""
        return self.grader.provider
