"""Frozen base with cached features, the shipped recipe: the head trained on features computed
once is the model's own head, the saved model keeps the frozen encoder with that trained head, and
the same params and seed train it again to the same bytes."""
import re

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

from stages.frozen import classification_head, head_inputs
from tests.conftest import run_stages_in_process
from tests.tiny import set_params


def test_head_on_cached_features_equals_the_full_model_in_eval_mode(tiny_bert, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    pairs = tokenizer(["covid masks", "bats origin", "heart"], ["Face masks in schools", "Bats", "Cardiac study of the heart"])
    dataset = Dataset.from_dict(dict(pairs))
    head = classification_head(model).eval()
    with torch.no_grad():
        cached = head(features=torch.tensor(head_inputs(model, dataset, tokenizer, 2, "cpu", tmp_path / "f.npy"))).logits
        padded = tokenizer.pad(dict(pairs), return_tensors="pt")
        full = model(**padded).logits
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_training_the_head_trains_the_models_classifier(tiny_bert):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    head = classification_head(model)
    before = model.classifier.weight.detach().clone()
    optimizer = torch.optim.SGD(head.parameters(), lr=1.0)
    head(features=torch.randn(4, model.config.hidden_size), labels=torch.tensor([0, 1, 1, 0])).loss.backward()
    optimizer.step()
    assert not torch.equal(model.classifier.weight, before)


def training_log(project):
    return {str(path.relative_to(project)): path.read_bytes() for path in (project / "results/train").rglob("*") if path.is_file()}


def test_frozen_base_run_keeps_the_encoder_saves_the_trained_head_and_retrains_to_the_same_bytes(project):
    """The train stage's command, run twice in this process (what DVC makes of a retrain that gives the
    same bytes, nothing after train rerun, is test_interrupts' resume test)."""
    set_params(project, {"train": {"freeze_base": True, "cache_features": True}})
    run_stages_in_process(project, ["train"])
    pretrained = AutoModelForSequenceClassification.from_pretrained(project / "models/pretrained", num_labels=2)
    finetuned = AutoModelForSequenceClassification.from_pretrained(project / "models/finetuned").eval()
    for (name, frozen), (_, saved) in zip(pretrained.base_model.named_parameters(), finetuned.base_model.named_parameters()):
        assert torch.equal(frozen, saved), name

    set_seed(42)  # train.seed: the head the stage started from
    initial = AutoModelForSequenceClassification.from_pretrained(project / "models/pretrained", num_labels=2)
    assert not torch.equal(finetuned.classifier.weight, initial.classifier.weight), "the trained head was saved"

    if torch.cuda.is_available():
        pytest.skip("the same model to the byte holds on CPU only: GPU kernels are not bit-reproducible")
    model, log = (project / "models/finetuned/model.safetensors").read_bytes(), training_log(project)
    run_stages_in_process(project, ["train"])
    assert (project / "models/finetuned/model.safetensors").read_bytes() == model, "same params and seed: the same model"
    # Only the training log's timings differ: wall-clock runtimes and throughput, per epoch and in the report.
    retrained = training_log(project)
    changed = [path for path in sorted(set(log) | set(retrained)) if log.get(path) != retrained.get(path)]
    assert all(re.search(r"(runtime|_per_second)\.tsv$|/report\.json$", path) for path in changed), changed
