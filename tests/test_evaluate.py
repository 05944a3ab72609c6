"""evaluate: every declared plot file is written, with the reason when a curve is undefined; the
plots come from a bounded sample of the pairs and the metrics from all of them."""
import json

import numpy as np

from stages.evaluate import ONE_CLASS_NOTE, write_evaluation


def test_one_class_validation_writes_curves_that_say_why_and_null_metrics(tmp_path):
    queries, labels = np.array([1, 1, 2]), np.array([0, 0, 0])
    scores = {"fp32": np.array([0.7, 0.2, 0.1]), "int8": np.array([0.69, 0.21, 0.1]), "tfidf": np.array([0.5, 0.0, 0.0])}
    summary = write_evaluation(queries, labels, scores, tmp_path / "eval", plot_pairs=100)
    for plot in ("roc", "precision_recall"):
        assert json.loads((tmp_path / "eval/plots/sklearn" / f"{plot}.json").read_text())[plot], plot
    assert len(json.loads((tmp_path / "eval/plots/sklearn/confusion_matrix.json").read_text())) == 3
    assert json.loads((tmp_path / "eval/plots/sklearn/roc.json").read_text())["roc"][0]["note"] == ONE_CLASS_NOTE
    assert summary["fp32"]["roc_auc"] is None and summary["int8"]["accuracy"] == 2 / 3
    assert "accuracy" not in summary["tfidf"], "a similarity has no threshold"
    assert "NaN" not in (tmp_path / "eval/metrics.json").read_text()


def test_both_classes_give_the_float32_models_curves(tmp_path):
    queries, labels = np.array([7] * 4), np.array([1, 0, 1, 0])
    scores = {"fp32": np.array([0.9, 0.2, 0.6, 0.4]), "int8": np.array([0.1, 0.9, 0.2, 0.8])}
    summary = write_evaluation(queries, labels, scores, tmp_path / "eval", plot_pairs=100)
    roc = json.loads((tmp_path / "eval/plots/sklearn/roc.json").read_text())["roc"]
    assert "note" not in roc[0] and roc[-1]["tpr"] == 1.0
    assert (summary["fp32"]["roc_auc"], summary["int8"]["roc_auc"]) == (1.0, 0.0)


def test_plots_take_every_kth_pair_up_to_plot_pairs_and_metrics_take_all(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(1000) % 2
    queries, scores = np.arange(1000) // 10, {"fp32": np.clip(labels * 0.3 + rng.random(1000) * 0.7, 0, 1)}
    summary = write_evaluation(queries, labels, scores, tmp_path / "eval", plot_pairs=300)
    assert summary["plotted_pairs"] == len(labels[::4]) == 250 and summary["pairs"] == 1000
    assert len(json.loads((tmp_path / "eval/plots/sklearn/confusion_matrix.json").read_text())) == 250
    assert summary["fp32"]["accuracy"] == np.mean((scores["fp32"] >= 0.5) == labels)
