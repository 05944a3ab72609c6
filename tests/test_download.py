"""download: local and file:// inputs, checksums, safetensors-only models, and clear offline errors."""
import hashlib
import shutil
import sys

import pytest

from stages.common import StageError
from stages.download import check_sha256, fetch_csv, fetch_model
from tests.conftest import run_cli
from tests.tiny import set_params


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


def test_model_without_safetensors_weights_is_refused(tiny_bert, tmp_path):
    pickled_only = shutil.copytree(tiny_bert, tmp_path / "pickled")
    (pickled_only / "model.safetensors").rename(pickled_only / "pytorch_model.bin")
    with pytest.raises(StageError, match=r"no \*\.safetensors .*safetensors only"):
        fetch_model(str(pickled_only), "main", tmp_path / "pretrained")
    assert not (tmp_path / "pretrained").exists()


def test_unreachable_url_fails_in_one_line_naming_it_and_leaves_no_output(fresh_project):
    url = "http://127.0.0.1:9/cord19.csv"  # the discard port: connection refused
    set_params(fresh_project, {"data": {"url": url}})
    result = run_cli([sys.executable, "-m", "stages.download", "data/raw", "models/pretrained"], fresh_project, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: data.url={url}: cannot download ([Errno 111] Connection refused); "
        "set data.url in params.yaml to a local CSV path or file:// URL to run offline"]
    assert not (fresh_project / "data/raw").exists() and not (fresh_project / "models/pretrained").exists()


def test_unreachable_hub_fails_in_one_line_naming_the_model(fresh_project, tmp_path):
    set_params(fresh_project, {"model": {"name": "google/bert_uncased_L-4_H-512_A-8", "revision": "main"}})
    result = run_cli([sys.executable, "-m", "stages.download", "data/raw", "models/pretrained"], fresh_project,
                     check=False, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf-home"))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: model.name=google/bert_uncased_L-4_H-512_A-8 (revision main): cannot fetch")
    assert line.endswith("set model.name in params.yaml to a local folder with config.json, tokenizer files "
                         "and model.safetensors to run offline")
    assert not (fresh_project / "data/raw").exists() and not (fresh_project / "models/pretrained").exists()
