"""The README's main job offline: `dvc repro` with the shipped params, the model coming from a local
stand-in of the Hugging Face hub (tests/hub_server.py) that serves google/bert_uncased_L-4_H-512_A-8
with the real repository's file layout (pickled weights only, no tokenizer files but vocab.txt), and
the hub's failures as one line each that names the model."""
import csv
import hashlib
import io
import json
import re
import sys

import pytest
import yaml

from tests.conftest import dvc, run_cli, stages_run
from tests.hub_server import COMMIT, LFS_FILES, REPO, HubServer, bert_repo_files
from tests.tiny import PROJECT_ROOT, make_scratch_project, set_params

SHIPPED = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"}
OFFLINE_HINT = "to run offline"


@pytest.fixture(scope="module")
def hub_repo(tiny_bert):
    """({path: bytes}, state dict) of the stand-in repository at the pinned commit."""
    return bert_repo_files(tiny_bert)


def hub_env(endpoint, tmp_path):
    """The stage's environment: the stand-in hub, and an empty cache of its own so nothing cached hides
    the server (HF_HUB_CACHE too: a CI runner may point it elsewhere). No token goes to the server,
    and an outer HF_HUB_OFFLINE=1 must not turn the client away from it."""
    home = tmp_path / "hf-home"
    return {"HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}


def csv_with_conflicting_labels(pairs_csv):
    """The tiny CSV plus its first (query, title) pair again with the other label, as the real data has."""
    rows = list(csv.reader(io.StringIO(pairs_csv.read_text(encoding="utf-8"))))
    query, title, label = rows[1]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([*rows, [query, title, str(1 - int(label))]])
    return out.getvalue().encode()


def assert_nothing_written(project):
    assert not (project / "data/raw").exists() and not (project / "models/pretrained").exists()
    leftovers = [*(project / "data").glob(".raw.*"), *(project / "models").glob(".pretrained.*")]
    assert not leftovers, f"scratch folders left behind: {leftovers}"


def test_dvc_repro_with_the_shipped_params_fetches_the_pinned_hub_model(tmp_path, pairs_csv, tiny_bert, hub_repo):
    files, state = hub_repo
    hub = HubServer({REPO: {COMMIT: files}}, branches={REPO: {"main": COMMIT}}, page_size=3,  # 3: the listing takes pages
                    static={"/cord19-query-title-label.csv": csv_with_conflicting_labels(pairs_csv)})
    with hub as endpoint:
        project = make_scratch_project(tmp_path / "project", pairs_csv, tiny_bert, params={})
        # The shipped params but for the dataset URL, and:
        # train.epochs 1, not 3: each epoch also evaluates, and what is tested here is the wiring.
        set_params(project, {"data": {"url": f"{hub.static_url}/cord19-query-title-label.csv"},
                             "model": {"name": SHIPPED["model"]["name"]}, "train": {"epochs": 1}})
        params = yaml.safe_load((project / "params.yaml").read_text())
        changed = {f"{section}.{key}" for section in SHIPPED for key in SHIPPED[section]
                   if params[section][key] != SHIPPED[section][key]}
        assert changed == {"data.url", "train.epochs"}
        assert params["model"] == {"name": REPO, "revision": COMMIT, "num_layers": None}

        result = dvc("repro", cwd=project, **hub_env(endpoint, tmp_path))

    assert stages_run(result.stdout)[0] == "download"
    assert set(stages_run(result.stdout)) == set(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])
    assert f"download: {REPO} at revision {COMMIT} is commit {COMMIT}" in result.stdout
    assert (project / "models/model.onnx").is_file()

    pretrained = {path.name for path in (project / "models/pretrained").iterdir()}
    assert {"config.json", "model.safetensors"} <= pretrained, pretrained
    assert pretrained - {"config.json", "model.safetensors"} <= TOKENIZER_FILES, pretrained
    from safetensors.torch import load_file

    saved = load_file(project / "models/pretrained/model.safetensors")
    assert saved.keys() == state.keys()
    assert all(saved[key].equal(tensor) for key, tensor in state.items()), "weights differ from the served ones"

    # Only the config, the vocabulary and the pickled PyTorch weights left the hub: the flax and
    # TensorFlow weights (hundreds of MB on the real hub), the model card and .gitattributes never did.
    resolved = {path.rsplit("/", 1)[-1] for path in hub.requested("hub") if f"/resolve/{COMMIT}/" in path}
    assert resolved == {"config.json", "vocab.txt", "pytorch_model.bin"}
    blobs = {path for path in hub.requested("cdn") if path.startswith("/lfs/")}
    assert blobs == {f"/lfs/{hashlib.sha256(files['pytorch_model.bin']).hexdigest()}"}
    assert not {"/lfs/" + hashlib.sha256(files[name]).hexdigest() for name in LFS_FILES - {"pytorch_model.bin"}} & blobs

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    recorded = lock["stages"]["download"]["params"]["params.yaml"]
    assert recorded["model.name"] == REPO and recorded["model.revision"] == COMMIT

    # The pair served labelled both ways was counted, and kept once, as relevant: the shipped
    # split.conflicting_labels (the CSV has no other repeated pair).
    assert params["split"]["conflicting_labels"] == "relevant"
    served = list(csv.reader(io.StringIO(csv_with_conflicting_labels(pairs_csv).decode())))[1:]
    report = json.loads((project / "results/split/report.json").read_text())
    assert {key: report[key] for key in ("rows", "repeated_rows", "conflicting_pairs", "conflicting_labels", "pairs")} == {
        "rows": len(served), "repeated_rows": 1, "conflicting_pairs": 1, "conflicting_labels": "relevant",
        "pairs": len(served) - 1}
    assert ("split: data/raw/pairs.csv: 1 row(s) repeating a pair merged; 1 pair(s) labelled both 0 and 1 kept as "
            "relevant (split.conflicting_labels=relevant)") in result.stdout
    query, title, _ = served[0]
    split_rows = [row for side in ("train", "val")
                  for row in csv.DictReader(io.StringIO((project / f"data/split/{side}.csv").read_text(encoding="utf-8")))]
    assert [row["label"] for row in split_rows if (row["query"], row["title"]) == (query, title)] == ["1"]
    assert len(split_rows) == report["pairs"]


UNKNOWN_REVISION = "0123456789abcdef0123456789abcdef01234567"


# What the reason in the line must say, so that someone can act on it without a traceback.
REASONS = {
    "unknown revision": r"revision.*not found|not found.*revision|no (such )?revision|invalid rev",
    "unknown repository": r"repository.*not found|not found.*repository|no (such )?repository",
    "connection dropped mid-file": r"connection|incomplete|complete message",
}


@pytest.mark.parametrize("case", REASONS)
def test_hub_failure_is_one_line_naming_the_model_and_writes_nothing(tmp_path, pairs_csv, tiny_bert, hub_repo, case):
    files, _ = hub_repo
    repos = {} if case == "unknown repository" else {REPO: {COMMIT: files}}
    revision = UNKNOWN_REVISION if case == "unknown revision" else COMMIT
    hub = HubServer(repos, branches={REPO: {"main": COMMIT}} if repos else {},
                    drop={"pytorch_model.bin"} if case == "connection dropped mid-file" else ())
    project = make_scratch_project(tmp_path / "project", pairs_csv, tiny_bert, params={})
    set_params(project, {"model": {"name": REPO, "revision": revision}})
    with hub as endpoint:
        result = run_cli([sys.executable, "-m", "stages.download", "data/raw", "models/pretrained"], project,
                         check=False, **hub_env(endpoint, tmp_path))

    assert result.returncode == 1, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    prefix = f"error: model.name={REPO} (revision {revision}): cannot fetch from the Hugging Face hub ("
    assert line.startswith(prefix), result.stderr
    assert line.endswith(OFFLINE_HINT), line
    reason = line[len(prefix):].rpartition("); ")[0]
    assert re.search(REASONS[case], reason, flags=re.IGNORECASE), f"{case}: the reason is not clear: {line}"
    assert "Traceback" not in result.stderr
    assert_nothing_written(project)
    if case == "connection dropped mid-file":
        blob = f"/lfs/{hashlib.sha256(files['pytorch_model.bin']).hexdigest()}"
        assert hub.requested("cdn").count(blob) > 1, "huggingface_hub retries a dropped download before giving up"
