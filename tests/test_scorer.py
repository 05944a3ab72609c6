"""The deployable model: metadata, tokenizer and int8 beside model.onnx, and the torch-free scorer
(scorer/) agreeing with PyTorch, from Python and its command line."""
import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import dvc, pipeline_env, run_cli
from tests.tiny import set_params

PAIRS = [("coronavirus vaccine trial", "Vaccine antibody trial, a cohort study"),
         ("masks and face coverings", "Football league transfer news"),
         ("bats origin", "Zoonotic spillover from bats: the origin of the outbreak in patients during the pandemic"),
         ("heart", "Cardiac")]


def pytorch_probabilities(project, queries, titles):
    """The reference: transformers tokenizer and model from models/finetuned, called by keyword."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = project / "models/finetuned"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    max_length = json.loads((project / "models/metadata.json").read_text())["max_length"]
    batch = tokenizer(queries, titles, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                       attention_mask=batch["attention_mask"]).logits
    return torch.softmax(logits, dim=-1)[:, 1].numpy()


def run_scorer(project, *args):
    """Run `python -m scorer ARGS` in a fresh interpreter; report whether torch, transformers or the stages got imported.
    -B: it imports scorer/ from `project`, the shared reproduced project, which it must not write bytecode into."""
    code = ("import runpy, sys; sys.argv = ['scorer', *sys.argv[1:]]; runpy.run_module('scorer', run_name='__main__');"
            "print('IMPORTED', [m for m in ('torch', 'transformers', 'stages') if m in sys.modules], file=sys.stderr)")
    return run_cli([sys.executable, "-B", "-c", code, *map(str, args)], cwd=project, check=False)


def test_metadata_describes_the_model_for_consumers(reproduced_project):
    metadata = json.loads((reproduced_project / "models/metadata.json").read_text())
    assert metadata["labels"] == ["irrelevant", "relevant"]
    assert metadata["inputs"] == ["input_ids", "token_type_ids", "attention_mask"] and metadata["output"] == "logits"
    # min_onnxruntime: the oldest release CI runs the files in (test_runtimes checks that it does).
    assert (metadata["max_length"], metadata["opset"], metadata["min_onnxruntime"]) == (128, 18, "1.17")
    assert metadata["made_by"]["params"]["train"]["learning_rate"] == 0.001
    assert metadata["made_by"]["git_revision"]


def test_onnx_files_carry_the_lowest_ir_version_for_their_opset(reproduced_project):
    import onnx

    for name in ("model.onnx", "model.int8.onnx"):
        model = onnx.load(reproduced_project / "models" / name)
        opsets = {entry.domain: entry.version for entry in model.opset_import}
        assert opsets[""] == 18 and model.ir_version == 8, (name, opsets, model.ir_version)


def test_a_failing_int8_check_leaves_model_onnx_in_place(project):
    set_params(project, {"quantize": {"min_spearman": 1.01, "max_mean_score_diff": 0.0}})
    result = dvc("repro", cwd=project, check=False)
    assert result.returncode != 0
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: models/model.int8.onnx: int8 scores rank the ")
    assert "below quantize.min_spearman=1.01" in error
    assert error.endswith("more than quantize.max_mean_score_diff=0.0; model.onnx is unaffected")
    assert not (project / "models/model.int8.onnx").exists()
    for name in ("model.onnx", "tokenizer.json", "metadata.json"):
        assert (project / "models" / name).exists(), name
    status = dvc("status", "export", cwd=project).stdout
    assert "Data and pipelines are up to date" in status, "export's outputs stay recorded in dvc.lock"


def test_scored_pairs_equal_pytorch_without_importing_torch(reproduced_project, tmp_path):
    input_csv, output_csv = tmp_path / "pairs.csv", tmp_path / "scored.csv"
    with open(input_csv, "w", newline="") as f:
        csv.writer(f).writerows([("query", "title", "doc_id"), *[(q, t, i) for i, (q, t) in enumerate(PAIRS)]])
    result = run_scorer(reproduced_project, "pairs", input_csv, output_csv)
    assert result.returncode == 0, result.stderr
    assert "IMPORTED []" in result.stderr
    with open(output_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["query"], r["title"], r["doc_id"]) for r in rows] == [(q, t, str(i)) for i, (q, t) in enumerate(PAIRS)]
    expected = pytorch_probabilities(reproduced_project, [q for q, _ in PAIRS], [t for _, t in PAIRS])
    np.testing.assert_allclose([float(r["relevance"]) for r in rows], expected, atol=1e-4)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_scored_file_gets_the_mode_the_umask_gives_a_new_file(reproduced_project, tmp_path, umask):
    import shlex
    import stat

    input_csv, output_csv = tmp_path / "pairs.csv", tmp_path / "scored.csv"
    input_csv.write_text("query,title\ncovid masks,Face masks in schools\n")
    command = [sys.executable, "-B", "-m", "scorer", "pairs", str(input_csv), str(output_csv)]  # -B: as run_scorer
    run_cli(["sh", "-c", f"umask {umask:03o} && exec {shlex.join(command)}"], cwd=reproduced_project)
    assert stat.S_IMODE(output_csv.stat().st_mode) == 0o666 & ~umask


def test_scores_come_back_in_input_order_when_batches_are_sorted_by_length(reproduced_project):
    from scorer import RelevanceScorer

    scorer = RelevanceScorer(reproduced_project / "models/model.onnx")
    queries, titles = [q for q, _ in PAIRS] * 3, [t for _, t in PAIRS] * 3  # 12 pairs, lengths unsorted
    one_at_a_time = [scorer.scores([query], [title])[0] for query, title in zip(queries, titles)]
    np.testing.assert_allclose(scorer.scores(queries, titles, batch_size=5), one_at_a_time, atol=1e-6)
    np.testing.assert_allclose(one_at_a_time, pytorch_probabilities(reproduced_project, queries, titles), atol=1e-4)
    assert scorer.scores([], [], batch_size=5).shape == (0,)


@pytest.mark.parametrize("model", ["models/model.onnx", "models/model.int8.onnx"])
def test_rank_prints_the_top_titles_best_first(reproduced_project, tmp_path, model):
    from scorer import RelevanceScorer

    query, titles = "coronavirus vaccine trial", [title for _, title in PAIRS]
    titles_file = tmp_path / "titles.txt"
    titles_file.write_text("\n".join(titles) + "\n\n")
    result = run_scorer(reproduced_project, "--model", model, "rank", query, titles_file, "--top-k", 3)
    assert result.returncode == 0, result.stderr
    assert "IMPORTED []" in result.stderr
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [int(position) for position, _, _ in lines] == [1, 2, 3]
    scores = [float(score) for _, score, _ in lines]
    assert scores == sorted(scores, reverse=True)
    # The file's own top three, each title with its own score (printed to 4 decimals), as the Python
    # API scores them with the same file, int8 as float32.
    own = RelevanceScorer(reproduced_project / model).scores([query] * len(titles), titles)
    assert len(set(own.round(4))) == len(titles), f"tied scores leave the order open: {own}"
    assert [title for _, _, title in lines] == [titles[i] for i in np.argsort(-own)[:3]]
    np.testing.assert_allclose(scores, np.sort(own)[::-1][:3], atol=1e-4)
    # And PyTorch's top three: float32 to PyTorch's scores, int8 near them (2.6e-4 apart here; the
    # titles' scores are 0.011 and more apart, so int8 keeps their order).
    expected = pytorch_probabilities(reproduced_project, [query] * len(titles), titles)
    assert [title for _, _, title in lines] == [titles[i] for i in np.argsort(-expected)[:3]]
    np.testing.assert_allclose(scores, np.sort(expected)[::-1][:3], atol=1e-4 if model == "models/model.onnx" else 1e-2)


@pytest.mark.parametrize(("content", "message"), [
    ("", "file is empty; expected a header with query,title"),
    ("query,name\nq,t\n", "missing column(s) title; expected query,title"),
    ("query,title\n", "no rows after the header"),
])
def test_bad_pairs_file_is_refused_in_one_line_and_writes_nothing(reproduced_project, tmp_path, content, message):
    input_csv, output_csv = tmp_path / "pairs.csv", tmp_path / "scored.csv"
    input_csv.write_text(content)
    result = run_scorer(reproduced_project, "pairs", input_csv, output_csv)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: {input_csv}: {message}"
    assert list(tmp_path.iterdir()) == [input_csv]


@pytest.mark.parametrize(("shipped", "missing"), [(["model.onnx"], "metadata.json"),
                                                  (["model.onnx", "metadata.json"], "tokenizer.json")])
def test_a_model_copied_without_its_files_names_the_missing_one_in_one_line(reproduced_project, tmp_path, shipped,
                                                                            missing):
    import shutil

    from scorer import RelevanceScorer

    model_dir, input_csv, output_csv = tmp_path / "served", tmp_path / "pairs.csv", tmp_path / "scored.csv"
    model_dir.mkdir()
    for name in shipped:
        shutil.copyfile(reproduced_project / "models" / name, model_dir / name)
    input_csv.write_text("query,title\ncovid masks,Face masks in schools\n")
    expected = (f"{model_dir / missing}: no such file; metadata.json and tokenizer.json ship beside model.onnx "
                "(the export stage writes all three to models/): copy them with it")
    with pytest.raises(FileNotFoundError) as raised:
        RelevanceScorer(model_dir / "model.onnx")
    assert str(raised.value) == expected
    result = run_scorer(reproduced_project, "--model", model_dir / "model.onnx", "pairs", input_csv, output_csv)
    assert (result.returncode, result.stderr.splitlines()) == (1, [f"error: {expected}"])
    assert not output_csv.exists()


def test_dash_reads_pairs_from_standard_input_and_writes_them_to_standard_output(reproduced_project, tmp_path):
    from scorer import RelevanceScorer

    model = reproduced_project / "models/model.onnx"
    pairs = "query,title\n" + "".join(f"{query},{title.replace(',', '')}\n" for query, title in PAIRS)
    # -B: scorer/ is imported from the shared reproduced project, as run_scorer does; run in tmp_path,
    # where a file named - would land.
    result = subprocess.run([sys.executable, "-B", "-m", "scorer", "--model", model, "pairs", "-", "-"], cwd=tmp_path,
                            input=pairs, capture_output=True, text=True, env=pipeline_env(PYTHONPATH=str(reproduced_project)))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1] == "scored 4 pairs into standard output"
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    expected = RelevanceScorer(model).scores([row["query"] for row in rows], [row["title"] for row in rows])
    assert [(row["query"], row["title"]) for row in rows] == [tuple(line.split(",")) for line in pairs.splitlines()[1:]]
    np.testing.assert_allclose([float(row["relevance"]) for row in rows], expected, atol=1e-6)
    assert list(tmp_path.iterdir()) == []


def test_output_in_a_missing_folder_is_refused_in_one_line(reproduced_project, tmp_path):
    input_csv = tmp_path / "pairs.csv"
    input_csv.write_text("query,title\ncovid masks,Face masks in schools\n")
    result = run_scorer(reproduced_project, "pairs", input_csv, tmp_path / "no-such-folder/scored.csv")
    assert (result.returncode, result.stderr.splitlines()) == (
        1, [f"error: {tmp_path}/no-such-folder/scored.csv: no folder {tmp_path}/no-such-folder to write it in"])


def test_help_reads_python_m_scorer_and_explains_every_argument():
    import argparse

    from scorer.__main__ import build_parser
    from tests.tiny import PROJECT_ROOT

    result = run_cli([sys.executable, "-B", "-m", "scorer", "--help"], cwd=PROJECT_ROOT)
    assert result.stdout.startswith("usage: python -m scorer ")
    parsers = [build_parser()]
    for parser in parsers:
        for action in parser._actions:
            assert action.help not in (None, argparse.SUPPRESS), f"{parser.prog}: {action.dest} has no help"
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    assert [parser.prog for parser in parsers] == ["python -m scorer", "python -m scorer pairs", "python -m scorer rank"]
