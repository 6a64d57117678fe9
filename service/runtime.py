"""ONNX Runtime sessions for verified models: CUDA when its provider is present, CPU otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.card import ModelCard

#: ``FOVEA_DEVICE=cpu`` forces the CPU even where CUDA is available; ``cuda`` requires it.
DEVICE_ENV = "FOVEA_DEVICE"
THREADS_ENV = "FOVEA_ORT_THREADS"


def choose_providers(available: list[str] | None = None, device: str | None = None) -> list[str]:
    """Execution providers in preference order: CUDA (if present and not disabled), then CPU."""
    available = ort.get_available_providers() if available is None else available
    device = (device or os.environ.get(DEVICE_ENV, "auto")).lower()
    if device not in {"auto", "cpu", "cuda"}:
        raise ValueError(f"{DEVICE_ENV} must be auto, cpu or cuda, not {device!r}")
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise RuntimeError(f"{DEVICE_ENV}=cuda but ONNX Runtime has no CUDA provider (install onnxruntime-gpu)")
    if device != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass
class OnnxModel:
    """A verified ONNX model and its session; ``provider`` is the one actually in use."""

    card: ModelCard
    session: ort.InferenceSession
    provider: str

    @classmethod
    def load(cls, card: ModelCard, onnx_path: Path, providers: list[str] | None = None) -> OnnxModel:
        """Create the session (the caller verified ``onnx_path`` against ``card`` first)."""
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = int(os.environ.get(THREADS_ENV, "0"))  # 0 = ORT's default (one per physical core)
        so.intra_op_num_threads = threads
        session = ort.InferenceSession(str(onnx_path), so, providers=providers or choose_providers())
        return cls(card=card, session=session, provider=session.get_providers()[0])

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run on a ``(N, 3, S, S)`` float32 batch; returns every output by name."""
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, {self.card.input.name: batch}), strict=True))
