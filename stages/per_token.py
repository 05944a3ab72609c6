"""int8 activations quantized per token in an onnxruntime dynamically quantized model (the quantize
stage, with quantize.per_token).

onnxruntime's quantize_dynamic quantizes each MatMul's input with DynamicQuantizeLinear: one scale
for the whole batch tensor, so a pair's int8 score depends on the pairs it is batched with and on
their padding. quantize_dynamic has no per-token option; this rewrites its graph, in standard ONNX
ops, so the same runtimes load it.
"""
from stages.common import StageError


def opset_of(model):
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def per_token_activations(graph, opset):
    """Replace each DynamicQuantizeLinear, which takes one int8 scale from the whole batch tensor (every
    pair and its padding), by the same quantization with one scale per token: the largest |value| of
    the token's own vector maps to 127, around the fixed zero point 128. A pair's int8 score then
    depends on its own tokens only.

    Each token's values go through QuantizeLinear with one scale per row of the tokens' 2-D view (its
    per-axis scales take a 1-D tensor; its blocked scales, which would take them as they are, need
    onnxruntime 1.20). 11 nodes per quantized input; every block shares the zero point, a constant,
    and the activation scale of 1 below. Dividing the tokens by their scales and quantizing with one
    unit scale takes 6, but that extra pass over the activations cost 3-4 % more per batch of 64 on
    an AVX2 CPU than the nodes it saves (2026-12-07, docs/speed.md).

    The chain quantize_dynamic wrote after each MatMulInteger (Cast, then Mul by the activation scale
    times the weight scales) is kept with an activation scale of exactly 1, and the per-token scales
    multiply its output. onnxruntime fuses that chain into MatMulIntegerToFloat, which takes one
    activation scale (fed per-token ones, it computes wrong logits). The 1 is computed once from the
    data (the largest scale over itself) so that constant folding leaves the Mul the fusion looks for."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph.initializer.extend([numpy_helper.from_array(np.array(127.0, np.float32), "per_token.127"),
                              numpy_helper.from_array(np.array(np.finfo(np.float32).tiny, np.float32), "per_token.tiny"),
                              numpy_helper.from_array(np.array(128, np.uint8), "per_token.zero_point"),
                              numpy_helper.from_array(np.array([-1], np.int64), "per_token.last")])
    consumers, initializers = {}, {initializer.name: initializer for initializer in graph.initializer}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(name, op_type):
        (node,) = consumers[name]
        if node.op_type != op_type:
            raise StageError(f"quantize.per_token: expected {op_type} after {name}, found {node.op_type}")
        return node

    token_scales_after = {}  # id of the Mul that ends a MatMulInteger's chain -> its input's per-token scales
    renamed = {}  # a DynamicQuantizeLinear's scale and zero point outputs -> the shared 1 and zero point
    unit = None
    nodes = []
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            if id(node) in token_scales_after:
                output = node.output[0]
                node.output[0] = f"{output}.per_tensor"
                nodes.append(helper.make_node("Mul", [node.output[0], token_scales_after[id(node)]], [output]))
            continue
        (x,), (quantized, one, zero_point) = node.input, node.output
        name = f"{node.name or quantized}.per_token"
        # ReduceMax takes its axes as an input from opset 18, as an attribute before.
        axes = ({"inputs": [f"{name}.abs", "per_token.last"]} if opset >= 18 else {"inputs": [f"{name}.abs"], "axes": [-1]})
        width = next(initializers[m.input[1]].dims[0] for m in consumers[quantized] if m.input[1] in initializers)
        graph.initializer.append(numpy_helper.from_array(np.array([-1, width], np.int64), f"{name}.rows_shape"))
        nodes += [
            helper.make_node("Abs", [x], [f"{name}.abs"]),
            helper.make_node("ReduceMax", axes.pop("inputs"), [f"{name}.max"], keepdims=1, **axes),
            helper.make_node("Div", [f"{name}.max", "per_token.127"], [f"{name}.unclipped"]),
            helper.make_node("Max", [f"{name}.unclipped", "per_token.tiny"], [f"{name}.scales"]),  # all-zero tokens
            helper.make_node("Reshape", [x, f"{name}.rows_shape"], [f"{name}.rows"]),
            helper.make_node("Reshape", [f"{name}.scales", "per_token.last"], [f"{name}.row_scales"]),
            helper.make_node("Shape", [f"{name}.row_scales"], [f"{name}.row_count"]),
            helper.make_node("ConstantOfShape", [f"{name}.row_count"], [f"{name}.zero_points"],
                             value=numpy_helper.from_array(np.array([128], np.uint8))),
            helper.make_node("QuantizeLinear", [f"{name}.rows", f"{name}.row_scales", f"{name}.zero_points"],
                             [f"{name}.quantized_rows"], axis=0),
            helper.make_node("Shape", [x], [f"{name}.shape"]),
            helper.make_node("Reshape", [f"{name}.quantized_rows", f"{name}.shape"], [quantized]),
        ]
        if unit is None:
            unit = one
            nodes += [helper.make_node("ReduceMax", [f"{name}.scales"], [f"{name}.largest"], keepdims=0),
                      helper.make_node("Div", [f"{name}.largest", f"{name}.largest"], [one])]
        else:
            renamed[one] = unit
        renamed[zero_point] = "per_token.zero_point"
        for matmul in consumers[quantized]:
            end = only_consumer(only_consumer(matmul.output[0], "Cast").output[0], "Mul")
            token_scales_after[id(end)] = f"{name}.scales"
    for node in nodes:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(nodes)
