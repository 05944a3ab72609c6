"""The DVC experiment workflow on this pipeline's params and metrics: diffs between commits and
cross-validation folds as experiments summarised by scripts/summarize_folds.py, with the real dvc
CLI. (That `dvc queue` runs what is queued is DVC's own business, tested by DVC.)"""
import json
import sys

import pytest

from tests.conftest import dvc, git, run_cli
from tests.tiny import PROJECT_ROOT, set_params


def experiments(project):
    """{experiment name: (params.yaml data, results/eval/metrics.json data)} from `dvc exp show --json`."""
    found = {}
    for baseline in json.loads(dvc("exp", "show", "--json", cwd=project).stdout):
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                data = rev["data"]
                found[rev["name"]] = (data["params"]["params.yaml"]["data"],
                                      data["metrics"]["results/eval/metrics.json"]["data"])
    return found


def test_metrics_and_params_diff_between_two_commits(project):
    set_params(project, {"train": {"learning_rate": 0.0005, "epochs": 5}})
    dvc("repro", cwd=project)
    git("commit", "-q", "-am", "lower learning rate, fewer epochs", cwd=project)
    params = json.loads(dvc("params", "diff", "HEAD~1", "HEAD", "--json", cwd=project).stdout)["params.yaml"]
    assert sorted(params) == ["train.epochs", "train.learning_rate"]
    assert (params["train.learning_rate"]["old"], params["train.learning_rate"]["new"]) == (0.001, 0.0005)
    metrics = json.loads(dvc("metrics", "diff", "HEAD~1", "HEAD", "--json", cwd=project).stdout)
    changed = metrics["results/eval/metrics.json"]
    assert "fp32.roc_auc" in changed and changed["fp32.roc_auc"]["old"] != changed["fp32.roc_auc"]["new"]
    assert "tfidf.roc_auc" not in changed, "the baseline does not depend on the learning rate"


def test_cross_validation_folds_run_as_experiments_and_are_summarised(project):
    for fold in (0, 1):  # the README queues them (`-S 'split.fold=range(0,5)'`); run here one after the other
        dvc("exp", "run", "-S", "split.folds=2", "-S", f"split.fold={fold}", "-S", "train.epochs=5", cwd=project)
    runs = experiments(project).values()
    assert sorted(params["split"]["fold"] for params, _ in runs) == [0, 1]
    # Group folds: every query is validated exactly once.
    assert sum(metrics["queries"] for _, metrics in runs) == 20

    result = run_cli([sys.executable, str(PROJECT_ROOT / "scripts/summarize_folds.py"), "--json"], cwd=project)
    (summary,) = json.loads(result.stdout).values()
    assert summary["folds"] == [0, 1]
    auc = [metrics["fp32"]["roc_auc"] for _, metrics in runs]
    assert summary["metrics"]["fp32.roc_auc"]["mean"] == pytest.approx(sum(auc) / 2)
    assert summary["metrics"]["fp32.roc_auc"]["n"] == 2 and summary["metrics"]["fp32.roc_auc"]["std"] > 0
