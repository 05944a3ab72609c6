"""Cross-validation folds as DVC experiments, summarised by scripts/summarize_folds.py, with the
real dvc CLI. (That `dvc queue` runs what is queued and `dvc metrics diff` compares commits is
DVC's own business, tested by DVC; test_pipeline checks the params it diffs.)"""
import json
import sys

import pytest

from tests.conftest import dvc, dvc_experiments, run_cli
from tests.tiny import PROJECT_ROOT


def test_cross_validation_folds_run_as_experiments_and_are_summarised(project):
    for fold in (0, 1):  # the README queues them (`-S 'split.fold=range(0,5)'`); run here one after the other
        # up to evaluate, whose metrics are summarised: vespa's package and timings are not needed here
        dvc("exp", "run", "-S", "split.folds=2", "-S", f"split.fold={fold}", "-S", "train.epochs=1", "evaluate", cwd=project)
    runs = dvc_experiments(project, "results/eval/metrics.json").values()
    assert sorted(params["split"]["fold"] for params, _ in runs) == [0, 1]
    # Group folds: every query is validated exactly once.
    assert sum(metrics["queries"] for _, metrics in runs) == 20

    result = run_cli([sys.executable, str(PROJECT_ROOT / "scripts/summarize_folds.py"), "--json"], cwd=project)
    (summary,) = json.loads(result.stdout).values()
    assert summary["folds"] == [0, 1]
    auc = [metrics["fp32"]["roc_auc"] for _, metrics in runs]
    assert summary["metrics"]["fp32.roc_auc"]["mean"] == pytest.approx(sum(auc) / 2)
    assert summary["metrics"]["fp32.roc_auc"]["n"] == 2 and summary["metrics"]["fp32.roc_auc"]["std"] > 0
