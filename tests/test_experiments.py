"""Cross-validation folds as DVC experiments, summarised by scripts/summarize_folds.py, with the
real dvc CLI. (That `dvc queue` runs what is queued and `dvc metrics diff` compares commits is
DVC's own business, tested by DVC; test_pipeline checks the params it diffs.) The folds run up to
the split stage: what a fold is and how folds are summarised do not depend on the stages after it,
whose metrics the same `dvc exp show` carries (test_tune runs trained folds)."""
import json
import sys

import pytest

from tests.conftest import dvc, dvc_experiments, run_cli
from tests.tiny import PROJECT_ROOT

SPLIT_METRICS = "results/split/metrics.json"


def test_cross_validation_folds_run_as_experiments_and_are_summarised(project):
    for fold in (0, 1, 2):  # the README queues them (`-S 'split.fold=range(0,5)'`); run here one after the other
        dvc("exp", "run", "-S", "split.folds=3", "-S", f"split.fold={fold}", "split", cwd=project)
    runs = dvc_experiments(project, SPLIT_METRICS).values()
    assert sorted(params["split"]["fold"] for params, _ in runs) == [0, 1, 2]
    # Group folds: every query is validated exactly once, and trained on in the other folds.
    assert sum(metrics["val_queries"] for _, metrics in runs) == 20
    assert all(metrics["val_queries"] + metrics["train_queries"] == 20 for _, metrics in runs)

    summarize = [sys.executable, str(PROJECT_ROOT / "scripts/summarize_folds.py"), "--json", "--metrics", SPLIT_METRICS]
    (summary,) = json.loads(run_cli(summarize, cwd=project).stdout).values()
    assert summary["folds"] == [0, 1, 2]
    pairs = [metrics["val_pairs"] for _, metrics in runs]
    assert summary["metrics"]["val_pairs"]["mean"] == pytest.approx(sum(pairs) / 3)
    assert summary["metrics"]["val_pairs"]["n"] == 3 and summary["metrics"]["val_pairs"]["std"] > 0
