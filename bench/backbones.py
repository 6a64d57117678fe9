"""Backbone choice for the DR grader: CPU training throughput (PyTorch) and inference latency (ONNX Runtime,
logits + in-graph CAM) at the model input size, measured in one run on this machine.

Usage: ``python -m bench.backbones [--size 384] [--names resnet18,mobilenet_v3_large,efficientnet_b0]``
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch

from models.architectures import build
from models.architectures.classifier import WithCam


def _train_images_per_s(name: str, size: int, batch: int, steps: int) -> float:
    model = build(name, num_classes=5).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 5, (batch,))
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i:  # the first step allocates
            times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def _ort_ms(name: str, size: int, runs: int) -> float:
    model = WithCam(build(name, num_classes=5).eval())
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.randn(1, 3, size, size),), buf, input_names=["image"],
                      output_names=["logits", "cam"], opset_version=17, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count() or 1
    sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    sess.run(None, {"image": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {"image": x})
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--names", default="resnet18,mobilenet_v3_large,mobilenet_v3_large_rt,efficientnet_b0")
    a = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.set_flush_denormal(True)  # as training does
    print(f"| backbone | train img/s (batch {a.batch}, {a.size}px) | ORT logits+CAM ms (batch 1) |")
    print("|---|---|---|")
    for name in a.names.split(","):
        print(f"| {name} | {_train_images_per_s(name, a.size, a.batch, 4):.1f} | {_ort_ms(name, a.size, 15):.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
