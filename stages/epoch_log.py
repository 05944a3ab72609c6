"""train's dvclive log: the per-epoch curves with the epoch as their step, the stage's headline
metrics in results/train/metrics.json, and every other figure in report.json beside it.

transformers' DVCLiveCallback calls Live.next_step() after each of the Trainer's logs. With
logging and evaluation once an epoch, the training and the validation figures then take turns on
steps 0, 1, 2, ... (two a epoch: 0-19 for 10 epochs), and metrics.json gets every figure the
Trainer logs, its runtime, samples per second and FLOPs among them. Here both of an epoch's logs go
on one step, the epoch's number (1, 2, ...), so the plots' x-axis is the epoch; the figures of the
whole run, logged once at its end, go to the report only.
"""
import math

from dvclive.plots import Metric
from dvclive.utils import standardize_metric_name
from transformers import TrainerCallback

from stages.common import headline, write_json

# results/train/metrics.json: the last epoch's validation nDCG@10 (tune's default metric), MRR@10 and
# loss, and its training loss; dvclive adds `step`, the last epoch's number.
METRICS = ("eval.ndcg@10", "eval.mrr@10", "eval.loss", "loss")
# What the Trainer logs once, when training ends: the run's figures, for the report.
RUN_FIGURES = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss")


def dvclive_name(key):
    """The Trainer's log key as DVCLiveCallback names it (eval_loss -> eval/loss), so the curves and
    the keys stay where they were: eval/ndcg@10.tsv, eval.ndcg@10."""
    return standardize_metric_name(key, "dvclive.huggingface")


def nest(tree, name, value):
    *parents, last = name.split("/")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


class EpochLog(TrainerCallback):
    """Logs the Trainer's per-epoch figures to `live` on step = the epoch; at the end writes
    `report_path` (every figure of the last epoch and of the run, and `extra`) and the headline
    METRICS as dvclive's metrics.json. Give it to the main process's Trainer only."""

    def __init__(self, live, report_path, **extra):
        self.live, self.report_path, self.extra = live, report_path, extra
        self.run_figures = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.live.log_params(args.to_dict())  # results/train/params.yaml, the Trainer's arguments, as before

    def on_log(self, args, state, control, logs=None, **kwargs):
        figures = {key: value for key, value in (logs or {}).items()
                   if key != "epoch" and Metric.could_log(value) and not isinstance(value, str)}
        if any(key in RUN_FIGURES for key in figures):  # the end of training: not a per-epoch figure
            for key, value in figures.items():
                nest(self.run_figures, dvclive_name(key), value)
            return
        self.live.step = math.ceil(round(state.epoch, 6))  # epoch E's logs come at state.epoch == E
        for key, value in figures.items():
            self.live.log_metric(dvclive_name(key), value)

    def on_train_end(self, args, state, control, **kwargs):
        last_epoch = self.live.summary  # the last value logged of each per-epoch figure, nested as dvclive nests them
        report = {**last_epoch, "epoch": self.live.step, "optimizer_steps": state.global_step, **self.extra}
        for name, value in self.run_figures.items():
            report[name] = {**report.get(name, {}), **value} if isinstance(value, dict) else value
        write_json(self.report_path, report)
        self.live.summary = headline(report, METRICS)
        self.live.end()  # metrics.json: METRICS and `step`, the last epoch
