"""evaluate: measure the shipped models on the validation pairs, scored as a search service
scores them: the ONNX files through the torch-free scorer. The float32 model, the int8 model and
a TF-IDF baseline side by side, and the float32 model's ROC, precision-recall and confusion plots.
"""
import argparse
import warnings
from pathlib import Path

from stages.common import read_pairs, run, write_json
from stages.metrics import THRESHOLD, model_scores, relevance_metrics, tfidf_scores

ONE_CLASS_NOTE = "undefined: the validation pairs hold one class"


def write_evaluation(train_pairs, val_pairs, scores, eval_dir):
    """metrics.json with every scorer's metrics, and the plots of the float32 model's scores."""
    from dvclive import Live

    labels, queries = val_pairs["label"].to_numpy(), val_pairs["query"]
    baseline = tfidf_scores([*train_pairs["query"], *train_pairs["title"]], queries, val_pairs["title"])
    with Live(str(eval_dir), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        if len(set(labels)) == 2:
            live.log_sklearn_plot("roc", labels, scores["fp32"])
            live.log_sklearn_plot("precision_recall", labels, scores["fp32"])
        else:  # keep every declared plot renderable: one point saying why there is no curve
            for plot, (x, y) in {"roc": ("fpr", "tpr"), "precision_recall": ("recall", "precision")}.items():
                write_json(Path(live.plots_dir) / "sklearn" / f"{plot}.json", {plot: [{x: 0.0, y: 0.0, "note": ONE_CLASS_NOTE}]})
        live.log_sklearn_plot("confusion_matrix", labels, [int(p >= THRESHOLD) for p in scores["fp32"]])
        with warnings.catch_warnings(record=True) as undefined:
            warnings.simplefilter("always")
            summary = {name: relevance_metrics(queries, labels, values) for name, values in scores.items()}
            summary["tfidf"] = relevance_metrics(queries, labels, baseline, threshold=None)
        for warning in {str(w.message) for w in undefined}:
            print(f"evaluate: warning: {warning}")
        live.summary = {**summary, "pairs": len(labels), "queries": int(queries.nunique())}
    return live.summary


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("split_dir", type=Path, help="train.csv (fits the baseline) and val.csv (data/split)")
    parser.add_argument("onnx_path", type=Path, help="the float32 model (models/model.onnx)")
    parser.add_argument("int8_path", type=Path, help="the int8 model (models/model.int8.onnx)")
    parser.add_argument("eval_dir", type=Path, help="output: metrics.json and plots (results/eval)")
    args = parser.parse_args()

    train_pairs, val_pairs = read_pairs(args.split_dir / "train.csv"), read_pairs(args.split_dir / "val.csv")
    scores = model_scores({"fp32": args.onnx_path, "int8": args.int8_path}, val_pairs)
    summary = write_evaluation(train_pairs, val_pairs, scores, args.eval_dir)
    auc = {name: summary[name]["roc_auc"] for name in ("fp32", "int8", "tfidf")}
    print("evaluate: ROC-AUC " + ", ".join(f"{name} {'undefined' if value is None else f'{value:.4f}'}"
                                          for name, value in auc.items()) + f" on {summary['pairs']} validation pairs")


if __name__ == "__main__":
    run(main)
