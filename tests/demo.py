"""Offline demo: run the whole pipeline on a tiny local BERT and a synthetic CSV.

    python -m tests.demo [SCRATCH_DIR]

Builds the same inputs the tests use, copies the project into SCRATCH_DIR (default: a new
temporary folder) as its own git + dvc repository pointed at them, and runs `dvc repro`
there, so every stage runs and models/model.onnx comes out without any network access.
"""
import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.tiny import csv_texts, make_scratch_project, write_pairs_csv, write_tiny_bert


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scratch_dir", nargs="?", type=Path, help="an empty or missing folder to work in")
    scratch = parser.parse_args().scratch_dir or Path(tempfile.mkdtemp(prefix="relevance-demo-"))
    if scratch.exists() and any(scratch.iterdir()):
        sys.exit(f"error: {scratch} is not empty; pass an empty or missing folder")
    scratch.mkdir(parents=True, exist_ok=True)
    scratch = scratch.resolve()

    print(f"Building a synthetic CSV and a tiny BERT in {scratch}")
    pairs_csv = write_pairs_csv(scratch / "pairs.csv")
    tiny_bert = write_tiny_bert(scratch / "tiny-bert", csv_texts(pairs_csv))
    project = make_scratch_project(scratch / "project", pairs_csv, tiny_bert)

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in (["dvc", "repro"], ["dvc", "metrics", "show"]):
        print(f"\n$ cd {project} && {' '.join(command)}", flush=True)
        subprocess.run([sys.executable, "-m", *command], cwd=project, env=env, check=True)
    print(f"\nDone: {project / 'models/model.onnx'}\nTry a change: edit train.learning_rate in "
          f"{project / 'params.yaml'} and run `dvc repro` there; only the stages from train on rerun.")


if __name__ == "__main__":
    main()
