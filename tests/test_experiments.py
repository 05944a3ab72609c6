"""The DVC experiment workflow on the pipeline: exp run, diffs between commits, queued grids
and cross-validation folds, all with the real dvc CLI."""
import json
import sys
import time

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


def run_queue(project, timeout=480):
    dvc("queue", "start", cwd=project)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = dvc("queue", "status", cwd=project).stdout
        if not any(state in status for state in ("Queued", "Running")):
            assert "Failed" not in status, status + dvc("queue", "logs", status.split()[4], cwd=project, check=False).stdout
            return status
        time.sleep(2)
    raise AssertionError("queued experiments did not finish:\n" + status)


def test_exp_run_with_a_set_param_records_its_metrics(project):
    dvc("exp", "run", "-S", "train.learning_rate=0.0005", "--name", "lr-5e-4", cwd=project)
    params, metrics = experiments(project)["lr-5e-4"]
    assert params["train"]["learning_rate"] == 0.0005
    assert 0 <= metrics["fp32"]["ndcg@10"] <= 1


def test_metrics_and_params_diff_between_two_commits(project):
    set_params(project, {"train": {"learning_rate": 0.0005}})
    dvc("repro", cwd=project)
    git("commit", "-q", "-am", "lower learning rate", cwd=project)
    params = json.loads(dvc("params", "diff", "HEAD~1", "HEAD", "--json", cwd=project).stdout)["params.yaml"]
    assert list(params) == ["train.learning_rate"]
    assert (params["train.learning_rate"]["old"], params["train.learning_rate"]["new"]) == (0.001, 0.0005)
    metrics = json.loads(dvc("metrics", "diff", "HEAD~1", "HEAD", "--json", cwd=project).stdout)
    changed = metrics["results/eval/metrics.json"]
    assert "fp32.roc_auc" in changed and changed["fp32.roc_auc"]["old"] != changed["fp32.roc_auc"]["new"]
    assert "tfidf.roc_auc" not in changed, "the baseline does not depend on the learning rate"


def test_queued_grid_runs_every_value(project):
    dvc("exp", "run", "--queue", "-S", "train.learning_rate=0.002,0.0005", cwd=project)
    run_queue(project)
    rates = sorted(params["train"]["learning_rate"] for params, _ in experiments(project).values())
    assert rates == [0.0005, 0.002]


def test_cross_validation_folds_run_as_queued_experiments_and_are_summarised(project):
    dvc("exp", "run", "--queue", "-S", "split.folds=3", "-S", "split.fold=range(0,3)", cwd=project)
    run_queue(project)
    runs = experiments(project).values()
    assert sorted(params["split"]["fold"] for params, _ in runs) == [0, 1, 2]
    # Group folds: every query is validated exactly once.
    assert sum(metrics["queries"] for _, metrics in runs) == 20

    result = run_cli([sys.executable, str(PROJECT_ROOT / "scripts/summarize_folds.py"), "--json"], cwd=project)
    (summary,) = json.loads(result.stdout).values()
    assert summary["folds"] == [0, 1, 2]
    auc = [metrics["fp32"]["roc_auc"] for _, metrics in runs]
    assert summary["metrics"]["fp32.roc_auc"]["mean"] == pytest.approx(sum(auc) / 3)
    assert summary["metrics"]["fp32.roc_auc"]["n"] == 3 and summary["metrics"]["fp32.roc_auc"]["std"] > 0
