"""The files the vespa stage chooses from for the package, and what a hit costs in arithmetic.

Vespa's global phase scores one hit per run, always padded to L tokens, so the package's file can be
built for that shape alone. Beside models/model.onnx and models/model.int8.onnx (quantize's, whose
activations are scaled per token so that batching clients get batch-independent scores), the stage
builds from model.onnx:

- int8 with onnxruntime's own per-tensor activation scales (quantize's settings, quantize.per_token
  off): at batch 1 and L tokens a scale depends on the hit alone, and each quantized input takes one
  DynamicQuantizeLinear instead of per-token quantization's 11 nodes;
- the graph fused by onnxscript's fusions for onnxruntime (SkipLayerNormalization, BiasGelu,
  MultiHeadAttention), stopped before the Attention fusion, and its per-tensor int8.

Only the chosen file goes into the package (files/relevance.onnx); nothing new is written to models/.
"""
import math

import numpy as np

# Each candidate's key in results/vespa/metrics.json and its file name (vespa.model names one, or auto).
FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "int8_per_tensor": "model.int8.per_tensor.onnx",
         "fp32_fused": "model.fused.onnx", "int8_per_tensor_fused": "model.int8.per_tensor.fused.onnx"}
UNFUSED = {"fp32_fused": "fp32", "int8_per_tensor_fused": "int8_per_tensor"}  # what a fused file is without fusion
ORT_DOMAIN = "com.microsoft"  # onnxruntime's own (contrib) operators, which the fusions write


def fuse_to_multi_head_attention(onnx_path, fused_path):
    """Write `onnx_path` fused by onnxscript's optimize_for_ort, every fusion but its last: the
    Attention fusion moves the Q, K and V projections inside com.microsoft Attention, where
    quantize_dynamic cannot reach them and leaves them in float32; stopped at MultiHeadAttention,
    they stay MatMuls that it quantizes. Returns {onnxruntime op: count} of the fused graph, or {}
    and nothing written when no fusion matched the graph (another architecture), which is then
    left as it is."""
    from collections import Counter
    from unittest import mock

    import onnx_ir as ir
    from onnxscript.rewriter import ort_fusions
    from onnxscript.rewriter.ort_fusions import _core

    model = ir.load(onnx_path)
    # optimize_for_ort has no switch for its steps; its Attention step, a no-op, is the only change.
    with mock.patch.object(_core, "fuse_attention", lambda model, debug=False: 0):
        model, _ = ort_fusions.optimize_for_ort(model)
    fused = Counter(node.op_type for node in model.graph.all_nodes() if node.domain == ORT_DOMAIN)
    if fused:
        ir.save(model, fused_path)
    return dict(sorted(fused.items()))


def build_candidates(models_dir, folder, quantize_params):
    """{key: path} of every candidate, in FILES' order: model.onnx and model.int8.onnx as they are in
    models_dir, the others written into `folder`; and the onnxruntime ops the fusion wrote ({} when
    none matched: the fused candidates are then left out)."""
    from stages.quantize import quantize

    per_tensor = {**quantize_params, "per_token": False}
    paths = {key: models_dir / FILES[key] for key in ("fp32", "int8")}
    paths["int8_per_tensor"] = folder / FILES["int8_per_tensor"]
    quantize(paths["fp32"], paths["int8_per_tensor"], per_tensor)
    fused_ops = fuse_to_multi_head_attention(paths["fp32"], folder / FILES["fp32_fused"])
    if fused_ops:
        paths["fp32_fused"] = folder / FILES["fp32_fused"]
        paths["int8_per_tensor_fused"] = folder / FILES["int8_per_tensor_fused"]
        quantize(paths["fp32_fused"], paths["int8_per_tensor_fused"], per_tensor)
    return paths, fused_ops


def gflop_per_hit(onnx_path, length):
    """What one hit costs in arithmetic, whatever the machine: the multiply-adds of the graph's
    MatMul and Gemm nodes at batch 1 and `length` tokens, 2 FLOP each, in GFLOP (the linear layers,
    attention's two products per layer, the head). The shapes are onnxscript's optimizer's, with the
    inputs fixed at (1, length); None if a product's shape stays unknown."""
    import onnx_ir as ir
    from onnxscript import optimizer

    model = ir.load(onnx_path)
    for value in model.graph.inputs:
        value.shape = ir.Shape([1, length])
    optimizer.optimize(model)  # folds the shape computations, then infers every shape
    flop = 0
    for node in model.graph.all_nodes():
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        a, b = (list(value.shape) if value.shape is not None else [] for value in node.inputs[:2])
        if min(len(a), len(b)) < 2 or not all(isinstance(dim, int) for dim in a + b):
            return None
        if node.op_type == "Gemm":  # 2-D, either side transposed
            a, b = (a[::-1] if node.attributes.get_int("transA", 0) else a), (b[::-1] if node.attributes.get_int("transB", 0) else b)
        batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
        flop += 2 * math.prod(batch) * a[-2] * a[-1] * b[-1]
    return flop / 1e9
