"""quantize: write models/model.int8.onnx, the float32 model with int8 weights and activations
(onnxruntime's dynamic quantization, its activations scaled per token so that a pair scores the same
in any batch), and check that it ranks the validation pairs as the float32 model does.

Its own stage, after export: an int8 copy that fails its check stops here and never takes
model.onnx down with it.
"""
import argparse
from pathlib import Path

from stages.common import StageError, atomic_path, load_params, read_pairs, run, write_json


def quantize(onnx_path, int8_path, params):
    """onnxruntime's dynamic quantization of the op types in quantize.op_types (int8 weights, one scale
    per output channel with quantize.per_channel, 7-bit with quantize.reduce_range), its activations
    then quantized per token (per_token_activations) with quantize.per_token.

    Never opset 23's standard Attention op: quantize_dynamic would take it for onnxruntime's own
    com.microsoft Attention and write an invalid model.
    """
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic logs a hint to run its pre-processing, meant for static quantization.
    logging.getLogger().setLevel(logging.ERROR)
    model = onnx.load(onnx_path)
    # The exporter's recorded intermediate shapes trip onnxruntime < 1.32's re-inference ("Inferred
    # shape and existing shape differ"); quantize_dynamic infers them again anyway.
    del model.graph.value_info[:]
    quantize_dynamic(model, int8_path, weight_type=QuantType.QInt8, per_channel=params["per_channel"],
                     reduce_range=params["reduce_range"], op_types_to_quantize=list(params["op_types"]))
    if params["per_token"]:
        quantized = onnx.load(int8_path)
        per_token_activations(quantized.graph, opset_of(quantized))
        onnx.save(quantized, int8_path)


def opset_of(model):
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def per_token_activations(graph, opset):
    """Replace each DynamicQuantizeLinear, which takes one int8 scale from the whole batch tensor (every
    pair and its padding), by the same quantization with one scale per token: the largest |value| of
    the token's own vector maps to 127, around the fixed zero point 128 (QuantizeLinear with one scale
    per row of the tokens' 2-D view). A pair's int8 score then depends on its own tokens only.

    The chain quantize_dynamic wrote after each MatMulInteger (Cast, then Mul by the activation scale
    times the weight scales) is kept with an activation scale of exactly 1, and the per-token scales
    multiply its output. onnxruntime fuses that chain into MatMulIntegerToFloat, which takes one
    activation scale (fed per-token ones, it computes wrong logits). The 1 is computed from the data
    (the largest scale over itself) so that constant folding leaves the Mul the fusion looks for."""
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
        width = next(initializers[m.input[1]].dims[0] for m in consumers[quantized] if m.input[1] in initializers)
        graph.initializer.append(numpy_helper.from_array(np.array([-1, width], np.int64), f"{name}.rows_shape"))
        # ReduceMax takes its axes as an input from opset 18, as an attribute before.
        axes = ({"inputs": [f"{name}.abs", "per_token.last"]} if opset >= 18 else {"inputs": [f"{name}.abs"], "axes": [-1]})
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
            helper.make_node("ReduceMax", [f"{name}.scales"], [f"{name}.largest"], keepdims=0),
            helper.make_node("Div", [f"{name}.largest", f"{name}.largest"], [one]),
            helper.make_node("Identity", ["per_token.zero_point"], [zero_point]),
        ]
        for matmul in consumers[quantized]:
            end = only_consumer(only_consumer(matmul.output[0], "Cast").output[0], "Mul")
            token_scales_after[id(end)] = f"{name}.scales"
    del graph.node[:]
    graph.node.extend(nodes)


def check_sample(val_csv, check_pairs):
    """The validation pairs of the check: whole queries, each kept when the hash of its text falls
    below check_pairs / all pairs, so about quantize.check_pairs pairs however many there are; the
    same for the same file. All of them when there are fewer."""
    import pandas as pd

    total = sum(len(chunk) for chunk in read_pairs(val_csv))
    if total <= check_pairs:
        return pd.concat(read_pairs(val_csv))
    cutoff = check_pairs / total * 2.0**64
    kept = pd.concat([chunk[pd.util.hash_pandas_object(chunk["query"], index=False).to_numpy() < cutoff]
                      for chunk in read_pairs(val_csv)])
    if kept.empty:
        raise StageError(f"quantize.check_pairs={check_pairs}: no query of {val_csv} was sampled; raise it")
    return kept


def compare(onnx_path, int8_path, val_pairs):
    """How far the int8 model's validation scores are from float32's: rank correlation, decisions."""
    import shutil

    from scipy.stats import spearmanr

    from scorer import METADATA_FILE, TOKENIZER_FILE
    from stages.metrics import THRESHOLD, defined, model_scorers, model_scores, runtime

    if Path(int8_path).parent != Path(onnx_path).parent:  # the scorer reads them beside the model it loads
        for name in (TOKENIZER_FILE, METADATA_FILE):
            shutil.copyfile(Path(onnx_path).parent / name, Path(int8_path).parent / name)
    scorers = model_scorers({"fp32": onnx_path, "int8": int8_path})
    scores = model_scores(scorers, val_pairs)
    fp32, int8 = scores["fp32"], scores["int8"]
    return {"spearman": defined(spearmanr(fp32, int8).statistic),  # NaN when a model gives every pair one score
            "mean_abs_score_diff": float(abs(fp32 - int8).mean()),
            "max_abs_score_diff": float(abs(fp32 - int8).max()),
            "decision_agreement": float(((fp32 >= THRESHOLD) == (int8 >= THRESHOLD)).mean()),
            "pairs": len(val_pairs), "queries": int(val_pairs["query"].nunique()), "runtime": runtime(scorers)}


def spearman_text(check):
    return "undefined (constant scores)" if check["spearman"] is None else f"{check['spearman']:.4f}"


def check_failure(check, params):
    """Why the int8 model is refused, or None. It must both reorder the validation pairs (Spearman
    below quantize.min_spearman) and move their scores (by more than quantize.max_mean_score_diff on
    average): a model whose float32 scores are near-ties reorders under any rounding, harmlessly."""
    ranks_alike = check["spearman"] is not None and check["spearman"] >= params["min_spearman"]
    if ranks_alike or check["mean_abs_score_diff"] <= params["max_mean_score_diff"]:
        return None
    return (f"int8 scores rank the {check['pairs']} validation pairs with Spearman {spearman_text(check)} against "
            f"float32's, below quantize.min_spearman={params['min_spearman']}, and move them by "
            f"{check['mean_abs_score_diff']:.4f} on average, more than quantize.max_mean_score_diff="
            f"{params['max_mean_score_diff']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("onnx_path", type=Path, help="float32 model (models/model.onnx), with tokenizer.json and metadata.json beside it")
    parser.add_argument("val_csv", type=Path, help="validation pairs, sampled for the check (data/split/val.csv)")
    parser.add_argument("int8_path", type=Path, help="output int8 model, beside model.onnx (models/model.int8.onnx)")
    parser.add_argument("metrics_path", type=Path, help="output: the check's measurements (results/quantize/metrics.json)")
    args = parser.parse_args()
    params = load_params("quantize")
    if args.int8_path.parent != args.onnx_path.parent:
        raise StageError(f"{args.int8_path}: must be beside {args.onnx_path}, which its tokenizer.json and metadata.json are")

    with atomic_path(args.int8_path) as int8_path:
        quantize(args.onnx_path, int8_path, params)
        check = compare(args.onnx_path, int8_path, check_sample(args.val_csv, params["check_pairs"]))
        failure = check_failure(check, params)
        if failure:
            raise StageError(f"{args.int8_path}: {failure}; model.onnx is unaffected")
    write_json(args.metrics_path, check)
    print(f"quantize: {args.int8_path} against float32 on {check['pairs']} validation pairs: Spearman "
          f"{spearman_text(check)}, mean score change {check['mean_abs_score_diff']:.2g}, decisions agree on "
          f"{check['decision_agreement']:.1%}")


if __name__ == "__main__":
    run(main)
