"""vespa: the application package passes Vespa's own services.xml schemas, and the inputs Vespa's
token features build from the embedded query and title score every pair that fits in L as the
scorer does; a model whose pair template Vespa cannot build gets one line instead of a package.

No Vespa engine runs here: its schema parser and the ranking itself are Java. stages.vespa's
token_features re-implements Vespa's rank features from TokenTransformer.java."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import torch

from bench.synthetic import write_tiny_bert
from scorer import RelevanceScorer
from stages.common import read_all_pairs
from stages.export import export_onnx, save_serving_tokenizer, write_metadata
from stages.vespa import embed, separators, token_features, vespa_tokenizer, write_package
from tests.conftest import run_cli
from tests.tiny import PROJECT_ROOT, TINY_MODELS, csv_texts

SCHEMAS = PROJECT_ROOT.parent / "shared/vespa/schema"


def jing(services_xml):
    """Vespa's validation of services.xml, with its RELAX NG schemas (../shared/vespa/schema, beside the checkout)."""
    if not (shutil.which("jing") and SCHEMAS.is_dir()):
        if os.environ.get("CI"):
            pytest.fail("CI needs jing (.ci/run installs it) and ../shared/vespa/schema")
        pytest.skip("needs jing (apt-get install jing) and ../shared/vespa/schema")
    return subprocess.run(["jing", "-c", str(SCHEMAS / "services.rnc"), str(services_xml)], capture_output=True, text=True)


def test_the_pipelines_package_passes_vespas_services_schema(reproduced_project):
    package = reproduced_project / "models/vespa"
    assert sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file()) == [
        "files/relevance.onnx", "models/tokenizer.json", "schemas/doc.sd", "search/query-profiles/default.xml",
        "search/query-profiles/types/root.xml", "services.xml"]
    assert (package / "files/relevance.onnx").read_bytes() == (reproduced_project / "models/model.onnx").read_bytes()
    result = jing(package / "services.xml")
    assert result.returncode == 0 and not result.stdout, result.stdout
    services = (package / "services.xml").read_text()
    assert '<component id="tokenizer" type="hugging-face-tokenizer">' in services
    assert '<model path="models/tokenizer.json"/>' in services


def test_a_misspelt_element_is_refused_by_the_schema_check(reproduced_project, tmp_path):
    broken = tmp_path / "services.xml"
    broken.write_text((reproduced_project / "models/vespa/services.xml").read_text().replace("document-api", "documents-api"))
    result = jing(broken)
    assert result.returncode != 0 and "documents-api" in result.stdout


def export_models_dir(model_dir, models_dir, example_pairs, length):
    """model.onnx, tokenizer.json and metadata.json of a tiny model with a new head, as export writes them."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from transformers import AutoConfig

    from stages.common import LABELS, ONE_LOGIT_LABELS, model_inputs

    labels = ONE_LOGIT_LABELS if AutoConfig.from_pretrained(model_dir).num_labels == 1 else LABELS
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels))).eval()
    with torch.no_grad():  # weights far from the initializer's 0.02, so scores spread and a mismatch shows
        for weight in (p for p in model.parameters() if p.dim() == 2):
            weight.normal_(0.0, 0.3)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    names = model_inputs(model, tokenizer)
    example = tokenizer(*example_pairs, padding=True, return_tensors="np")
    models_dir.mkdir()
    export_onnx(model, {name: example[name].astype(np.int64) for name in names}, models_dir / "model.onnx", 18)
    save_serving_tokenizer(tokenizer, models_dir / "tokenizer.json", length)
    write_metadata(models_dir / "metadata.json", model, names, 18, length)
    return json.loads((models_dir / "metadata.json").read_text())


def vespa_scores(models_dir, metadata, queries, titles, length, cls, sep):
    """The model's P(relevant) on the inputs Vespa builds, one hit at a time as Vespa runs it, then
    the global-phase expression."""
    tokenizer = vespa_tokenizer(models_dir / "tokenizer.json")
    session = onnxruntime.InferenceSession(str(models_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    relevant, scores = metadata["labels"].index("relevant"), []
    for query, title in zip(embed(tokenizer, queries, length), embed(tokenizer, titles, length)):
        features = token_features(query, title, length, cls, sep)
        (logits,) = session.run(["logits"], {name: np.array([features[name]], dtype=np.int64) for name in metadata["inputs"]})
        margin = logits[0, relevant] - (0.0 if metadata["probability"] == "sigmoid" else logits[0, 1 - relevant])
        scores.append(1 / (1 + np.exp(-margin)))
    return np.array(scores)


@pytest.mark.parametrize(("model", "cls_sep", "feature"), [
    ("bert-base ids", (101, 102), "tokenInputIds({L}, "),
    ("bert", (2, 3), "customTokenInputIds(2, 3, {L}, "),
    ("cross-encoder", (2, 3), "customTokenInputIds(2, 3, {L}, "),
    ("modernbert", (1, 2), "customTokenInputIds(1, 2, {L}, "),
])
def test_vespas_inputs_score_every_pair_that_fits_as_the_scorer_does(pairs_csv, tmp_path, monkeypatch, model, cls_sep,
                                                                    feature):
    from transformers import AutoTokenizer

    monkeypatch.chdir(PROJECT_ROOT)  # metadata.json records params.yaml
    texts = csv_texts(pairs_csv)
    model_dir = (write_tiny_bert(tmp_path / "tiny", texts, bert_base_ids=True) if model == "bert-base ids"
                 else TINY_MODELS[model](tmp_path / "tiny", texts))
    pairs = read_all_pairs(pairs_csv)
    queries, titles = pairs["query"].tolist(), pairs["title"].tolist()
    lengths = np.array([len(ids) for ids in AutoTokenizer.from_pretrained(model_dir)(queries, titles)["input_ids"]])
    length = int(np.median(lengths))  # L: about half the fixture's pairs fit
    metadata = export_models_dir(model_dir, tmp_path / "models", (queries[:4], titles[:4]), length)

    tokenizer = vespa_tokenizer(tmp_path / "models/tokenizer.json")
    assert separators(tokenizer, metadata["inputs"]) == (cls_sep, None)
    write_package(tmp_path / "models", tmp_path / "package", "model.onnx", length, 50, *cls_sep)
    schema = (tmp_path / "package/schemas/doc.sd").read_text()
    assert feature.format(L=length) + "query(q_tokens), attribute(title_tokens))" in schema
    assert ("tokenTypeIds" in schema) == ("token_type_ids" in metadata["inputs"]) and "rerank-count: 50" in schema

    fits = lengths <= length
    assert 0 < fits.sum() < len(fits), "the fixture has pairs on both sides of L"
    expected = RelevanceScorer(tmp_path / "models/model.onnx").scores(queries, titles)
    actual = vespa_scores(tmp_path / "models", metadata, queries, titles, length, *cls_sep)
    np.testing.assert_allclose(actual[fits], expected[fits], atol=1e-4, rtol=0)
    assert np.ptp(expected[fits]) > 0.05, "the scores differ between pairs: the comparison can tell"


def test_features_follow_vespas_token_transformer():
    """CLS q SEP t SEP, types 0 through the first SEP then 1, mask over the sequence, zeros after; a
    sequence longer than L cut at L, final SEP included."""
    features = token_features([7, 8, 0, 0], [9, 0, 0, 0], 8, 101, 102)
    assert features == {"input_ids": [101, 7, 8, 102, 9, 102, 0, 0], "token_type_ids": [0, 0, 0, 0, 1, 1, 0, 0],
                        "attention_mask": [1, 1, 1, 1, 1, 1, 0, 0]}
    cut = token_features([7, 8, 9, 10], [11, 12, 13, 14], 8, 101, 102)
    assert cut["input_ids"] == [101, 7, 8, 9, 10, 102, 11, 12] and cut["attention_mask"] == [1] * 8


def test_a_model_vespa_cannot_feed_gets_one_line_instead_of_a_package(tiny_model, tmp_path, pairs_csv):
    """RoBERTa joins a pair with two separators; Vespa's token features put one."""
    from transformers import AutoTokenizer

    models_dir = tmp_path / "models"
    models_dir.mkdir()
    save_serving_tokenizer(AutoTokenizer.from_pretrained(tiny_model("roberta")), models_dir / "tokenizer.json", 32)
    (models_dir / "metadata.json").write_text(json.dumps({"inputs": ["input_ids", "attention_mask"]}))
    result = run_cli([sys.executable, "-m", "stages.vespa", str(models_dir), str(pairs_csv), str(tmp_path / "vespa")],
                     cwd=PROJECT_ROOT)
    (line,) = result.stdout.strip().splitlines()
    assert line.startswith("vespa: warning: no package for this model: the tokenizer joins a pair as '<s> ")
    assert "</s> </s>" in line and line.endswith("(CLS query SEP title SEP)")
    assert [p.name for p in (tmp_path / "vespa").iterdir()] == ["NOT_SERVABLE.txt"]
