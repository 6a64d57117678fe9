"""ONNX Runtime sessions for verified models: CUDA when its provider is present, CPU otherwise."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from models.card import CardError, ModelCard

#: ``FOVEA_DEVICE=cpu`` forces the CPU even where CUDA is available; ``cuda`` requires it.
DEVICE_ENV = "FOVEA_DEVICE"
THREADS_ENV = "FOVEA_ORT_THREADS"
#: ``FOVEA_ORT_SPINNING=1`` lets idle intra-op threads spin (off by default, see :func:`session_threads`).
SPINNING_ENV = "FOVEA_ORT_SPINNING"
WORKERS_ENV = "FOVEA_WORKERS"
INFERENCE_WORKERS_ENV = "FOVEA_INFERENCE_WORKERS"


def worker_count(variable: str) -> int:
    """A worker count from the environment (default 1); ``ValueError`` naming the variable if invalid.

    ``FOVEA_WORKERS``: processes of the HTTP front (decode, quality, render, and the grader in ``local``
    inference mode); ``FOVEA_INFERENCE_WORKERS``: processes of the inference service (``service`` mode; on one
    GPU, one worker with adaptive batching is best)."""
    value = os.environ.get(variable, "1").strip()
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{variable} must be a positive integer, not {value!r}")
    return int(value)


def session_threads(workers: int = 1, cores: int | None = None) -> tuple[int, bool]:
    """``(intra-op threads, spinning)`` for one session in one of ``workers`` processes that share the cores;
    ``FOVEA_ORT_THREADS`` overrides the threads, ``FOVEA_ORT_SPINNING=1`` turns spinning on.

    Spinning is off by default: a spinning thread keeps burning a core after ``run`` returns, and an analysis
    does CPU work right after every model (the next model, the overlay, the PNGs), so it takes the core that
    work needs (measured: docs/performance.md). Spinning only pays when a session has its cores to itself and
    nothing runs between its calls."""
    cores = (os.cpu_count() or 1) if cores is None else cores
    override = os.environ.get(THREADS_ENV, "").strip()
    threads = int(override) if override.isdigit() and int(override) > 0 else max(1, cores // workers)
    spinning = os.environ.get(SPINNING_ENV, "").strip() == "1"
    return threads, spinning


def choose_providers(available: list[str] | None = None, device: str | None = None) -> list[str]:
    """Execution providers in preference order: TensorRT then CUDA (if present and not disabled), then CPU.

    ``FOVEA_DEVICE=cpu`` forces the CPU; ``cuda`` requires the CUDA provider (TensorRT is used ahead of it when
    ONNX Runtime has it: it falls back to CUDA per node for what it cannot build)."""
    available = ort.get_available_providers() if available is None else available
    device = (device or os.environ.get(DEVICE_ENV, "auto")).lower()
    if device not in {"auto", "cpu", "cuda"}:
        raise ValueError(f"{DEVICE_ENV} must be auto, cpu or cuda, not {device!r}")
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise RuntimeError(f"{DEVICE_ENV}=cuda but ONNX Runtime has no CUDA provider (install onnxruntime-gpu)")
    if device == "cpu" or "CUDAExecutionProvider" not in available:
        return ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider"] if "TensorrtExecutionProvider" in available else []
    return [*gpu, "CUDAExecutionProvider", "CPUExecutionProvider"]


def session_options(workers: int = 1) -> ort.SessionOptions:
    """The service's ONNX Runtime session options for one of ``workers`` processes sharing the cores: full graph
    optimisation, :func:`session_threads` threads and spinning."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    threads, spinning = session_threads(workers)
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return so


def latency_samples(onnx: bytes, size: int, *, runs: int = 20, providers: list[str] | None = None) -> list[float]:
    """Milliseconds of ``runs`` batch-1 ``(1, 3, size, size)`` forwards with the service's session options,
    after 3 warm-up runs (for benchmarks and the int8 report; never asserted in tests)."""
    sess = ort.InferenceSession(onnx, session_options(1), providers=providers or choose_providers())
    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    name = sess.get_inputs()[0].name
    for _ in range(3):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append(1000 * (time.perf_counter() - t))
    return times


@dataclass
class OnnxModel:
    """A verified ONNX model and its session; ``provider`` is the one actually in use."""

    card: ModelCard
    session: ort.InferenceSession
    provider: str

    @classmethod
    def load(cls, card: ModelCard, onnx: bytes, providers: list[str] | None = None, *, workers: int = 1
             ) -> OnnxModel:
        """Create the session from ``onnx`` bytes already verified against ``card`` (see
        :func:`models.store.load_verified`); :class:`models.card.CardError` if the graph's input or outputs are
        not the ones the card declares. ``workers``: processes sharing the cores (see :func:`session_threads`)."""
        session = ort.InferenceSession(onnx, session_options(workers), providers=providers or choose_providers())
        inputs, outputs = session.get_inputs(), [o.name for o in session.get_outputs()]
        if [i.name for i in inputs] != [card.input.name] or inputs[0].shape[1:] != [3, card.input.size, card.input.size]:
            raise CardError(f"model {card.tag}: graph input {[(i.name, i.shape) for i in inputs]} does not match "
                            f"its card ({card.input.name}, [N, 3, {card.input.size}, {card.input.size}])")
        if outputs != list(card.outputs):
            raise CardError(f"model {card.tag}: graph outputs {outputs} differ from its card's {list(card.outputs)}")
        return cls(card=card, session=session, provider=session.get_providers()[0])

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run on a ``(N, 3, S, S)`` float32 batch; returns every output by name."""
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, {self.card.input.name: batch}), strict=True))
