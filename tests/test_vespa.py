"""vespa: the application package passes Vespa's own services.xml schemas, and the inputs Vespa's
token features build from the embedded query and title score every pair that fits in L as the
scorer does; a model whose pair template Vespa cannot build gets one line instead of a package.
The package's file is the cheapest candidate that ranks as model.onnx does and scores
deterministically; the fused graph scores as model.onnx does in every architecture it fuses.

No Vespa engine runs here: its schema parser and the ranking itself are Java. stages.vespa's
token_features re-implements Vespa's rank features from TokenTransformer.java."""
import json
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
from stages.vespa_files import FILES, build_candidates, fuse_to_multi_head_attention
from stages.vespa_hits import covering_length, embed, rerun_change, token_features, vespa_tokenizer
from tests.conftest import require_tool, run_cli, run_stages_in_process
from tests.tiny import PROJECT_ROOT, TINY_MODELS, csv_texts

SCHEMAS = PROJECT_ROOT.parent / "shared/vespa/schema"


def jing(services_xml):
    """Vespa's validation of services.xml, with its RELAX NG schemas (../shared/vespa/schema, beside the checkout)."""
    require_tool(shutil.which("jing") and SCHEMAS.is_dir(), "needs jing (apt-get install jing) and ../shared/vespa/schema")
    return subprocess.run(["jing", "-c", str(SCHEMAS / "services.rnc"), str(services_xml)], capture_output=True, text=True)


def test_the_pipelines_package_passes_vespas_services_schema(reproduced_project):
    package = reproduced_project / "models/vespa"
    assert sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file()) == [
        "files/relevance.onnx", "models/tokenizer.json", "schemas/doc.sd", "search/query-profiles/default.xml",
        "search/query-profiles/types/root.xml", "services.xml"]
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


def vespa_scores(models_dir, metadata, queries, titles, length, cls, sep, onnx_path=None):
    """The model's P(relevant) on the inputs Vespa builds, one hit at a time as Vespa runs it, then
    the global-phase expression; model.onnx or another file of the same model, `onnx_path`."""
    tokenizer = vespa_tokenizer(models_dir / "tokenizer.json")
    session = onnxruntime.InferenceSession(str(onnx_path or models_dir / "model.onnx"), providers=["CPUExecutionProvider"])
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
def test_vespas_inputs_score_every_pair_that_fits_as_the_scorer_does_fused_or_not(pairs_csv, tmp_path, monkeypatch, model,
                                                                                 cls_sep, feature):
    """And the graph fused at MultiHeadAttention scores every pair as model.onnx does, the same in
    a fresh session at 1 and at 4 threads."""
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
    write_package(tmp_path / "models", tmp_path / "package", tmp_path / "models/model.onnx", length,
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

    fused_ops = fuse_to_multi_head_attention(tmp_path / "models/model.onnx", tmp_path / "fused.onnx")
    assert {"MultiHeadAttention", "SkipLayerNormalization"} <= set(fused_ops) and "Attention" not in fused_ops
    fused = vespa_scores(tmp_path / "models", metadata, queries, titles, length, *cls_sep, onnx_path=tmp_path / "fused.onnx")
    np.testing.assert_allclose(fused, actual, atol=1e-5, rtol=0)
    feeds = [{name: np.array([token_features(q, t, length, *cls_sep)[name]]) for name in metadata["inputs"]}
             for q, t in zip(embed(tokenizer, queries[:8], length), embed(tokenizer, titles[:8], length))]
    logits = np.array([onnxruntime.InferenceSession(str(tmp_path / "fused.onnx")).run(["logits"], feed)[0][0] for feed in feeds])
    assert rerun_change(tmp_path / "fused.onnx", feeds, "logits", logits) == 0


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
    for written in ("metrics.json", "report.json"):
        assert json.loads((tmp_path / written).read_text()) == {"servable": False, "reason": line.split("model: ", 1)[1]}


def test_the_package_length_is_the_shortest_multiple_of_8_holding_the_coverage(reproduced_project):
    """L from the data: the stage's L holds vespa.length_coverage of the training and validation
    pairs as Vespa builds them (counted here from the split CSVs), and L - 8 does not."""
    import yaml

    params = yaml.safe_load((reproduced_project / "params.yaml").read_text())
    metrics = json.loads((reproduced_project / "results/vespa/report.json").read_text())
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
    """results/vespa/report.json, with L short enough that Vespa cuts about half the pairs and a
    file built here named by vespa.model: the int8 file's and the package's own file's nDCG@10 and
    ROC-AUC from the inputs written again above, one hit at a time, and the scorer's float32
    metrics equal to evaluate's on the same (all) validation pairs."""
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
    set_params(scratch, {"vespa": {"max_length": length, "model": "model.int8.per_tensor.fused.onnx"}})
    printed = run_stages_in_process(scratch, ["vespa"])["vespa"]
    metrics = json.loads((scratch / "results/vespa/report.json").read_text())
    assert metrics["max_length"] == length and metrics["pairs"] == len(val)
    assert metrics["served"] == metrics["int8_per_tensor_fused"] and metrics["served"]["file"] == "model.int8.per_tensor.fused.onnx"
    assert metrics["val_pairs_cut"] == (lengths > length).sum() > 0 and f"Vespa cuts {metrics['val_pairs_cut']} of" in printed

    metadata = json.loads((scratch / "models/metadata.json").read_text())
    queries = pd.util.hash_pandas_object(val["query"], index=False).to_numpy()
    for key, path in {"int8": scratch / "models/model.int8.onnx", "served": scratch / "models/vespa/files/relevance.onnx"}.items():
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        scores = []
        for q, t in zip(query_ids, title_ids):
            features = reference_token_transformer(q, t, length, *separators(tokenizer, metadata["inputs"])[0])
            (logits,) = session.run(["logits"], {name: features[name][None].astype(np.int64) for name in metadata["inputs"]})
            scores.append(relevance_probability(logits, metadata)[0])
        expected = relevance_metrics(queries, val["label"].to_numpy(), np.array(scores))
        assert abs(metrics[key]["ndcg@10"] - expected["ndcg@10"]) <= 1e-3, key
        assert abs(metrics[key]["roc_auc"] - expected["roc_auc"]) <= 1e-3, key
    evaluated = json.loads((reproduced_project / "results/eval/report.json").read_text())["fp32"]
    assert metrics["evaluate_fp32"] == pytest.approx(evaluated, abs=1e-12)
    assert metrics["fp32"]["ms_per_hit"] > 0 and metrics["int8"]["ms_per_hit_p99"] >= metrics["int8"]["ms_per_hit"]
    assert metrics["int8"]["cpu_ms_per_query"] == pytest.approx(metrics["int8"]["ms_per_hit"] * metrics["rerank_count"])


def test_the_package_ships_the_cheapest_file_that_ranks_as_model_onnx_and_scores_deterministically(reproduced_project,
                                                                                                 tmp_path):
    """vespa.model=auto, the pipeline's run: every candidate timed and checked (the tiny BERT fuses),
    the served one the fewest ms per hit of those that pass, repeated under `served`, in the package
    byte for byte as built again here; GFLOP per hit as the architecture counts it."""
    import yaml

    params = yaml.safe_load((reproduced_project / "params.yaml").read_text())
    metrics = json.loads((reproduced_project / "results/vespa/report.json").read_text())
    assert params["vespa"]["model"] == "auto" and [metrics[key]["file"] for key in FILES] == list(FILES.values())
    assert metrics["fused_ops"] == {"BiasGelu": 2, "MultiHeadAttention": 2, "SkipLayerNormalization": 4}
    drop, fp32 = params["vespa"]["max_ranking_drop"], metrics["fp32"]
    for key in FILES:
        file = metrics[key]
        assert file["rerun_logit_change"] == 0, f"{file['file']} scores deterministically"
        ranks = all(fp32[metric] - file[metric] <= drop for metric in ("ndcg@10", "roc_auc"))
        assert file["passes_checks"] == ranks, file["file"]
    passing = [key for key in FILES if metrics[key]["passes_checks"]]
    served = min(passing, key=lambda key: metrics[key]["ms_per_hit"])
    assert metrics["served"] == metrics[served]

    paths, _ = build_candidates(reproduced_project / "models", tmp_path, params["quantize"])
    assert (reproduced_project / "models/vespa/files/relevance.onnx").read_bytes() == paths[served].read_bytes()

    config = json.loads((reproduced_project / "models/finetuned/config.json").read_text())
    layers, hidden, intermediate = config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]
    length, labels = metrics["max_length"], len(config["id2label"])
    # per layer: Q, K, V and output projections, the feed-forward pair, Q K^T and A V; then the pooler and classifier
    flop = layers * (8 * length * hidden ** 2 + 4 * length * hidden * intermediate + 4 * length ** 2 * hidden)
    flop += 2 * hidden ** 2 + 2 * hidden * labels
    assert all(metrics[key]["gflop_per_hit"] == pytest.approx(flop / 1e9, rel=1e-12) for key in (*FILES, "served"))


def test_a_graph_no_fusion_matches_is_left_as_it_is_and_a_fused_choice_ships_it_unfused(tmp_path):
    """Another architecture's graph, reduced to what no fusion pattern matches: no fused file is
    built, and vespa.model naming one ships the same file unfused."""
    import onnx
    import yaml
    from onnx import TensorProto, helper, numpy_helper

    from stages.vespa import choose

    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32), "weight")
    graph = helper.make_graph([helper.make_node("MatMul", ["hidden", "weight"], ["logits"])], "linear",
                              [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 8])], [weight])
    (tmp_path / "models").mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "models/model.onnx")
    quantize_params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["quantize"]
    paths, fused_ops = build_candidates(tmp_path / "models", tmp_path, quantize_params)
    assert fused_ops == {} and list(paths) == ["fp32", "int8", "int8_per_tensor"]
    assert not (tmp_path / FILES["fp32_fused"]).exists() and paths["int8_per_tensor"].is_file()
    files = {key: {"ms_per_hit": 1.0} for key in paths}
    assert choose(files, {key: [] for key in paths}, "model.int8.per_tensor.fused.onnx") == "int8_per_tensor"
    assert choose(files, {key: [] for key in paths}, "model.fused.onnx") == "fp32"


def test_auto_ships_the_fastest_file_without_a_refusal_and_stops_when_every_file_is_refused():
    from stages.common import StageError
    from stages.vespa import choose, refusals

    ranking = {"ndcg@10": 0.80, "roc_auc": 0.90}
    files = {"fp32": {**ranking, "ms_per_hit": 3.0, "rerun_logit_change": 0.0},
             "int8": {**ranking, "ms_per_hit": 1.0, "rerun_logit_change": 1e-6},  # fastest, not deterministic
             "int8_per_tensor": {"ndcg@10": 0.79, "roc_auc": 0.91, "ms_per_hit": 1.5, "rerun_logit_change": 0.0},
             "fp32_fused": {"ndcg@10": 0.80, "roc_auc": 0.896, "ms_per_hit": 2.0, "rerun_logit_change": 0.0}}
    reasons = refusals(files, 0.005)
    assert reasons["fp32"] == [] and reasons["fp32_fused"] == [] and reasons["int8"] and reasons["int8_per_tensor"]
    assert reasons["int8_per_tensor"] == ["ndcg@10 0.7900 against model.onnx's 0.8000"]
    assert choose(files, reasons, "auto") == "fp32_fused"
    assert choose(files, reasons, "model.int8.onnx") == "int8"  # named: shipped as asked, with a warning
    files["fp32"]["rerun_logit_change"] = 1e-7
    with pytest.raises(StageError, match="^vespa.model=auto: no file ranks as model.onnx does"):
        choose(files, refusals(files, 0.0), "auto")


def test_vespas_session_knobs_are_written_only_when_set(reproduced_project, tmp_path):
    """vespa.intraop_threads and vespa.gpu_device go into the onnx-model; null leaves Vespa's defaults."""
    models_dir = reproduced_project / "models"
    metadata = json.loads((models_dir / "metadata.json").read_text())
    cls_sep, _ = separators(vespa_tokenizer(models_dir / "tokenizer.json"), metadata["inputs"])
    onnx_model = {}
    for name, knobs in {"defaults": (None, None), "set": (4, 0)}.items():
        params = {"rerank_count": 100, "intraop_threads": knobs[0], "gpu_device": knobs[1]}
        write_package(models_dir, tmp_path / name, models_dir / "model.int8.onnx", 16, params, *cls_sep)
        schema = (tmp_path / name / "schemas/doc.sd").read_text()
        onnx_model[name] = schema[schema.index("onnx-model relevance {"):].split("}", 1)[0]
    assert "threads" not in onnx_model["defaults"] and "gpu-device" not in onnx_model["defaults"]
    assert "        intraop-threads: 4\n" in onnx_model["set"] and "        gpu-device: 0\n" in onnx_model["set"]
    assert onnx_model["set"].index("output logits") < onnx_model["set"].index("intraop-threads")


@pytest.mark.parametrize(("params", "message"), [
    ({"max_length": 500}, "error: vespa.max_length=500: expected auto or an integer from 3 to encode.max_length="),
    ({"length_coverage": 0}, "error: vespa.length_coverage=0: expected a share above 0 and at most 1"),
    ({"gpu_device": -1}, "error: vespa.gpu_device=-1: expected null (Vespa's default) or a GPU number"),
    ({"model": "model.fp16.onnx"}, "error: vespa.model=model.fp16.onnx: expected auto or one of model.onnx, model.int8.onnx, "),
    ({"max_ranking_drop": -0.01}, "error: vespa.max_ranking_drop=-0.01: expected a number, 0 or more"),
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
