"""Summarise cross-validation folds run as DVC experiments: mean and spread of each metric.

    dvc exp run --queue -S 'split.folds=5' -S 'split.fold=range(0,5)' && dvc queue start
    # ...when `dvc queue status` shows them done:
    python scripts/summarize_folds.py            # reads `dvc exp show --json`
    python scripts/summarize_folds.py show.json  # or a saved copy of it
    python scripts/summarize_folds.py --metrics results/split/metrics.json   # another stage's metrics

Experiments are grouped by all their params except split.fold, so folds of different
configurations are summarised separately. Metrics are read from results/eval/metrics.json
unless --metrics names another metrics file of dvc.yaml.
"""
import argparse
import json
import statistics
import subprocess
import sys

METRICS_FILE = "results/eval/metrics.json"


def flatten(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def fold_runs(exp_show, metrics_file=METRICS_FILE):
    """(params without split.fold, fold, metrics) of every experiment with split.folds set."""
    for baseline in exp_show:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                data = rev.get("data") or {}
                params = dict(flatten(data.get("params", {}).get("params.yaml", {}).get("data", {})))
                metrics = data.get("metrics", {}).get(metrics_file, {}).get("data")
                if params.get("split.folds") and metrics:
                    fold = params.pop("split.fold")
                    yield json.dumps(params, sort_keys=True), fold, dict(flatten(metrics))


def summarize(exp_show, metrics_file=METRICS_FILE):
    """{config: {"folds": [...], "metrics": {name: {"mean", "std", "n"}}}}; null metrics are left out of the mean."""
    groups = {}
    for config, fold, metrics in fold_runs(exp_show, metrics_file):
        group = groups.setdefault(config, {"folds": [], "values": {}})
        group["folds"].append(fold)
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                group["values"].setdefault(name, []).append(value)
    return {config: {"folds": sorted(group["folds"]), "metrics": {
        name: {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}
        for name, values in sorted(group["values"].items())}} for config, group in groups.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp_show_json", nargs="?", help="saved output of `dvc exp show --json` (default: run it)")
    parser.add_argument("--metrics", default=METRICS_FILE, metavar="FILE",
                        help="the metrics file to summarise (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    if args.exp_show_json:
        with open(args.exp_show_json, encoding="utf-8") as f:
            exp_show = json.load(f)
    else:
        exp_show = json.loads(subprocess.run(["dvc", "exp", "show", "--json"], check=True, capture_output=True, text=True).stdout)
    summary = summarize(exp_show, args.metrics)
    if not summary:
        sys.exit(f"error: no experiments with split.folds set and {args.metrics}; queue them as shown in --help")
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    for config, group in summary.items():
        print(f"folds {group['folds']} of {config}")
        for name, stats in group["metrics"].items():
            print(f"  {name:40s} {stats['mean']:10.4f} ± {stats['std']:.4f}  (n={stats['n']})")


if __name__ == "__main__":
    main()
