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


def documented_exp_show(page):
    """The `dvc exp show --only-changed ...` command of a doc page, as a user copies it (comment cut)."""
    import shlex

    lines = [line for line in (PROJECT_ROOT / page).read_text(encoding="utf-8").splitlines()
             if line.startswith("dvc exp show --only-changed")]
    assert lines, f"{page} shows no `dvc exp show --only-changed ...` command"
    return [shlex.split(line, comments=True) for line in lines]


def test_the_documented_exp_show_fits_200_columns_after_a_tune_study(project):
    """docs/experiments.md's and the README's `dvc exp show` (issue 39), on the reproduced project with
    experiments as a tune study leaves them: every search-space param and the fold changed (saved with
    `dvc exp save`, which runs nothing). In a 200-column terminal the headline metrics and the changed
    params show whole: no column cut to "…"."""
    from tests.tiny import set_params

    study = [{"learning_rate": 1.234e-4, "epochs": 3, "batch_size": 32, "warmup_steps": 450, "weight_decay": 0.08765,
              "freeze_base": False},
             {"learning_rate": 6.78e-5, "epochs": 5, "batch_size": 8, "warmup_steps": 150, "weight_decay": 0.01234,
              "freeze_base": True}]
    for fold, train in enumerate(study):  # a trial's fold each: every column the study varies varies here
        set_params(project, {"train": train, "split": {"folds": 5, "fold": fold}})
        dvc("exp", "save", "-f", "-n", f"tune-{10 + fold}-{fold}", cwd=project)
    commands = documented_exp_show("docs/experiments.md") + documented_exp_show("README.md")
    assert all(command == commands[0] for command in commands), "one command, the same in both"
    shown = run_cli(commands[0], cwd=project, COLUMNS="200").stdout
    header = next(line for line in shown.splitlines() if "Experiment" in line).split()
    assert header == ["Experiment", "eval.ndcg@10", "fp32.ndcg@10", "split.fold",
                      *(f"train.{name}" for name in ("epochs", "batch_size", "learning_rate", "warmup_steps", "weight_decay",
                                                     "freeze_base"))], shown
    assert "…" not in shown and max(map(len, shown.splitlines())) <= 200, shown
    assert "tune-11-1" in shown
