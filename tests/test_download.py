"""download: local and file:// inputs, checksums, safetensors-only models, and clear offline errors."""
import hashlib
import shutil
import sys

import pytest

from stages.common import StageError
from stages.download import check_sha256, fetch_csv, fetch_model
from tests.conftest import run_cli
from tests.http_server import BODY, FlakyServer, Handler
from tests.tiny import set_params


def run_download(project, *options):
    return run_cli([sys.executable, "-m", "stages.download", "data/raw", "models/pretrained", *options], project, check=False)


def assert_nothing_written(project):
    assert not (project / "data/raw").exists() and not (project / "models/pretrained").exists()
    assert not list((project / "data").glob(".raw.*")), "no scratch folder left behind"


@pytest.fixture(scope="module")
def server():
    with FlakyServer() as url:
        yield url


@pytest.mark.parametrize("path", ["/good.csv", "/slow.csv", "/flaky.csv"])
def test_http_download_completes_through_slow_and_transient_failures(fresh_project, server, path):
    set_params(fresh_project, {"data": {"url": server + path, "sha256": hashlib.sha256(BODY).hexdigest()}})
    result = run_download(fresh_project, "--timeout", "1")
    assert result.returncode == 0, result.stderr
    assert (fresh_project / "data/raw/pairs.csv").read_bytes() == BODY
    if path == "/flaky.csv":
        assert "HTTP 503" in result.stderr and "retrying in 1 s (1/3)" in result.stderr


@pytest.mark.parametrize(("path", "reason"), [
    ("/missing.csv", "HTTP 404 Not Found"),
    ("/truncated.csv", "cannot download (IncompleteRead("),
    ("/stalled.csv", "cannot download (timed out)"),
])
def test_failed_http_download_names_the_url_and_writes_nothing(fresh_project, server, path, reason):
    url = server + path
    set_params(fresh_project, {"data": {"url": url}})
    result = run_download(fresh_project, "--timeout", "1", "--retries", "1")
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: data.url={url}: {reason}")
    assert error.endswith("set data.url in params.yaml to a local CSV path or file:// URL to run offline")
    assert Handler.hits[path] == (1 if path == "/missing.csv" else 2), "only transient failures are retried"
    assert_nothing_written(fresh_project)


def test_checksum_mismatch_prints_both_hashes_and_writes_nothing(fresh_project, pairs_csv):
    actual = hashlib.sha256(pairs_csv.read_bytes()).hexdigest()
    set_params(fresh_project, {"data": {"sha256": "ab" * 32}})
    result = run_download(fresh_project)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: data.url={pairs_csv}: sha256 is {actual}, but data.sha256 expects {'ab' * 32}")
    assert_nothing_written(fresh_project)


@pytest.mark.parametrize(("remove", "message"), [
    ("config.json", "no config.json in"),
    ("tokenizer", "cannot load its tokenizer"),
])
def test_model_folder_missing_config_or_tokenizer_fails_at_download(fresh_project, tiny_bert, tmp_path, remove, message):
    broken = shutil.copytree(tiny_bert, tmp_path / "broken-model")
    for name in (["config.json"] if remove == "config.json" else ["tokenizer.json", "tokenizer_config.json", "vocab.txt"]):
        (broken / name).unlink()
    set_params(fresh_project, {"model": {"name": str(broken)}})
    result = run_download(fresh_project)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"error: model.name={broken}: {message}")
    assert_nothing_written(fresh_project)


def test_csv_is_copied_from_a_local_path_or_file_url(pairs_csv, tmp_path):
    fetch_csv(str(pairs_csv), tmp_path / "a.csv")
    fetch_csv(pairs_csv.as_uri(), tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes() == pairs_csv.read_bytes()


def test_sha256_mismatch_names_both_hashes(pairs_csv):
    actual = hashlib.sha256(pairs_csv.read_bytes()).hexdigest()
    check_sha256(pairs_csv, actual.upper(), "x")
    check_sha256(pairs_csv, None, "x")
    with pytest.raises(StageError, match=f"sha256 is {actual}, but data.sha256 expects 0+$"):
        check_sha256(pairs_csv, "0" * 64, "x")


def test_local_model_folder_is_copied_with_safetensors_weights(tiny_bert, tmp_path):
    fetch_model(str(tiny_bert), "main", tmp_path / "pretrained")
    names = sorted(p.name for p in (tmp_path / "pretrained").iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


def pickled_copy(tiny_bert, tmp_path, state=None):
    """The tiny model as the default model's hub repository has it: pytorch_model.bin, vocab.txt, and a
    config.json without model_type (Google's TensorFlow bert_config.json), no safetensors, no tokenizer files."""
    import json

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "bert-pickled"
    folder.mkdir()
    shutil.copyfile(tiny_bert / "vocab.txt", folder / "vocab.txt")
    config = json.loads((tiny_bert / "config.json").read_text())
    keys = ("hidden_size", "hidden_act", "initializer_range", "vocab_size", "hidden_dropout_prob", "num_attention_heads",
            "type_vocab_size", "max_position_embeddings", "num_hidden_layers", "intermediate_size",
            "attention_probs_dropout_prob")
    (folder / "config.json").write_text(json.dumps({key: config[key] for key in keys}))
    weights = load_file(tiny_bert / "model.safetensors")
    torch.save(state if state is not None else weights, folder / "pytorch_model.bin")
    return folder, weights


def test_pickled_weights_are_loaded_safely_and_saved_as_safetensors(tiny_bert, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    folder, weights = pickled_copy(tiny_bert, tmp_path)
    fetch_model(str(folder), "main", tmp_path / "pretrained")
    pretrained = tmp_path / "pretrained"
    assert "pytorch_model.bin" not in {p.name for p in pretrained.iterdir()}
    saved = load_file(pretrained / "model.safetensors")
    assert saved.keys() == weights.keys() and all(saved[k].equal(v) for k, v in weights.items())
    assert AutoConfig.from_pretrained(pretrained).model_type == "bert"
    assert AutoTokenizer.from_pretrained(pretrained)("Masks")["input_ids"] == AutoTokenizer.from_pretrained(tiny_bert)("Masks")["input_ids"]


class RunsACommand:
    """What a hostile pickle carries: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", ["os.system", "unknown global"])
def test_a_pickle_that_would_run_code_stops_the_stage_runs_nothing_and_writes_nothing(fresh_project, tiny_bert, tmp_path, payload):
    import argparse

    marker = tmp_path / "pwned"
    hostile = {"bert.embeddings.word_embeddings.weight": RunsACommand(marker)} if payload == "os.system" else {
        "settings": argparse.Namespace(lr=1)}
    folder, _ = pickled_copy(tiny_bert, tmp_path, state=hostile)
    set_params(fresh_project, {"model": {"name": str(folder)}})
    result = run_download(fresh_project)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {folder / 'pytorch_model.bin'}: refused to load: only tensors may be unpickled (")
    assert not marker.exists(), "the pickle's command ran"
    assert_nothing_written(fresh_project)


def test_refused_connection_fails_at_once_in_one_line_naming_the_url(fresh_project):
    url = "http://127.0.0.1:9/cord19.csv"  # the discard port: connection refused
    set_params(fresh_project, {"data": {"url": url}})
    result = run_download(fresh_project)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: data.url={url}: cannot download ([Errno 111] Connection refused); "
        "set data.url in params.yaml to a local CSV path or file:// URL to run offline"]
    assert_nothing_written(fresh_project)


def test_unreachable_hub_fails_in_one_line_naming_the_model(fresh_project, tmp_path):
    set_params(fresh_project, {"model": {"name": "google/bert_uncased_L-4_H-512_A-8", "revision": "main"}})
    result = run_cli([sys.executable, "-m", "stages.download", "data/raw", "models/pretrained"], fresh_project,
                     check=False, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf-home"))
    assert result.returncode == 1
    warning, line = result.stderr.strip().splitlines()
    assert warning.startswith("download: warning: model.revision=main is a moving ref; pin the commit hash")
    assert line.startswith("error: model.name=google/bert_uncased_L-4_H-512_A-8 (revision main): cannot fetch")
    assert line.endswith("set model.name in params.yaml to a local folder with config.json, tokenizer files and weights "
                         "to run offline")
    assert_nothing_written(fresh_project)


@pytest.mark.parametrize("name", ["{tmp}/no-such-model", "../no-such-model", "./no-such-model", "~/no-such-model"])
def test_a_missing_local_model_folder_stops_download_in_one_line_naming_the_folder(fresh_project, tmp_path, name):
    """A name starting with /, ./, ../ or ~ is a folder (~ expanded, relative ones under the project
    root): missing, it is refused before the CSV is fetched, not taken for a hub id."""
    name = name.format(tmp=tmp_path)
    folder = {"/": tmp_path / "no-such-model", "./": fresh_project / "no-such-model",
              "../": fresh_project.parent / "no-such-model", "~/": tmp_path / "home/no-such-model"}[name[:name.index("/") + 1]]
    set_params(fresh_project, {"model": {"name": name}})
    result = run_cli([sys.executable, "-m", "stages.download", "data/raw", "models/pretrained"], fresh_project,
                     check=False, HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    assert (result.returncode, result.stderr.strip().splitlines()) == (
        1, [f"error: model.name={name}: no such folder {folder}; a hub id starts with none of /, ./, ../, ~"])
    assert_nothing_written(fresh_project)


def test_local_model_paths_expand_home_and_resolve_under_the_project_root(tiny_bert, tmp_path, monkeypatch):
    from stages.common import local_model

    monkeypatch.setenv("HOME", str(tiny_bert.parent))
    monkeypatch.chdir(tmp_path)
    assert local_model(f"~/{tiny_bert.name}", "teacher.name") == tiny_bert
    assert local_model(f"../{tmp_path.name}", "model.name") == tmp_path
    assert local_model("google/bert_uncased_L-4_H-512_A-8", "model.name") is None  # a hub id
    with pytest.raises(StageError, match=rf"^teacher.name=./gone: no such folder {tmp_path}/gone;"):
        local_model("./gone", "teacher.name")
