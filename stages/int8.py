"""The int8 model beside model.onnx: onnxruntime dynamic quantization, and its check against
float32 on the validation pairs (used by the export stage; `quantize` also by the benchmark)."""
from stages.common import StageError


def quantize(onnx_path, int8_path):
    """int8 weights for the linear layers and embedding tables (onnxruntime dynamic quantization).

    Only MatMul and Gather: by default quantize_dynamic would also rewrite opset 23's standard
    Attention op as if it were onnxruntime's own com.microsoft Attention, into an invalid model.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(onnx_path, int8_path, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gather"])


def quantize_and_compare(onnx_path, int8_path, val_pairs, max_auc_drop):
    """Write the int8 model and compare it with the float32 one on the validation pairs;
    fail when ROC-AUC drops by more than export.max_auc_drop."""
    from stages.metrics import RANK_CUTOFF, THRESHOLD, classification_metrics, ranking_metrics
    from stages.scorer import RelevanceScorer

    quantize(onnx_path, int8_path)
    queries, titles, labels = val_pairs["query"].tolist(), val_pairs["title"].tolist(), val_pairs["label"].to_numpy()
    scores = {name: RelevanceScorer(path).scores(queries, titles) for name, path in (("fp32", onnx_path), ("int8", int8_path))}
    comparison = {"decision_agreement": float(((scores["fp32"] >= THRESHOLD) == (scores["int8"] >= THRESHOLD)).mean())}
    for name, values in scores.items():
        comparison[f"{name}_roc_auc"] = classification_metrics(labels, values, threshold=None)["roc_auc"]
        comparison[f"{name}_ndcg@{RANK_CUTOFF}"] = ranking_metrics(queries, labels, values)[f"ndcg@{RANK_CUTOFF}"]
    defined = comparison["fp32_roc_auc"] is not None
    comparison["auc_drop"] = comparison["fp32_roc_auc"] - comparison["int8_roc_auc"] if defined else None
    if defined and comparison["auc_drop"] > max_auc_drop:
        raise StageError(f"{int8_path.name}: int8 ROC-AUC {comparison['int8_roc_auc']:.4f} is "
                         f"{comparison['auc_drop']:.4f} below float32's, more than export.max_auc_drop={max_auc_drop}")
    return comparison
