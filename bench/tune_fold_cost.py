"""Where a tune fold's time goes, on a tiny model: the train stage's command run directly, against
a fold of `python -m tune` with the default metric (train's nDCG@10: split, encode, train), and the
parts of a fold that are not training.

    nice python -m bench.tune_fold_cost            # a few minutes on a 2-core CPU

A scratch project (git + DVC) on bench.synthetic's tiny BERT and 600 synthetic pairs (75 queries of 8
titles), the shipped params.yaml otherwise, reproduced up to train once; then, in order:
- alternately, N times: the train stage's command run directly, and one more trial of
  `python -m tune --pruner none` over train.learning_rate (holdout split: a trial is one fold; its
  seconds as tune records them, claim to tell);
- `python -c "import torch, transformers..."`: what any train process pays before it reads a byte;
- `dvc exp run --temp encode` that runs nothing: DVC's fixed cost of an experiment.
Writes bench/results/tune-fold-cost.md and .json.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.memory import cpu
from bench.report import RESULTS, save, table
from bench.synthetic import make_scratch_project, realistic_pairs, write_rows, write_tiny_bert

TRAIN = ["-m", "stages.train", "data/encoded", "models/pretrained", "models/finetuned", "models/checkpoints", "results/train"]


def timed(command, cwd):
    """(wall seconds, CPU seconds of the command and its children) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(wall, 2), round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/bench-tune-fold-cost")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--name", default="tune-fold-cost")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    queries, titles, labels = realistic_pairs(75, titles_per_query=8, seed=0)
    csv_path = write_rows(workdir / "pairs.csv", zip(queries, titles, labels))
    model_dir = write_tiny_bert(workdir / "tiny-bert", list(queries) + list(titles))
    project = make_scratch_project(workdir / "project", csv_path, model_dir)
    python, dvc = sys.executable, [sys.executable, "-m", "dvc"]
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    shutil.copytree(Path(__file__).resolve().parent.parent / "tune", project / "tune",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (project / "space.yaml").write_text("train.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n")
    subprocess.run(dvc + ["repro", "train"], cwd=project, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(git + ["add", "-A"], cwd=project, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "reproduced up to train"], cwd=project, check=True)
    load_start = os.getloadavg()[0]

    # Alternated, so that the machine's load, which moves, weighs on both alike: the train command,
    # then one more trial of the study (tune --trials i), ROUNDS times.
    tune = [python, "-m", "tune", "--study", "cost", "--pruner", "none", "--search-space", "space.yaml", "--seed", "0"]
    train_runs, tune_runs = [], []
    for trials in range(1, args.trials + 1):
        train_runs.append(timed([python, *TRAIN], project))
        subprocess.run(["git", "checkout", "-q", "--", "."], cwd=project, check=True)  # tune takes tracked changes in
        tune_runs.append(timed(tune + ["--trials", str(trials)], project))
    tune_only = timed(tune + ["--trials", str(args.trials)], project)  # the study complete: tune's own start and report
    imports = timed([python, "-c", "import torch, transformers, datasets; from transformers import Trainer"], project)
    dvc_fixed = timed(dvc + ["exp", "run", "--temp", "-n", "noop", "encode"], project)
    study = json.loads((project / "results/tune/cost.json").read_text())
    folds = [t["seconds"] for t in study["trials"] if t["state"] == "COMPLETE"]
    train_metrics = json.loads((project / "results/train/report.json").read_text())
    median = statistics.median
    record = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu(), "load_average": {"start": load_start, "end": os.getloadavg()[0]},
              "pairs": len(labels), "train_command": train_runs, "tune_one_more_trial": tune_runs, "tune_nothing_to_run": tune_only,
              "import_torch_transformers": imports, "dvc_exp_run_nothing_to_run": dvc_fixed, "fold_seconds": folds,
              "train_runtime_s": train_metrics.get("train", {}).get("runtime")}
    train_wall, train_cpu = median(w for w, _ in train_runs), median(c for _, c in train_runs)
    fold_cpu = median(c for _, c in tune_runs) - tune_only[1]
    record["ratio_wall"] = round(median(folds) / train_wall, 2)
    record["ratio_cpu"] = round(fold_cpu / train_cpu, 2)
    rows = [["train stage's command, run directly", f"{train_wall:.1f}", f"{train_cpu:.1f}"],
            ["a fold in tune (claim to tell; CPU: tune's run less its own start and report)", f"{median(folds):.1f}", f"{fold_cpu:.1f}"],
            ["  of which `import torch, transformers, datasets`", f"{imports[0]:.1f}", f"{imports[1]:.1f}"],
            ["  of which `dvc exp run --temp` with nothing to run", f"{dvc_fixed[0]:.1f}", f"{dvc_fixed[1]:.1f}"],
            ["tune's own start and report (`--trials N` reached)", f"{tune_only[0]:.1f}", f"{tune_only[1]:.1f}"]]
    lines = ["# A tune fold's time against its training (`python -m bench.tune_fold_cost`)", "",
             f"Measured {record['date']} on {record['cpu']}, beside other work (load average {load_start:.1f} at the "
             f"start, {record['load_average']['end']:.1f} at the end), so the train command and a fold were timed "
             f"alternately, {args.trials} times each; medians. Tiny BERT (bench.synthetic), {len(labels)} synthetic "
             f"pairs, shipped params.yaml; tune with its default metric (train's nDCG@10), holdout split, `--pruner none`.", "",
             *table(["", "wall s", "CPU s"], rows), "",
             f"**A fold takes {record['ratio_wall']}x the train command's wall time, {record['ratio_cpu']}x its CPU time.** "
             f"Each run: train {', '.join(f'{w:.1f}' for w, _ in train_runs)} s, folds {', '.join(f'{s:.1f}' for s in folds)} s. "
             f"The Trainer's own loop (train_runtime): {record['train_runtime_s']} s."]
    save(record, "\n".join(lines), args.name, args.results)


if __name__ == "__main__":
    main()
