import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import csv_texts, make_scratch_project, write_pairs_csv, write_tiny_bert

STAGES = ["download", "split", "encode", "train", "export"]


def pipeline_env(**extra):
    """Environment for dvc and the stages: this interpreter's `python` first on PATH, no telemetry."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "DVC_NO_ANALYTICS": "1"}
    return {**env, **extra}


def run_cli(args, cwd, check=True, **env):
    """Run a command-line tool (dvc, git, a stage) in `cwd`; returns the CompletedProcess."""
    result = subprocess.run(args, cwd=cwd, env=pipeline_env(**env), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dvc(*args, cwd, check=True, **env):
    return run_cli([sys.executable, "-m", "dvc", *args], cwd, check=check, **env)


def git(*args, cwd):
    return run_cli(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args], cwd)


def stages_run(repro_output):
    """Names of the stages that `dvc repro` actually ran, in order."""
    return re.findall(r"^Running stage '(\w+)'", repro_output, flags=re.MULTILINE)


def saved_model_roc_auc(project):
    """ROC-AUC of models/finetuned on the validation pairs, computed here in dataset order with PyTorch."""
    import numpy as np
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from stages.metrics import classification_metrics
    from stages.scorer import INPUT_NAMES

    model = AutoModelForSequenceClassification.from_pretrained(project / "models/finetuned").eval()
    tokenizer = AutoTokenizer.from_pretrained(project / "models/finetuned")
    val_set = load_from_disk(project / "data/encoded/val")
    batch = tokenizer.pad({name: val_set[name] for name in INPUT_NAMES}, return_tensors="pt")
    with torch.no_grad():
        probabilities = torch.softmax(model(**batch).logits, dim=-1)[:, 1].numpy()
    return classification_metrics(np.array(val_set["label"]), probabilities)["roc_auc"]


@pytest.fixture(scope="session")
def pairs_csv(tmp_path_factory):
    return write_pairs_csv(tmp_path_factory.mktemp("data") / "pairs.csv")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, pairs_csv):
    return write_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert", csv_texts(pairs_csv))


@pytest.fixture(scope="session")
def reproduced_project(tmp_path_factory, pairs_csv, tiny_bert):
    """A scratch copy of the project after one full `dvc repro`, with its results committed."""
    project = make_scratch_project(tmp_path_factory.mktemp("reproduced") / "project", pairs_csv, tiny_bert)
    result = dvc("repro", cwd=project)
    assert stages_run(result.stdout) == STAGES
    git("add", "-A", cwd=project)
    git("commit", "-q", "-m", "first run", cwd=project)
    return project


@pytest.fixture
def project(reproduced_project, tmp_path):
    """A private copy of the reproduced project (git history, dvc cache and outputs) to change."""
    copy = tmp_path / "project"
    shutil.copytree(reproduced_project, copy, symlinks=True)
    return copy


@pytest.fixture
def fresh_project(tmp_path, pairs_csv, tiny_bert):
    """A scratch copy of the project that has not run yet."""
    return make_scratch_project(tmp_path / "project", pairs_csv, tiny_bert)
