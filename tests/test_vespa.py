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
import pandas as pd
import pytest
import torch

from bench.synthetic import write_tiny_bert
from bench.synthetic import set_params
from scorer import RelevanceScorer, relevance_probability
from stages.common import read_all_pairs
from stages.metrics import relevance_metrics
from stages.export import export_onnx, save_serving_tokenizer, write_metadata
from stages.vespa import separators, write_package
from stages.vespa_hits import covering_length, embed, token_features, vespa_tokenizer
from tests.conftest import run_cli, run_stages_in_process
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
    # vespa.model: the int8 file, which quantize let through
    assert (package / "files/relevance.onnx").read_bytes() == (reproduced_project / "models/model.int8.onnx").read_bytes()
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
    write_package(tmp_path / "models", tmp_path / "package", "model.onnx", length,
                  {"rerank_count": 50, "intraop_threads": None, "gpu_device": None}, *cls_sep)
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
    result = run_cli([sys.executable, "-m", "stages.vespa", str(models_dir), str(tmp_path / "split"), str(tmp_path / "vespa"),
                      str(tmp_path / "metrics.json")], cwd=PROJECT_ROOT)
    (line,) = result.stdout.strip().splitlines()
    assert line.startswith("vespa: warning: no package for this model: the tokenizer joins a pair as '<s> ")
    assert "</s> </s>" in line and line.endswith("(CLS query SEP title SEP)")
    assert [p.name for p in (tmp_path / "vespa").iterdir()] == ["NOT_SERVABLE.txt"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"servable": False, "reason": line.split("model: ", 1)[1]}


def test_the_package_length_is_the_shortest_multiple_of_8_holding_the_coverage(reproduced_project):
    """L from the data: the stage's L holds vespa.length_coverage of the training and validation
    pairs as Vespa builds them (counted here from the split CSVs), and L - 8 does not."""
    import yaml

    params = yaml.safe_load((reproduced_project / "params.yaml").read_text())
    metrics = json.loads((reproduced_project / "results/vespa/metrics.json").read_text())
    tokenizer = vespa_tokenizer(reproduced_project / "models/tokenizer.json")
    pairs = pd.concat([read_all_pairs(reproduced_project / f"data/split/{split}.csv") for split in ("train", "val")])
    lengths = np.array([3 + len(tokenizer.encode(query, add_special_tokens=False).ids)
                        + len(tokenizer.encode(title, add_special_tokens=False).ids)
                        for query, title in zip(pairs["query"], pairs["title"])])
    length, coverage = metrics["max_length"], params["vespa"]["length_coverage"]
    assert length % 8 == 0 and length < params["encode"]["max_length"]
    assert (lengths <= length).mean() >= coverage > (lengths <= length - 8).mean()
    assert metrics["pairs_within_max_length"] == pytest.approx((lengths <= length).mean())
    assert f"tensor<float>(d0[{length}])" in (reproduced_project / "models/vespa/schemas/doc.sd").read_text()


def test_covering_length_rounds_up_to_a_multiple_of_8_and_stops_at_the_cap():
    counts = np.bincount([10] * 95 + [30] * 4 + [100], minlength=130)  # lengths; index 129: longer than 128
    assert covering_length(counts, 0.95, 128) == 16
    assert covering_length(counts, 0.99, 128) == 32
    assert covering_length(counts, 1.0, 128) == 104
    assert covering_length(counts, 1.0, 60) == 60
    assert covering_length(np.bincount([2], minlength=10), 1.0, 8) == 8


def reference_token_transformer(query_ids, title_ids, length, cls, sep):
    """Vespa's TokenTransformer written again, one position at a time as its tensor-generating
    expression nests its conditions (tensor(d0[1],d1[L])(if (d1 < 1, CLS, if (d1 < 1 + len(q),
    q{d0: d1 - 1}, ...)))), on the ids `embed` keeps of each text: at most L."""
    q, t = list(query_ids[:length]), list(title_ids[:length])

    def token(d1):
        if d1 < 1:
            return cls
        if d1 < 1 + len(q):
            return q[d1 - 1]
        if d1 < 2 + len(q):
            return sep
        if d1 < 2 + len(q) + len(t):
            return t[d1 - 2 - len(q)]
        return sep if d1 < 3 + len(q) + len(t) else 0

    end = 3 + len(q) + len(t)
    return {"input_ids": np.array([token(d1) for d1 in range(length)]),
            "token_type_ids": np.array([0 if d1 < 2 + len(q) else int(d1 < end) for d1 in range(length)]),
            "attention_mask": np.array([int(d1 < end) for d1 in range(length)])}


def test_vespa_side_metrics_agree_with_an_independent_token_transformer(reproduced_project, tmp_path):
    """results/vespa/metrics.json, with L short enough that Vespa cuts about half the pairs: the
    served file's nDCG@10 and ROC-AUC from the inputs written again above, one hit at a time, and
    the scorer's float32 metrics equal to evaluate's on the same (all) validation pairs."""
    import yaml

    scratch = tmp_path / "project"
    for name in ("models/model.onnx", "models/model.int8.onnx", "models/tokenizer.json", "models/metadata.json",
                 "data/split/train.csv", "data/split/val.csv", "dvc.yaml", "params.yaml"):
        (scratch / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(reproduced_project / name, scratch / name)
    tokenizer = vespa_tokenizer(scratch / "models/tokenizer.json")
    val = read_all_pairs(scratch / "data/split/val.csv")
    query_ids, title_ids = ([e.ids for e in tokenizer.encode_batch(val[c].tolist(), add_special_tokens=False)]
                            for c in ("query", "title"))
    lengths = np.array([3 + len(q) + len(t) for q, t in zip(query_ids, title_ids)])
    length = int(np.median(lengths))
    set_params(scratch, {"vespa": {"max_length": length}})
    printed = run_stages_in_process(scratch, ["vespa"])["vespa"]
    metrics = json.loads((scratch / "results/vespa/metrics.json").read_text())
    assert metrics["max_length"] == length and metrics["served"] == "int8" and metrics["pairs"] == len(val)
    assert metrics["val_pairs_cut"] == (lengths > length).sum() > 0 and f"Vespa cuts {metrics['val_pairs_cut']} of" in printed

    metadata = json.loads((scratch / "models/metadata.json").read_text())
    session = onnxruntime.InferenceSession(str(scratch / "models/model.int8.onnx"), providers=["CPUExecutionProvider"])
    scores = []
    for q, t in zip(query_ids, title_ids):
        features = reference_token_transformer(q, t, length, *separators(tokenizer, metadata["inputs"])[0])
        (logits,) = session.run(["logits"], {name: features[name][None].astype(np.int64) for name in metadata["inputs"]})
        scores.append(relevance_probability(logits, metadata)[0])
    queries = pd.util.hash_pandas_object(val["query"], index=False).to_numpy()
    expected = relevance_metrics(queries, val["label"].to_numpy(), np.array(scores))
    assert abs(metrics["int8"]["ndcg@10"] - expected["ndcg@10"]) <= 1e-3
    assert abs(metrics["int8"]["roc_auc"] - expected["roc_auc"]) <= 1e-3
    evaluated = json.loads((reproduced_project / "results/eval/metrics.json").read_text())["fp32"]
    assert metrics["evaluate_fp32"] == pytest.approx(evaluated, abs=1e-12)
    assert metrics["fp32"]["ms_per_hit"] > 0 and metrics["int8"]["ms_per_hit_p99"] >= metrics["int8"]["ms_per_hit"]
    assert metrics["int8"]["cpu_ms_per_query"] == pytest.approx(metrics["int8"]["ms_per_hit"] * metrics["rerank_count"])


def test_vespas_session_knobs_are_written_only_when_set(reproduced_project, tmp_path):
    """vespa.intraop_threads and vespa.gpu_device go into the onnx-model; null leaves Vespa's defaults."""
    models_dir = reproduced_project / "models"
    metadata = json.loads((models_dir / "metadata.json").read_text())
    cls_sep, _ = separators(vespa_tokenizer(models_dir / "tokenizer.json"), metadata["inputs"])
    onnx_model = {}
    for name, knobs in {"defaults": (None, None), "set": (4, 0)}.items():
        params = {"rerank_count": 100, "intraop_threads": knobs[0], "gpu_device": knobs[1]}
        write_package(models_dir, tmp_path / name, "model.int8.onnx", 16, params, *cls_sep)
        schema = (tmp_path / name / "schemas/doc.sd").read_text()
        onnx_model[name] = schema[schema.index("onnx-model relevance {"):].split("}", 1)[0]
    assert "threads" not in onnx_model["defaults"] and "gpu-device" not in onnx_model["defaults"]
    assert "        intraop-threads: 4\n" in onnx_model["set"] and "        gpu-device: 0\n" in onnx_model["set"]
    assert onnx_model["set"].index("output logits") < onnx_model["set"].index("intraop-threads")


@pytest.mark.parametrize(("params", "message"), [
    ({"max_length": 500}, "error: vespa.max_length=500: expected auto or an integer from 3 to encode.max_length="),
    ({"length_coverage": 0}, "error: vespa.length_coverage=0: expected a share above 0 and at most 1"),
    ({"gpu_device": -1}, "error: vespa.gpu_device=-1: expected null (Vespa's default) or a GPU number"),
    ({"model": "model.fp16.onnx"}, "error: vespa.model=model.fp16.onnx: expected one of model.onnx, model.int8.onnx"),
])
def test_a_bad_vespa_param_stops_the_stage_in_one_line_and_writes_nothing(reproduced_project, tmp_path, params, message):
    import yaml

    settings = yaml.safe_load((reproduced_project / "params.yaml").read_text())
    settings["vespa"].update(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
    result = run_cli([sys.executable, "-m", "stages.vespa", str(reproduced_project / "models"),
                      str(reproduced_project / "data/split"), "package", "metrics.json"], cwd=tmp_path, check=False,
                     PYTHONPATH=str(PROJECT_ROOT), PYTHONDONTWRITEBYTECODE="1")
    assert result.returncode == 1 and result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
