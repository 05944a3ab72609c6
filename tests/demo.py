"""Offline demo: run the whole pipeline on a tiny local BERT and a synthetic CSV.

    python -m tests.demo [SCRATCH_DIR]

Builds the same inputs the tests use, copies the project into SCRATCH_DIR (default: a new
temporary folder) as its own git + dvc repository pointed at them, with tune/ and params.yaml's
comments, and runs `dvc repro` there, so every stage runs and models/model.onnx comes out without
any network access. The run is committed as the baseline, so `dvc exp run`, `dvc params diff` and
`dvc metrics diff` compare against it, and the demo prints the next steps to try there.
"""
import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.synthetic import TUNE_FILES
from tests.tiny import csv_texts, make_scratch_project, write_pairs_csv, write_tiny_bert

TINY_STUDY = "python -m tune --trials 2 --study demo"  # two trials of one experiment each, up to train


def make_demo_project(dest, pairs_csv, tiny_bert):
    """The scratch project with what `python -m tune` needs, and params.yaml with its comments."""
    return make_scratch_project(dest, pairs_csv, tiny_bert, extra_files=TUNE_FILES, keep_comments=True)


def commit_baseline(project):
    """Commit what `dvc repro` wrote for git (dvc.lock, the metrics, DVC's .gitignore entries): HEAD
    is then the baseline that experiments and `dvc metrics diff` compare with."""
    git = ["git", "-c", "user.name=demo", "-c", "user.email=demo@localhost"]
    subprocess.run(git + ["add", "-A"], cwd=project, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "baseline: dvc repro on the synthetic pairs"], cwd=project, check=True)


def learning_rate_change(project):
    """(an experiment's -S setting, the README's sed edit of params.yaml) that halve train.learning_rate
    from this project's value: the tiny model's, not the README's 5.0e-5."""
    text = (Path(project) / "params.yaml").read_text()
    (value,) = re.findall(r"^  learning_rate: (\S+)", text, flags=re.MULTILINE)
    halved = f"{float(value) / 2:g}"
    pattern = value.replace(".", r"\.")  # a sed pattern: . escaped
    edit = f"s/learning_rate: {pattern}/learning_rate: {halved}/"
    return f"train.learning_rate={halved}", f"sed -i {shlex.quote(edit)} params.yaml"


def summary(project, pairs_csv):
    """What the demo made, what its figures mean, and the next steps to try in `project`."""
    with open(pairs_csv, encoding="utf-8") as f:
        pairs = sum(1 for _ in f) - 1  # after the header
    setting, edit = learning_rate_change(project)
    return f"""
Done: {project / 'models/model.onnx'}; every stage ran, and the run is committed as the baseline.
These figures come from a tiny randomly initialised BERT (2 layers of 32) trained and checked on {pairs}
synthetic pairs: they show that the pipeline runs, not how good a model it makes. An fp32 ROC-AUC near
0.7, below the TF-IDF baseline's 0.93, is expected here.

Compare a change with the baseline there, with this venv active:
  cd {project}
  dvc exp run -S {setting} && dvc exp show     # as an experiment: reruns train and the stages after it
or edit params.yaml as the README does (the tiny model's learning rate, not the README's 5.0e-5):
  {edit} && dvc repro && dvc params diff && dvc metrics diff
or run a tiny Optuna study, each trial a DVC experiment (a minute or two; report: results/tune/demo.md):
  {TINY_STUDY}"""


def main():
    parser = argparse.ArgumentParser(prog="python -m tests.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scratch_dir", nargs="?", type=Path, help="an empty or missing folder to work in")
    scratch = parser.parse_args().scratch_dir or Path(tempfile.mkdtemp(prefix="relevance-demo-"))
    if scratch.exists() and any(scratch.iterdir()):
        sys.exit(f"error: {scratch} is not empty; pass an empty or missing folder")
    scratch.mkdir(parents=True, exist_ok=True)
    scratch = scratch.resolve()

    print(f"Building a synthetic CSV and a tiny BERT in {scratch}")
    pairs_csv = write_pairs_csv(scratch / "pairs.csv")
    tiny_bert = write_tiny_bert(scratch / "tiny-bert", csv_texts(pairs_csv))
    project = make_demo_project(scratch / "project", pairs_csv, tiny_bert)

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    print(f"\n$ cd {project} && dvc repro", flush=True)
    subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, check=True)
    commit_baseline(project)
    print(f"\n$ cd {project} && dvc metrics show", flush=True)
    subprocess.run([sys.executable, "-m", "dvc", "metrics", "show"], cwd=project, env=env, check=True)
    print(summary(project, pairs_csv))


if __name__ == "__main__":
    main()
