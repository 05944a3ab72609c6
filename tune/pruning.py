"""Pruning: a trial's value while it runs, reported to Optuna's pruner, and the trial stopped when
the pruner says so (docs/tuning.md, "Pruning").

Optuna compares trials at the same step. A trial's steps, in the order it reaches them:
- epoch E of fold F (0 for the holdout split): step STEPS_PER_FOLD * F + E, the metric's value after
  that epoch, read from the curve dvclive writes beside the metrics file while the stage trains;
- the end of fold F: step STEPS_PER_FOLD * (F + 1), the running mean of folds 0..F.
So epoch E of fold F, and the mean after fold F, are the same step in every trial, whatever its
number of epochs, and every trial runs its folds in the same order (0, 1, ...).
"""
import csv
import io
from pathlib import PurePosixPath

from tune.errors import TuneError

PRUNERS = ("median", "hyperband", "none")
STEPS_PER_FOLD = 1000  # more than any number of epochs


def epoch_step(fold, epoch):
    return STEPS_PER_FOLD * (fold or 0) + epoch


def fold_step(fold):
    return STEPS_PER_FOLD * (fold + 1)


def pruned_where(fold, epoch, folds):
    """Where a trial was pruned, in words: 'at epoch 2', 'at epoch 2 of fold 1/3', 'after fold 1/3'."""
    of_fold = "" if folds is None else f"fold {fold + 1}/{folds}"
    if epoch is None:
        return f"after {of_fold}"
    return f"at epoch {epoch}" + (f" of {of_fold}" if of_fold else "")


def make_pruner(name, warmup_trials, warmup_epochs):
    """Optuna's pruner for --pruner, with the warm-up: no trial is pruned before warmup_trials trials
    are complete (median), nor on its first fold's first warmup_epochs epochs (both)."""
    import optuna

    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        # PercentilePruner skips steps below n_warmup_steps: epochs 1..warmup_epochs of fold 0.
        return optuna.pruners.MedianPruner(n_startup_trials=warmup_trials, n_warmup_steps=warmup_epochs + 1)
    if name == "hyperband":
        # Successive halving's first rung: no trial is stopped before this step.
        return optuna.pruners.HyperbandPruner(min_resource=warmup_epochs + 1)
    raise TuneError(f"--pruner {name}: expected one of {', '.join(PRUNERS)}")


def curve_path(metric_file, key):
    """Where dvclive writes the per-step values of `key` of the metrics file `metric_file` (Live(dir)
    writes dir/metrics.json and dir/plots/metrics/<key with / for .>.tsv): the file to watch."""
    return str(PurePosixPath(metric_file).parent / "plots" / "metrics" / (key.replace(".", "/") + ".tsv"))


def curve_values(text, key):
    """The values of a dvclive .tsv (columns timestamp, step, and the metric's last name), in order;
    a last line still being written is left for the next read."""
    name = key.rsplit(".", 1)[-1]
    complete = text[:text.rfind("\n") + 1]
    values = []
    for row in csv.DictReader(io.StringIO(complete), delimiter="\t"):
        try:
            values.append(float(row[name]))
        except (KeyError, TypeError, ValueError):
            continue
    return values
