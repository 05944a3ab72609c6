"""evaluate: every declared plot file is written, with the reason when a curve is undefined."""
import json

import numpy as np
import pandas as pd

from stages.evaluate import ONE_CLASS_NOTE, write_evaluation

TRAIN = pd.DataFrame({"query": ["covid masks", "bats"], "title": ["Face masks", "Bats in caves"], "label": [1, 0]})


def test_one_class_validation_writes_curves_that_say_why_and_null_metrics(tmp_path):
    val = pd.DataFrame({"query": ["covid masks", "covid masks", "bats"], "title": ["Masks", "Galaxy", "Cooking"],
                        "label": [0, 0, 0]})
    scores = {"fp32": np.array([0.7, 0.2, 0.1]), "int8": np.array([0.69, 0.21, 0.1])}
    summary = write_evaluation(TRAIN, val, scores, tmp_path / "eval")
    for plot in ("roc", "precision_recall"):
        assert json.loads((tmp_path / "eval/plots/sklearn" / f"{plot}.json").read_text())[plot], plot
    assert len(json.loads((tmp_path / "eval/plots/sklearn/confusion_matrix.json").read_text())) == 3
    assert json.loads((tmp_path / "eval/plots/sklearn/roc.json").read_text())["roc"][0]["note"] == ONE_CLASS_NOTE
    assert summary["fp32"]["roc_auc"] is None and summary["int8"]["accuracy"] == 2 / 3
    assert "NaN" not in (tmp_path / "eval/metrics.json").read_text()


def test_both_classes_give_the_float32_models_curves(tmp_path):
    val = pd.DataFrame({"query": ["q"] * 4, "title": ["a", "b", "c", "d"], "label": [1, 0, 1, 0]})
    scores = {"fp32": np.array([0.9, 0.2, 0.6, 0.4]), "int8": np.array([0.1, 0.9, 0.2, 0.8])}
    summary = write_evaluation(TRAIN, val, scores, tmp_path / "eval")
    roc = json.loads((tmp_path / "eval/plots/sklearn/roc.json").read_text())["roc"]
    assert "note" not in roc[0] and roc[-1]["tpr"] == 1.0
    assert (summary["fp32"]["roc_auc"], summary["int8"]["roc_auc"]) == (1.0, 0.0)
