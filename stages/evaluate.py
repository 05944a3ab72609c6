"""evaluate: measure the shipped models on the validation pairs, scored as a search service
scores them: the ONNX files through the torch-free scorer. The float32 model, the int8 model and
a TF-IDF baseline side by side, and the float32 model's ROC, precision-recall and confusion plots.
With a teacher (data/teacher, the teach stage's), its own scores of the validation pairs beside them,
as P(relevant) = sigmoid(its score): what a distilled student gave up, or whether fine-tuning beat
the starting cross-encoder zero-shot.

The pairs stream through in chunks; what is kept per validation pair is its label, its query's
hash and one score per scorer. The plots are drawn from at most evaluate.plot_pairs pairs (every
k-th), the metrics from all of them.
"""
import argparse
import math
from pathlib import Path

import numpy as np

from stages.common import REPORT_FILE, StageError, headline, load_params, read_pairs, run, write_json
from stages.metrics import (THRESHOLD, TfidfBaseline, metrics_by_scorer, model_scorers, model_scores, query_ids,
                             runtime)

ONE_CLASS_NOTE = "undefined: the validation pairs hold one class"
# results/eval/metrics.json, what `dvc metrics show` shows; report.json beside it holds every metric of
# every scorer (accuracy, precision, recall, average precision, MAP, precision@5, the query counts), the
# pair counts and the runtime.
METRICS = tuple(f"{scorer}.{name}" for scorer in ("fp32", "int8", "tfidf") for name in ("ndcg@10", "mrr@10", "roc_auc", "f1")
                if not (scorer == "tfidf" and name == "f1"))
TEACHER_METRICS = ("teacher.ndcg@10",)  # with a teacher; its other metrics go to report.json


def fit_baseline(train_csv):
    baseline = TfidfBaseline()
    for chunk in read_pairs(train_csv):
        baseline.fit_chunk(chunk["query"]).fit_chunk(chunk["title"])
    return baseline


def score_pairs(val_csv, scorers, baseline):
    """(query ids, labels, {scorer: scores}) of every validation pair, with a progress bar."""
    from tqdm.auto import tqdm

    queries, labels, scores = [], [], {name: [] for name in [*scorers, "tfidf"]}
    with tqdm(unit=" pairs", desc="Scoring the validation pairs") as progress:
        for chunk in read_pairs(val_csv):
            queries.append(query_ids(chunk["query"]))
            labels.append(chunk["label"].to_numpy())
            for name, values in model_scores(scorers, chunk).items():
                scores[name].append(values)
            scores["tfidf"].append(baseline.scores(chunk["query"], chunk["title"]))
            progress.update(len(chunk))
    return np.concatenate(queries), np.concatenate(labels), {name: np.concatenate(v) for name, v in scores.items()}


def write_evaluation(queries, labels, scores, eval_dir, plot_pairs, runtime_info=None):
    """report.json with every scorer's metrics (the TF-IDF baseline's without a threshold) and the
    counts, metrics.json with the headline ones (METRICS), and the plots of the float32 model's scores;
    returns the report."""
    from dvclive import Live

    every = max(1, math.ceil(len(labels) / plot_pairs))
    plotted_labels, plotted = labels[::every], scores["fp32"][::every]
    with Live(str(eval_dir), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        if len(set(plotted_labels)) == 2:
            live.log_sklearn_plot("roc", plotted_labels, plotted)
            live.log_sklearn_plot("precision_recall", plotted_labels, plotted)
        else:  # keep every declared plot renderable: one point saying why there is no curve
            for plot, (x, y) in {"roc": ("fpr", "tpr"), "precision_recall": ("recall", "precision")}.items():
                write_json(Path(live.plots_dir) / "sklearn" / f"{plot}.json", {plot: [{x: 0.0, y: 0.0, "note": ONE_CLASS_NOTE}]})
        live.log_sklearn_plot("confusion_matrix", plotted_labels, (plotted >= THRESHOLD).astype(int))
        summary = metrics_by_scorer(queries, labels, scores, "evaluate")
        report = {**summary, "pairs": len(labels), "queries": int(len(np.unique(queries))),
                  "plotted_pairs": len(plotted_labels), **({"runtime": runtime_info} if runtime_info else {})}
        live.summary = headline(report, METRICS + (TEACHER_METRICS if "teacher" in scores else ()))
    write_json(Path(eval_dir) / REPORT_FILE, report)
    return report


def teacher_probabilities(teacher_dir, pairs):
    """P(relevant) = sigmoid(score) of the teacher's score of each validation pair (val.npy, one per row
    of val.csv, in order), or None without a teacher; scores of another count than `pairs` are one line."""
    if teacher_dir is None or not (teacher_dir / "val.npy").is_file():
        return None
    from scipy.special import expit

    scores = np.load(teacher_dir / "val.npy")
    if scores.shape != (pairs,):
        raise StageError(f"teacher.name: {teacher_dir / 'val.npy'} holds {scores.size} teacher scores for the {pairs} "
                         f"validation pairs, one per pair in order expected: teach read another data/split; rerun it "
                         f"(dvc repro)")
    return expit(scores.astype(np.float64))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("split_dir", type=Path, help="train.csv (fits the baseline) and val.csv (data/split)")
    parser.add_argument("onnx_path", type=Path, help="the float32 model (models/model.onnx)")
    parser.add_argument("int8_path", type=Path, help="the int8 model (models/model.int8.onnx)")
    parser.add_argument("eval_dir", type=Path, help="output: metrics.json (the headline metrics), report.json (all of "
                        "them) and plots (results/eval)")
    parser.add_argument("teacher_dir", type=Path, nargs="?", help="the teacher's scores, val.npy, whose metrics go "
                        "beside the models'; empty or left out: no teacher (data/teacher)")
    args = parser.parse_args()
    params = load_params("evaluate")

    scorers = model_scorers({"fp32": args.onnx_path, "int8": args.int8_path})
    queries, labels, scores = score_pairs(args.split_dir / "val.csv", scorers, fit_baseline(args.split_dir / "train.csv"))
    teacher = teacher_probabilities(args.teacher_dir, len(labels))
    if teacher is not None:
        scores["teacher"] = teacher
    summary = write_evaluation(queries, labels, scores, args.eval_dir, params["plot_pairs"], runtime(scorers))
    auc = {name: summary[name]["roc_auc"] for name in ("fp32", "int8", "tfidf", "teacher") if name in summary}
    print("evaluate: ROC-AUC " + ", ".join(f"{name} {'undefined' if value is None else f'{value:.4f}'}"
                                          for name, value in auc.items())
          + f" on {summary['pairs']} validation pairs ({summary['runtime']['providers']['fp32']}); nDCG@10, MRR@10, "
          f"ROC-AUC and F1 in {args.eval_dir / 'metrics.json'}, every metric and count in {args.eval_dir / REPORT_FILE}")


if __name__ == "__main__":
    run(main)
