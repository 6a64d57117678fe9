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
from typing import Any

import bentoml
import numpy as np

from models.store import exact_dir, load_verified
from analysis.runtime import INFERENCE_WORKERS_ENV, OnnxModel, worker_count
from service.settings import Settings

#: Images per batch (``FOVEA_MAX_BATCH_SIZE``): 16 × 3 × 320² float32 is 20 MB of input and fits any GPU; CPU
#: batches stay small anyway.
DEFAULT_MAX_BATCH_SIZE = 16
#: How long a request may wait for companions (``FOVEA_MAX_LATENCY_MS``). BentoML's default (60 s) suits LLMs,
#: not a screening call.
DEFAULT_MAX_LATENCY_MS = 50


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


def create_inference(settings: Settings) -> Any:
    """The ``fovea-inference`` BentoML service class running the verified grader named by ``settings``. The
    caller imports the embedded defaults into the store first (a ``BentoModel`` reference is resolved when
    its class is defined)."""
    workers = worker_count(INFERENCE_WORKERS_ENV)
    max_batch = int(os.environ.get("FOVEA_MAX_BATCH_SIZE", DEFAULT_MAX_BATCH_SIZE))
    max_latency = int(os.environ.get("FOVEA_MAX_LATENCY_MS", DEFAULT_MAX_LATENCY_MS))

    @bentoml.service(name="fovea-inference", workers=workers, traffic={"timeout": 60})
    class Inference:
        """Runs the verified grader. Not exposed to clients: the front calls it."""

        grader_ref = bentoml.models.BentoModel(settings.grader_tag)

        def __init__(self) -> None:
            card, onnx = load_verified(exact_dir(str(self.grader_ref.tag)))
            self.grader = OnnxModel.load(card, onnx, workers=workers)

        @bentoml.api(batchable=True, batch_dim=0, max_batch_size=max_batch, max_latency_ms=max_latency)
        def grade(self, tensors: np.ndarray) -> np.ndarray:
            """``(N, 3, S, S)`` float32 preprocessed photographs → packed logits + CAM (see :func:`pack`)."""
            return pack(self.grader.run(np.ascontiguousarray(tensors, dtype=np.float32)))

        @bentoml.api
        def provider(self) -> str:
            """The ONNX Runtime execution provider in use (reported by the front at readiness and per result)."""
            return self.grader.provider

    return Inference
