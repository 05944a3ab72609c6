"""teach: without a teacher, an empty data/teacher/ at once and no torch; with one (a tiny local
cross-encoder, tests/tiny.py), one score per row of each split CSV, in its order, as transformers
scores the pair alone; a missing teacher or one that gives no relevance score stops the stage in one
line naming teacher.name, with nothing written."""
import contextlib
import io
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from stages.common import read_all_pairs, run
from tests.tiny import PROJECT_ROOT, write_tiny_cross_encoder

COMMAND = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]["teach"]["cmd"].split()
LONG_TITLE = " ".join(["coronavirus vaccine trial"] * 60)  # 180 words: more tokens than the teacher takes


@pytest.fixture
def project(tmp_path, pairs_csv):
    """params.yaml as shipped, and data/split as split writes it (a few pairs; one of them too long
    for the teacher), with a stale data/teacher/ that only a run that succeeds may replace."""
    pairs = read_all_pairs(pairs_csv)
    split = tmp_path / "data" / "split"
    split.mkdir(parents=True)
    pairs.iloc[:40].to_csv(split / "train.csv", index=False)
    val = pairs.iloc[40:60].copy()
    val.iloc[3, val.columns.get_loc("title")] = LONG_TITLE
    val.to_csv(split / "val.csv", index=False)
    shutil.copyfile(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "data" / "teacher").mkdir()
    (tmp_path / "data" / "teacher" / "stale.npy").write_bytes(b"a previous run's")
    return tmp_path


def set_teacher(project, name):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["teacher"]["name"] = name
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def teach(project, monkeypatch):
    """dvc.yaml's teach command, run in this process in `project`; returns what it printed."""
    from stages.teach import main

    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", COMMAND[2:])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run(main)
    return printed.getvalue()


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, pairs_csv):
    """Tiny cross-encoders (tests.tiny) with a 1-logit, a 2-label and a 3-label head, their pooler's and
    classifier's weights drawn wide enough that pairs score apart."""
    from transformers import BertForSequenceClassification
    from transformers.utils import logging

    from tests.tiny import csv_texts

    root = tmp_path_factory.mktemp("teachers")
    base = write_tiny_cross_encoder(root / "base", csv_texts(pairs_csv))
    logging.set_verbosity_error()  # the load report of the heads resized below
    folders = {}
    for labels, name in enumerate(["one-logit", "two-label", "three-label"], start=1):
        folders[name] = shutil.copytree(base, root / name)
        torch.manual_seed(labels)
        model = BertForSequenceClassification.from_pretrained(base, num_labels=labels, ignore_mismatched_sizes=True)
        for weight in (model.bert.pooler.dense.weight, model.classifier.weight):
            torch.nn.init.normal_(weight, std=1.0)
        model.save_pretrained(folders[name])
    logging.set_verbosity_warning()
    return folders


def test_without_a_teacher_the_stage_writes_an_empty_folder_at_once_and_imports_no_torch(project):
    """As dvc repro runs it: a new interpreter, whose imports -X importtime lists; its CPU time,
    which other processes on the machine do not inflate, is the stage's whole cost."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, "-X", "importtime", *COMMAND[1:]], cwd=project, capture_output=True,
                            text=True, env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": ""})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "stages.common" in imported, "the imports are listed"
    assert not {module for module in imported if module.split(".")[0] in ("torch", "transformers")}
    assert (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime) < 1.0
    assert list((project / "data" / "teacher").iterdir()) == []
    assert yaml.safe_load((project / "results" / "teach" / "metrics.json").read_text()) == {}
    assert yaml.safe_load((project / "results" / "teach" / "report.json").read_text()) == {}


@pytest.mark.parametrize("head", ["one-logit", "two-label"])
def test_the_teacher_scores_every_pair_in_the_split_csvs_order(project, teachers, head, monkeypatch):
    """Each row's score is what transformers gives the pair alone (no padding), cut to the teacher's
    128 tokens: the relevance logit, or relevant minus irrelevant. The local folder is named as a
    user would name another experiment's model, relative to the project."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    shutil.copytree(teachers[head], project / "teacher")
    set_teacher(project, "./teacher")
    printed = teach(project, monkeypatch)
    assert "teach: val: 20 pairs scored, 1 cut to 128 tokens" in printed
    metrics = yaml.safe_load((project / "results" / "teach" / "metrics.json").read_text())
    assert metrics == {"train": {"truncated": 0}, "val": {"truncated": 1}}
    report = yaml.safe_load((project / "results" / "teach" / "report.json").read_text())
    assert report == {"max_length": 128, "train": {"pairs": 40, "truncated": 0}, "val": {"pairs": 20, "truncated": 1}}
    assert sorted(path.name for path in (project / "data" / "teacher").iterdir()) == ["train.npy", "val.npy"]

    model = AutoModelForSequenceClassification.from_pretrained(teachers[head]).eval()
    tokenizer = AutoTokenizer.from_pretrained(teachers[head])
    for split in ("train", "val"):
        scores = np.load(project / "data" / "teacher" / f"{split}.npy")
        pairs = read_all_pairs(project / "data" / "split" / f"{split}.csv")
        assert scores.dtype == np.float32 and scores.shape == (len(pairs),)
        with torch.no_grad():
            logits = torch.cat([model(**tokenizer(query, title, truncation=True, max_length=128,
                                                  return_tensors="pt")).logits
                                for query, title in zip(pairs["query"], pairs["title"])])
        expected = logits[:, 0] if head == "one-logit" else logits[:, 1] - logits[:, 0]
        np.testing.assert_allclose(scores, expected.numpy(), atol=1e-5)
        assert np.ptp(scores) > 0.01, "pairs score apart, so a misaligned row shows"


def assert_nothing_written(project):
    assert sorted(path.name for path in (project / "data" / "teacher").iterdir()) == ["stale.npy"]
    assert not (project / "results" / "teach" / "metrics.json").exists()
    assert sorted(path.name for path in (project / "data").iterdir()) == ["split", "teacher"], "no scratch left"


def test_a_missing_teacher_folder_is_refused_in_one_line_naming_teacher_name(project, monkeypatch):
    set_teacher(project, "./no-such-teacher")
    with pytest.raises(SystemExit, match=r"^error: teacher\.name=\./no-such-teacher: no such folder [^\n]*$"):
        teach(project, monkeypatch)
    assert_nothing_written(project)


@pytest.mark.parametrize(("teacher", "message"), [
    ("three-label", r"its head gives 3 logits, no relevance score; expected a cross-encoder's 1 relevance logit or 2 "
                    r"labels \(irrelevant, relevant\)"),
    ("encoder", r"its weights have no classifier, so it gives no relevance score; a teacher is a fine-tuned "
                r"cross-encoder with its classification head"),
])
def test_a_teacher_whose_head_gives_no_relevance_score_is_refused(project, teachers, tiny_bert, teacher, message,
                                                                   monkeypatch):
    shutil.copytree(tiny_bert if teacher == "encoder" else teachers[teacher], project / "teacher")
    set_teacher(project, "./teacher")
    with pytest.raises(SystemExit, match=rf"^error: teacher\.name=\./teacher: {message}$"):
        teach(project, monkeypatch)
    assert_nothing_written(project)
