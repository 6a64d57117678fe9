"""The shipped grader's ONNX weights in its PyTorch architecture, for the naive baseline (same weights).

The grader's torch checkpoint is not shipped: only ``dr-grader.onnx``. The TorchScript exporter folded every
BatchNorm into the convolution before it (eval mode), so the ONNX graph holds, in execution order, one
``Conv`` (weight, bias) per torch ``Conv2d`` and one ``Gemm`` for the linear head. :func:`torch_grader`
rebuilds the architecture named in the card (``models.architectures`` registry), pairs the ONNX ``Conv``
nodes with the torch ``Conv2d`` modules in order (shapes must match one by one), and loads each folded
``(weight, bias)`` so that the torch model computes the same function *with its BatchNorm layers still in
place* (set to the identity plus the folded bias), as the usual open-source app runs it.

:func:`max_logit_difference` is the check that the two really are the same model; the benchmark refuses to
run beyond :data:`SAME_WEIGHTS_ATOL`.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from models.architectures import build
from models.architectures.classifier import FundusClassifier
from models.architectures.views import ViewAveraged

#: Largest logit difference between ONNX Runtime and the rebuilt torch model accepted as "same weights".
SAME_WEIGHTS_ATOL = 1e-3


class WeightMappingError(RuntimeError):
    """The ONNX graph's parameters do not fit the named torch architecture."""


def _conv_params(graph: onnx.GraphProto) -> list[tuple[np.ndarray, np.ndarray | None]]:
    inits = {i.name: i for i in graph.initializer}
    out = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        if len(node.input) < 2 or node.input[1] not in inits:
            raise WeightMappingError(f"Conv node {node.name!r} has no constant weight")
        w = numpy_helper.to_array(inits[node.input[1]])
        b = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
        out.append((w, b))
    return out


def _gemm_params(graph: onnx.GraphProto) -> tuple[np.ndarray, np.ndarray]:
    inits = {i.name: i for i in graph.initializer}
    gemms = [n for n in graph.node if n.op_type == "Gemm"]
    if len(gemms) != 1:
        raise WeightMappingError(f"expected one Gemm (the linear head), found {len(gemms)}")
    node = gemms[0]
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    w = numpy_helper.to_array(inits[node.input[1]])
    return (w if trans_b else w.T), numpy_helper.to_array(inits[node.input[2]])


def _conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
    """Every ``Conv2d`` in registration (= execution, for these nets) order with the BatchNorm right after it."""
    mods = list(model.modules())
    pairs = []
    for i, m in enumerate(mods):
        if isinstance(m, nn.Conv2d):
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            pairs.append((m, nxt if isinstance(nxt, nn.BatchNorm2d) else None))
    return pairs


def torch_grader(onnx_bytes: bytes, architecture: str, num_classes: int) -> FundusClassifier:
    """The grader of ``onnx_bytes`` as a ``models.architectures`` torch module in eval mode (module docstring);
    :class:`WeightMappingError` when the graph does not fit ``architecture``."""
    graph = onnx.load_from_string(onnx_bytes).graph
    model = build(architecture, num_classes=num_classes).eval()
    convs, pairs = _conv_params(graph), _conv_bn_pairs(model)
    if len(convs) != len(pairs):
        raise WeightMappingError(f"{architecture} has {len(pairs)} convolutions, the ONNX graph {len(convs)}")
    with torch.no_grad():
        for k, ((w, b), (conv, bn)) in enumerate(zip(convs, pairs, strict=True)):
            if tuple(conv.weight.shape) != w.shape:
                raise WeightMappingError(f"convolution {k}: torch {tuple(conv.weight.shape)} vs ONNX {w.shape}")
            conv.weight.copy_(torch.tensor(w))
            bias = torch.tensor(b) if b is not None else torch.zeros(w.shape[0])
            if bn is None:
                if conv.bias is None:
                    raise WeightMappingError(f"convolution {k} has a bias in ONNX but none in torch")
                conv.bias.copy_(bias)
                continue
            if conv.bias is not None:
                conv.bias.zero_()
            # BN(x) = (x - mean) / sqrt(var + eps) * weight + bias: the identity plus the folded bias.
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            bn.weight.fill_(1.0)
            bn.bias.copy_(bias)
        hw, hb = _gemm_params(graph)
        if tuple(model.head.weight.shape) != hw.shape:
            raise WeightMappingError(f"head: torch {tuple(model.head.weight.shape)} vs ONNX {hw.shape}")
        # Whatever head trained it (e.g. the rank-one OrdinalLinear), the graph holds an ordinary linear layer.
        model.head = nn.Linear(hw.shape[1], hw.shape[0])
        model.head.weight.copy_(torch.tensor(hw))
        model.head.bias.copy_(torch.tensor(hb))
    return model


def max_logit_difference(model: nn.Module, onnx_bytes: bytes, tensor: np.ndarray, views: int = 1) -> float:
    """Largest absolute logit difference between ``model`` (torch) and ``onnx_bytes`` (ONNX Runtime) on the
    ``(N, 3, S, S)`` float32 ``tensor``; ``views``: the test-time views the graph averages (its card's
    ``test_time_views``), which the torch side then averages too."""
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (ref,) = sess.run(["logits"], {sess.get_inputs()[0].name: tensor})
    with torch.inference_mode():
        got = ViewAveraged(model, views)(torch.from_numpy(tensor)).numpy()
    return float(np.abs(got - ref).max())


def check_same_weights(model: nn.Module, onnx_bytes: bytes, tensor: np.ndarray,
                       atol: float = SAME_WEIGHTS_ATOL, views: int = 1) -> float:
    """:func:`max_logit_difference`, raising :class:`WeightMappingError` beyond ``atol`` (fail loudly: a
    baseline on other weights would compare nothing)."""
    diff = max_logit_difference(model, onnx_bytes, tensor, views)
    if not diff <= atol:
        raise WeightMappingError(f"torch and ONNX Runtime logits differ by {diff:.3g} (> {atol:g}): not the same "
                                 "weights, the benchmark would compare different models")
    return diff
