"""quantize: write models/model.int8.onnx, the float32 model with int8 weights and activations
(onnxruntime's dynamic quantization, its activations scaled per token so that a pair scores the same
in any batch), and check that it ranks the validation pairs as the float32 model does.

Its own stage, after export: an int8 copy that fails its check stops here and never takes
model.onnx down with it.
"""
import argparse
from pathlib import Path

from stages.common import StageError, atomic_path, load_params, report_path, run, sample_queries, write_metrics

# results/quantize/metrics.json: int8 against float32; report.json adds the largest difference, the counts, the runtime.
METRICS = ("spearman", "mean_abs_score_diff", "decision_agreement")


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
    # DefaultTensorType: the outputs of onnxruntime's fused ops (com.microsoft, in the vespa stage's fused
    # graph) have no ONNX shape inference; they are float32. A graph of standard ops never needs it.
    quantize_dynamic(model, int8_path, weight_type=QuantType.QInt8, per_channel=params["per_channel"],
                     reduce_range=params["reduce_range"], op_types_to_quantize=list(params["op_types"]),
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    if params["per_token"]:
        from stages.per_token import opset_of, per_token_activations

        quantized = onnx.load(int8_path)
        per_token_activations(quantized.graph, opset_of(quantized))
        onnx.save(quantized, int8_path)


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
    parser.add_argument("metrics_path", type=Path, help="output: int8's agreement with float32 (results/quantize/metrics.json); "
                        "report.json beside it adds the largest score difference, the pairs and the runtime")
    args = parser.parse_args()
    params = load_params("quantize")
    if args.int8_path.parent != args.onnx_path.parent:
        raise StageError(f"{args.int8_path}: must be beside {args.onnx_path}, which its tokenizer.json and metadata.json are")

    with atomic_path(args.int8_path) as int8_path:
        quantize(args.onnx_path, int8_path, params)
        check = compare(args.onnx_path, int8_path, sample_queries(args.val_csv, params["check_pairs"], "quantize.check_pairs"))
        failure = check_failure(check, params)
        if failure:
            raise StageError(f"{args.int8_path}: {failure}; model.onnx is unaffected")
    write_metrics(args.metrics_path, check, METRICS)
    print(f"quantize: {args.int8_path} against float32 on {check['pairs']} validation pairs: Spearman "
          f"{spearman_text(check)}, mean score change {check['mean_abs_score_diff']:.2g}, decisions agree on "
          f"{check['decision_agreement']:.1%} ({args.metrics_path}; the rest in {report_path(args.metrics_path)})")


if __name__ == "__main__":
    run(main)
