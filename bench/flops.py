"""Work done by a model (FLOPs counted from its ONNX graph) and what this machine can do (a matmul ceiling).

FLOPs here are 2 x multiply-accumulates of the ops that carry the arithmetic: ``Conv`` (grouped and
depthwise included), ``Gemm``/``MatMul`` and ``Einsum`` (the in-graph CAM), at batch 1 and the card's input
size, from ONNX shape inference. Element-wise ops (activations, adds, pools) are left out, as is usual for
"GFLOPs" of a CNN; they are a few percent of a MobileNet's arithmetic. Shapes that static inference cannot
resolve are read from one ONNX Runtime run on zeros.
"""

from __future__ import annotations

import time

import numpy as np
import onnx
from onnx import TensorProto, helper, shape_inference


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = shape_inference.infer_shapes(model)
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)
    for init in inferred.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


_COUNTED = ("Conv", "Gemm", "MatMul", "Einsum")


def _run_shapes(model: onnx.ModelProto, known: dict[str, tuple[int, ...]], size: int) -> dict[str, tuple[int, ...]]:
    """Shapes static inference left open (e.g. behind a ``Resize`` with computed scales), by running the graph
    once in ONNX Runtime on zeros with those tensors exposed as outputs."""
    missing = sorted({name for node in model.graph.node if node.op_type in _COUNTED
                      for name in (*node.input, *node.output) if name and name not in known})
    if not missing:
        return {}
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for name in missing:
        if name not in present:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(missing, {probe.graph.input[0].name: np.zeros((1, 3, size, size), np.float32)})
    return {name: tuple(a.shape) for name, a in zip(missing, outs, strict=True)}


def model_flops(onnx_bytes: bytes, size: int) -> int:
    """FLOPs of one forward pass at batch 1 and a ``size`` x ``size`` input (module docstring).
    ``ValueError`` when a counted op's shapes cannot be inferred."""
    model = onnx.load_from_string(onnx_bytes)
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    for d, v in zip(dims, (1, 3, size, size), strict=True):
        d.ClearField("dim_param")
        d.dim_value = v
    shapes = _shapes(model)
    shapes.update(_run_shapes(model, shapes, size))
    total = 0
    for node in model.graph.node:
        if node.op_type not in _COUNTED:
            continue
        try:
            if node.op_type == "Conv":
                out, w = shapes[node.output[0]], shapes[node.input[1]]
                # out (N, Cout, H, W); w (Cout, Cin / group, kh, kw): each output takes Cin/group*kh*kw MACs.
                total += 2 * int(np.prod(out)) * int(np.prod(w[1:]))
            elif node.op_type in ("Gemm", "MatMul"):
                a, out = shapes[node.input[0]], shapes[node.output[0]]
                total += 2 * int(np.prod(out)) * a[-1]
            else:  # Einsum: MACs = product of all distinct index extents
                eq = next(a.s.decode() for a in node.attribute if a.name == "equation").replace(" ", "")
                lhs = eq.split("->")[0].split(",")
                extent: dict[str, int] = {}
                for term, name in zip(lhs, node.input, strict=True):
                    for ch, n in zip(term, shapes[name], strict=True):
                        extent[ch] = n
                total += 2 * int(np.prod(list(extent.values())))
        except KeyError as exc:
            raise ValueError(f"{node.op_type} node {node.name!r}: shape of {exc} not inferred") from exc
    return total


def matmul_ceiling(n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of a numpy float32 ``n`` x ``n`` matmul (BLAS, all cores) in this process: what dense
    arithmetic reaches here, the ceiling a model's achieved GFLOP/s is compared with."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm up (threads, pages)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9
