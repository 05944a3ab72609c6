"""How each stage's time and memory grow with the rows of the judgments CSV.

For each size, a synthetic CSV of realistic pairs (bench.synthetic.write_scale_csv) and a tiny BERT
(hidden size 32) go through every stage's dvc.yaml command, in dvc.yaml's order, in a scratch copy
of the project with the shipped params (train: 1 epoch, batch 256), and then through the scorer CLI
on the validation pairs. Each command is measured by bench.memory: seconds, peak anonymous memory
(RssAnon summed over its process tree: what can run a machine out of memory) and peak RSS. The
table, the bytes each stage's peak anonymous memory grows by per added row, and the CPU are written
to bench/results/scale.md and scale.json.

    python -m bench.scale                          # 50k, 500k and 2M rows: about 25 minutes on 2 cores
    python -m bench.scale --rows 40000 400000 --name scale-40k-400k   # other sizes, into bench/results/NAME.md
    python -m bench.scale --rows 20000 200000 --teacher --name scale-teacher   # with teach and train.loss: margin_mse

--teacher: the tiny BERT with a one-logit head is also the teacher (teacher.name), so teach scores every
pair, and train distils its scores (train.loss: margin_mse) on steps of whole query groups.
"""
import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from bench.memory import cpu, measure
from bench.report import save, table
from bench.synthetic import csv_texts, make_scratch_project, pipeline_stages, write_scale_csv, write_tiny_bert

PARAMS = {"train": {"epochs": 1, "batch_size": 256, "eval_batch_size": 256, "warmup_steps": 0}}
VOCABULARY_ROWS = 5_000  # the tiny BERT's vocabulary comes from the first rows: every word, every digit


def write_tiny_teacher(model_dir, bert_dir):
    """The tiny BERT with a one-logit head (random): a cross-encoder's layout, for teach to score with."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    BertForSequenceClassification.from_pretrained(bert_dir, num_labels=1).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(bert_dir).save_pretrained(model_dir)
    return model_dir


def run_size(rows, scratch, teacher=False):
    csv_path = write_scale_csv(scratch / f"pairs-{rows}.csv", rows)
    head = scratch / "head.csv"
    head.write_text("".join(line for _, line in zip(range(VOCABULARY_ROWS + 1), open(csv_path, encoding="utf-8"))))
    model = write_tiny_bert(scratch / "tiny-bert", csv_texts(head))
    params = PARAMS
    if teacher:
        teacher_dir = write_tiny_teacher(scratch / "tiny-teacher", model)
        params = {**PARAMS, "teacher": {"name": str(teacher_dir)}, "train": {**PARAMS["train"], "loss": "margin_mse"}}
    project = make_scratch_project(scratch / f"project-{rows}", csv_path, model, params, use_git=False)
    commands = {**{name: shlex.split(" ".join(stage["cmd"].split())) for name, stage in pipeline_stages()},
                "scorer CLI": ["python", "-m", "scorer", "pairs", "data/split/val.csv", "scored.csv"]}
    results = {}
    for name, command in commands.items():
        command = [sys.executable if command[0] == "python" else command[0], *command[1:]]
        process, seconds, anon, rss = measure(command, cwd=project, stdout=open(project / f"{name}.log", "w"),
                                              stderr=open(project / f"{name}.err", "w"))
        if process.returncode:
            sys.exit(f"{name} at {rows} rows failed; see {project / f'{name}.err'}")
        results[name] = {"seconds": round(seconds, 1), "peak_anon_mib": round(anon), "peak_rss_mib": round(rss)}
        print(f"{rows:>10,} rows  {name:<10} {seconds:7.1f} s  anon {anon:6.0f} MiB  RSS {rss:6.0f} MiB", flush=True)
    return results


def bytes_per_row(results, sizes):
    """Growth of each stage's peak anonymous memory per added row, between consecutive sizes."""
    return {f"{small}-{large}": {name: round((results[large][name]["peak_anon_mib"] - results[small][name]["peak_anon_mib"])
                                             * 2**20 / (large - small)) for name in results[small]}
            for small, large in zip(sizes, sizes[1:])}


def markdown(results, growth, sizes, machine, teacher=False):
    names = list(results[sizes[0]])
    return "\n".join([
        f"# Stage time and memory against rows ({machine})", "",
        "`python -m bench.scale`: each stage's dvc.yaml command on a synthetic CSV of realistic pairs "
        "(50 titles a query), a tiny BERT (hidden size 32), shipped params with train at 1 epoch, batch 256. "
        "Peak anonymous memory is RssAnon summed over the stage's process tree."
        + (" With a teacher (`--teacher`): the tiny BERT with a one-logit head as teacher.name, so teach scores "
           "every pair, and train.loss: margin_mse (steps of whole query groups)." if teacher else ""), "",
        *table(("stage", *(f"{rows:,} rows: s / anon MiB / RSS MiB" for rows in sizes)),
               [(name, *(f"{r['seconds']} / {r['peak_anon_mib']} / {r['peak_rss_mib']}" for r in (results[s][name] for s in sizes)))
                for name in names]),
        "", "Peak anonymous memory added per added row (bytes):", "",
        *table(("stage", *(f"{span} rows" for span in growth)), [(name, *(g[name] for g in growth.values())) for name in names])])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 500_000, 2_000_000])
    parser.add_argument("--scratch", type=Path, help="keep the scratch projects here (default: a temporary folder)")
    parser.add_argument("--name", default="scale", help="results file name in bench/results (default: %(default)s)")
    parser.add_argument("--teacher", action="store_true", help="score the pairs with a teacher and distil it (see above)")
    args = parser.parse_args()
    sizes = sorted(args.rows)
    with tempfile.TemporaryDirectory(prefix="scale-") as temporary:
        scratch = args.scratch or Path(temporary)
        scratch.mkdir(parents=True, exist_ok=True)
        results = {rows: run_size(rows, scratch, args.teacher) for rows in sizes}
    growth = bytes_per_row(results, sizes)
    machine = cpu()
    report = markdown(results, growth, sizes, machine, args.teacher)
    save({"machine": machine, "results": results, "bytes_per_row": growth}, report, args.name)
    print(report)


if __name__ == "__main__":
    main()
