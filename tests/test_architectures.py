"""Any encoder as the starting model: tiny models of each architecture family, in their real hub
layouts (tests/tiny.py), go through the stages to a model.onnx that takes exactly the model's inputs
and scores like PyTorch; the frozen-feature cache feeds each architecture's own head; the head and
a never-trained pooler are reported as the train stage meets them."""
import csv
import json
import shutil
import sys

import numpy as np
import pytest
import torch
import yaml

from scorer import RelevanceScorer
from stages.common import StageError, model_inputs
from stages.frozen import classification_head, head_inputs
from stages.training import compute_metrics, make_trainer, one_logit_loss, pretrained_classifier, training_arguments
from tests.conftest import build_once, run_cli, run_stages_in_process
from tests.runtimes import MATRIX, Runtime, feeds_spec, run_logits
from tests.test_runtimes import needs_node, node_client_scores
from tests.tiny import FAST_PARAMS, PROJECT_ROOT, make_scratch_project, tiny_config

# What each architecture takes: BERT token types; RoBERTa and ModernBERT none; DeBERTa-v3's tokenizer
# gives them but its model has no token type embeddings (type_vocab_size 0).
INPUTS = {
    "bert": ["input_ids", "token_type_ids", "attention_mask"],
    "cross-encoder": ["input_ids", "token_type_ids", "attention_mask"],
    "roberta": ["input_ids", "attention_mask"],
    "deberta-v3": ["input_ids", "attention_mask"],
    "modernbert": ["input_ids", "attention_mask"],
}
PAIRS = (["coronavirus vaccine trial", "masks and face coverings", "bats origin"],
         ["Vaccine antibody trial, a cohort study", "Football league transfer news", "Zoonotic spillover from bats"])
# The shipped train params, with a frozen base and cached features.
TRAIN_PARAMS = {**yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["train"], **FAST_PARAMS["train"],
                "freeze_base": True, "cache_features": True}


def load(model_dir, num_labels=2):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()  # the new head's load report
    head = {"num_labels": num_labels, "ignore_mismatched_sizes": True} if num_labels else {}
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, **head)
    logging.set_verbosity_warning()
    return model.eval(), AutoTokenizer.from_pretrained(model_dir)


def reference_scores(model_dir, queries, titles, max_length):
    """P(relevant) from transformers, with every input the tokenizer gives passed by keyword."""
    model, tokenizer = load(model_dir, num_labels=None)
    batch = tokenizer(queries, titles, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    return (torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, dim=-1)[:, 1]).numpy()


@pytest.mark.parametrize("architecture", list(INPUTS))
def test_model_inputs_are_those_each_architecture_takes(tiny_model, architecture):
    model, tokenizer = load(tiny_model(architecture))
    assert model_inputs(model, tokenizer) == INPUTS[architecture]


@pytest.mark.parametrize("architecture, pooling", [("bert", None), ("cross-encoder", None), ("roberta", None),
                                                   ("deberta-v3", None), ("modernbert", "cls"), ("modernbert", "mean")])
def test_the_cache_feeds_each_architectures_own_head(tiny_model, architecture, pooling, tmp_path):
    """The head on cached features gives the full model's logits (eval mode), pairs padded unevenly."""
    from datasets import Dataset

    model, tokenizer = load(tiny_model(architecture))
    if pooling:
        model.config.classifier_pooling = pooling
    dataset = Dataset.from_dict(dict(tokenizer(*PAIRS)))
    head = classification_head(model).eval()
    with torch.no_grad():
        cached = head(features=torch.tensor(head_inputs(model, dataset, tokenizer, 2, "cpu", tmp_path / "f.npy"))).logits
        full = model(**tokenizer(*PAIRS, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    assert not any(name.startswith(model.base_model_prefix) for name, _ in head.named_parameters())


@pytest.mark.parametrize("architecture", ["bert", "roberta", "deberta-v3", "modernbert"])
def test_the_cached_head_drops_out_as_the_models_own_head_does_in_training(tiny_model, architecture, tmp_path):
    """In training mode (encoder in eval mode, as the cache runs it), the same random state gives the
    same logits: the recipe applies every dropout of the model's head, and no other."""
    from datasets import Dataset

    model, tokenizer = load(tiny_model(architecture))
    head = classification_head(model).train()
    dropouts = [module for module in head.modules() if isinstance(module, torch.nn.Dropout)]
    for dropout in dropouts:
        dropout.p = 0.3
    assert dropouts, "the head has a dropout to compare"
    model.base_model.eval()
    features = torch.tensor(head_inputs(model, Dataset.from_dict(dict(tokenizer(*PAIRS))), tokenizer, 3, "cpu",
                                        tmp_path / "f.npy"))
    with torch.no_grad():
        torch.manual_seed(0)
        cached = head(features=features).logits
        torch.manual_seed(0)
        full = model(**tokenizer(*PAIRS, padding=True, return_tensors="pt")).logits
        torch.manual_seed(1)
        other_mask = head(features=features).logits
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cached, other_mask), "dropout is active"


def test_an_architecture_without_a_recipe_trains_uncached_and_says_so(tiny_model, tmp_path, capsys):
    from datasets import Dataset
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("bert"))
    model = DistilBertForSequenceClassification(tiny_config(DistilBertConfig, len(tokenizer), dim=32, hidden_dim=64,
                                                            n_layers=1, n_heads=2))
    model.base_model.requires_grad_(False)
    # with each pair's query, as the encode stage keeps it: train ranks the validation pairs by query
    pairs = Dataset.from_dict({**tokenizer(PAIRS[0] * 4, PAIRS[1] * 4), "label": [1, 0, 0] * 4, "query": PAIRS[0] * 4})
    args = training_arguments({**TRAIN_PARAMS, "epochs": 1}, tmp_path)
    trainer, val_inputs = make_trainer(TRAIN_PARAMS, args, model, tokenizer, pairs, pairs, tmp_path / "features")
    assert capsys.readouterr().out.strip() == ("train: train.cache_features: no cached-feature recipe for distilbert "
                                               "models (DistilBertForSequenceClassification); the frozen base runs on every batch")
    assert trainer.model is model and val_inputs is pairs
    assert trainer.args.train_sampling_strategy == "group_by_length"  # token inputs again: batch by length
    before = model.classifier.weight.detach().clone()
    trainer.train()
    assert not torch.equal(model.classifier.weight, before)


def test_a_cross_encoders_one_logit_head_is_kept_or_replaced_as_num_labels_says(tiny_model):
    from safetensors.torch import load_file

    checkpoint = load_file(tiny_model("cross-encoder") / "model.safetensors")
    kept, note, warning = pretrained_classifier(tiny_model("cross-encoder"), {**TRAIN_PARAMS, "num_labels": 1})
    assert note == "train: fine-tuning the pretrained model's own 1-label head (train.num_labels: 1)" and warning is None
    assert torch.equal(kept.classifier.weight, checkpoint["classifier.weight"])
    assert kept.config.id2label == {0: "relevant"}

    replaced, note, _ = pretrained_classifier(tiny_model("cross-encoder"), TRAIN_PARAMS)
    assert note == ("train: the pretrained model's head (classifier.bias, classifier.weight) has another size; "
                    "replaced by a new 2-label head (train.num_labels: 2)")
    assert replaced.classifier.weight.shape == (2, 32)
    assert replaced.config.id2label == {0: "irrelevant", 1: "relevant"}


def test_a_frozen_base_whose_pooler_was_never_trained_is_warned_about(tiny_model, tmp_path):
    from transformers import BertConfig, BertModel

    pooler_less = tmp_path / "pooler-less"
    shutil.copytree(tiny_model("bert"), pooler_less)
    BertModel(BertConfig.from_pretrained(pooler_less), add_pooling_layer=False).save_pretrained(pooler_less)
    _, note, warning = pretrained_classifier(pooler_less, TRAIN_PARAMS)
    assert note == "train: a new 2-label head (train.num_labels: 2)"
    assert warning == ("train: warning: the pretrained model has no weights for bert.pooler.dense (newly initialized), "
                       "and train.freeze_base keeps it so: expect far weaker results than with train.freeze_base: false")
    assert pretrained_classifier(pooler_less, {**TRAIN_PARAMS, "freeze_base": False})[2] is None
    assert pretrained_classifier(tiny_model("bert"), TRAIN_PARAMS)[2] is None


def test_a_frozen_sentence_transformers_export_is_warned_about_its_pooler(tiny_model, pairs_csv, tmp_path):
    """A sentence-transformers export (all-MiniLM-L6-v2's layout: modules.json, Transformer then
    Pooling) carries a BERT pooler it never trained; download keeps modules.json so train can tell."""
    from stages.download import fetch_model

    export = tmp_path / "sentence-transformers-export"
    shutil.copytree(tiny_model("bert"), export)
    (export / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    fetch_model(str(export), "unused for a folder", tmp_path / "pretrained")
    warning = pretrained_classifier(tmp_path / "pretrained", TRAIN_PARAMS)[2]
    assert warning == ("train: warning: the pretrained model is a sentence-transformers export (modules.json), "
                       "trained through its own pooling, never through bert.pooler, which the head reads, and "
                       "train.freeze_base keeps it so: expect far weaker results than with train.freeze_base: false")
    assert pretrained_classifier(tmp_path / "pretrained", {**TRAIN_PARAMS, "freeze_base": False})[2] is None


def test_two_labels_train_with_cross_entropy_whatever_the_checkpoint_config_says(tiny_model, tmp_path):
    checkpoint = tmp_path / "multi-label"
    shutil.copytree(tiny_model("bert"), checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "problem_type": "multi_label_classification"}))
    model = pretrained_classifier(checkpoint, TRAIN_PARAMS)[0]
    assert model.config.problem_type == "single_label_classification"
    model(input_ids=torch.tensor([[2, 10, 3]]), labels=torch.tensor([1])).loss.backward()  # long labels


def test_encoder_weights_of_another_shape_than_the_config_stop_the_stage(tiny_model, tmp_path):
    checkpoint = tmp_path / "inconsistent"
    shutil.copytree(tiny_model("bert"), checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 10}))
    with pytest.raises(StageError, match=r"the weights of bert\.embeddings\.word_embeddings\.weight do not have "
                                         r"the shape its config\.json gives them$"):
        pretrained_classifier(checkpoint, TRAIN_PARAMS)


def test_roberta_positions_start_after_the_padding_index():
    from transformers import BertConfig, RobertaConfig

    from stages.encode import position_offset

    assert position_offset(RobertaConfig(pad_token_id=1)) == 2 and position_offset(BertConfig()) == 0


def test_num_labels_other_than_one_or_two_is_refused(tiny_model):
    with pytest.raises(StageError, match=r"^train.num_labels=3: expected 2 \(irrelevant/relevant, softmax\) or 1"):
        pretrained_classifier(tiny_model("bert"), {**TRAIN_PARAMS, "num_labels": 3})


def test_one_logit_models_train_on_binary_cross_entropy_and_predict_by_sign():
    from transformers.modeling_outputs import SequenceClassifierOutput

    logits, labels = torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([1, 1, 0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
    torch.testing.assert_close(one_logit_loss(SequenceClassifierOutput(logits=logits), labels), expected)
    torch.testing.assert_close(one_logit_loss(SequenceClassifierOutput(logits=logits), labels, 6), expected / 2)
    assert compute_metrics((logits.numpy(), labels.numpy()))["accuracy"] == pytest.approx(1 / 3)


def validation_pairs(project):
    with open(project / "data/split/val.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [row["query"] for row in rows], [row["title"] for row in rows]


def assert_serves_like_pytorch(project, architecture):
    """model.onnx takes exactly the model's inputs, metadata.json lists them, and the scorer's
    P(relevant) on the validation pairs matches transformers'."""
    import onnx

    metadata = json.loads((project / "models/metadata.json").read_text())
    graph_inputs = [tensor.name for tensor in onnx.load(project / "models/model.onnx").graph.input]
    assert metadata["inputs"] == graph_inputs == INPUTS[architecture]
    queries, titles = validation_pairs(project)
    scores = RelevanceScorer(project / "models/model.onnx").scores(queries, titles)
    expected = reference_scores(project / "models/finetuned", queries, titles, metadata["max_length"])
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    return metadata, scores


THROUGH_EXPORT = ["download", "split", "encode", "teach", "train", "export"]
# The encoders taken to a ranking model.onnx: {architecture: (train params, the line train prints about the head)}.
RANKING = {
    "roberta": ({"freeze_base": False}, "train: a new 2-label head (train.num_labels: 2)"),
    "cross-encoder": ({"freeze_base": True, "num_labels": 1},
                      "train: fine-tuning the pretrained model's own 1-label head (train.num_labels: 1)"),
}


@pytest.fixture(scope="session")
def ranking_project(shared_dir, tiny_model, pairs_csv):
    """ranking_project(architecture): (the project after the stages through export on a tiny model of
    RANKING, what each stage printed), run once per session and shared by the tests below, which only read it."""
    def build(architecture):
        train, _ = RANKING[architecture]
        params = {**FAST_PARAMS, "train": {**FAST_PARAMS["train"], "epochs": 1, **train}}

        def run(path):
            make_scratch_project(path, pairs_csv, tiny_model(architecture), params=params, use_git=False)
            printed = run_stages_in_process(path, THROUGH_EXPORT)
            (path.parent / f"{path.name}.printed.json").write_text(json.dumps(printed))

        project = build_once(shared_dir, f"ranking-{architecture}", run)
        return project, json.loads((project.parent / f"{project.name}.printed.json").read_text())

    return build


@pytest.mark.parametrize("architecture", list(RANKING))
def test_pipeline_takes_the_encoder_from_csv_to_a_ranking_model(ranking_project, tmp_path, architecture):
    project, printed = ranking_project(architecture)
    train, head_note = RANKING[architecture]
    assert head_note in printed["train"].splitlines()
    metadata, _ = assert_serves_like_pytorch(project, architecture)
    assert metadata["probability"] == ("sigmoid" if train.get("num_labels") == 1 else "softmax")

    queries, titles = validation_pairs(project)
    query = queries[0]
    (tmp_path / "titles.txt").write_text("\n".join(titles) + "\n", encoding="utf-8")
    # -B: the project is shared; no bytecode written into it while another test reads it.
    ranked = run_cli([sys.executable, "-B", "-m", "scorer", "rank", query, tmp_path / "titles.txt", "--top-k", "5"],
                     cwd=project).stdout.splitlines()
    expected = RelevanceScorer(project / "models/model.onnx").scores([query] * len(titles), titles)
    best = sorted(expected, reverse=True)[:5]
    assert [float(line.split("\t")[1]) for line in ranked] == pytest.approx(best, abs=1e-4)


@needs_node
@pytest.mark.parametrize("architecture", list(RANKING))
def test_node_client_scores_the_encoders_model_like_the_python_scorer(ranking_project, tmp_path, architecture):
    """The Node.js client, from the same metadata.json (the Python scorer's scores are PyTorch's: above)."""
    project, _ = ranking_project(architecture)
    queries, titles = validation_pairs(project)
    rows = [(query, title, f"doc-{i}") for i, (query, title) in enumerate(zip(queries, titles))]
    scored = node_client_scores(project / "models", rows, tmp_path)
    assert [(row["query"], row["title"], row["doc_id"]) for row in scored] == rows
    scores = RelevanceScorer(project / "models/model.onnx").scores(queries, titles)
    np.testing.assert_allclose([float(row["relevance"]) for row in scored], scores, atol=1e-4, rtol=0)


@pytest.mark.parametrize("architecture", ["deberta-v3", "modernbert"])
def test_stages_take_the_encoder_to_a_model_onnx_scoring_like_pytorch(tiny_model, pairs_csv, tmp_path, architecture):
    """With a frozen base and cached features."""
    params = {**FAST_PARAMS, "train": {**FAST_PARAMS["train"], "epochs": 1, "freeze_base": True}}
    project = make_scratch_project(tmp_path / "project", pairs_csv, tiny_model(architecture), params=params,
                                   use_git=False)
    printed = run_stages_in_process(project, THROUGH_EXPORT)
    # DeBERTa-v3 ships a SentencePiece model and pickled weights: download keeps neither.
    assert sorted(path.name for path in (project / "models/pretrained").glob("*.*")) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert "no cached-feature recipe" not in printed["train"]
    assert_serves_like_pytorch(project, architecture)
    assert_oldest_python_runtime_agrees(project, tmp_path)


def assert_oldest_python_runtime_agrees(project, workdir):
    """model.onnx in the oldest onnxruntime of CI's matrix (ModernBERT's bias-less LayerNormalization
    crashed 1.17 and 1.18 before export gave it a zero bias) gives the pinned onnxruntime's logits."""
    import onnxruntime

    models = project / "models"
    batch = RelevanceScorer(models / "model.onnx").encode(*PAIRS)
    expected = onnxruntime.InferenceSession(str(models / "model.onnx")).run(["logits"], batch)[0]
    version, (logits,) = run_logits(Runtime("python", MATRIX["python"][0]), feeds_spec([models / "model.onnx"], [batch], "logits"), workdir)
    assert version == MATRIX["python"][0]
    np.testing.assert_allclose(np.reshape(logits, expected.shape), expected, atol=1e-5)
