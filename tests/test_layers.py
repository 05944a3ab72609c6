"""model.num_layers: train keeps the first N encoder layers of the starting model, for every
architecture family (tiny models of the real layouts, tests/tiny.py), and the saved model describes
the cut model, so export and everything after it do; a count the model does not have is refused."""
import sys

import pytest
import torch
import yaml

from stages.common import StageError, run
from stages.download import fetch_model
from stages.training import layer_overrides, pretrained_classifier
from tests.tiny import FAST_PARAMS, PROJECT_ROOT

TRAIN_PARAMS = {**yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["train"], **FAST_PARAMS["train"]}
PAIRS = (["coronavirus vaccine trial", "bats origin"], ["Vaccine antibody trial, a cohort study", "Zoonotic spillover"])


def encoder_layers(model):
    base = model.base_model
    return base.encoder.layer if hasattr(base, "encoder") else base.layers


def pretrained(tiny_model, architecture, tmp_path):
    """The tiny model as download writes it (safetensors weights, DeBERTa-v3's pickled ones converted)."""
    fetch_model(str(tiny_model(architecture)), "unused for a folder", tmp_path / "pretrained")
    return tmp_path / "pretrained"


@pytest.mark.parametrize("architecture", ["bert", "cross-encoder", "roberta", "deberta-v3", "modernbert"])
def test_the_first_layers_are_kept_with_their_weights_and_the_saved_model_is_the_cut_one(tiny_model, architecture,
                                                                                        tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pretrained_dir = pretrained(tiny_model, architecture, tmp_path)
    checkpoint = load_file(pretrained_dir / "model.safetensors")
    model, note, _ = pretrained_classifier(pretrained_dir, TRAIN_PARAMS, num_layers=1)
    assert note.endswith("; the first 1 encoder layers kept (model.num_layers: 1)")
    assert len(encoder_layers(model)) == model.config.num_hidden_layers == 1
    prefix = f"{model.base_model_prefix}."
    for key, tensor in model.base_model.state_dict().items():  # every kept weight is the checkpoint's own
        stored = checkpoint.get(key, checkpoint.get(prefix + key))
        assert stored is not None and torch.equal(tensor, stored), key
    assert any(".1." in key for key in checkpoint), "the checkpoint had a second layer to drop"

    model.save_pretrained(tmp_path / "finetuned")  # what train writes, and export loads
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "finetuned", use_safetensors=True).eval()
    assert len(encoder_layers(saved)) == saved.config.num_hidden_layers == 1
    if architecture == "modernbert":  # its config checks one attention type per layer
        assert saved.config.layer_types == ["full_attention"]
    batch = AutoTokenizer.from_pretrained(pretrained_dir)(*PAIRS, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(saved(**batch).logits, model.eval()(**batch).logits)


def test_null_keeps_every_layer(tiny_model, tmp_path):
    pretrained_dir = pretrained(tiny_model, "modernbert", tmp_path)
    assert layer_overrides(pretrained_dir, None) == {}
    model, note, _ = pretrained_classifier(pretrained_dir, TRAIN_PARAMS)
    assert len(encoder_layers(model)) == 3 and "encoder layers kept" not in note


@pytest.mark.parametrize("num_layers", [0, 3, -1, 1.5, "2", True])
def test_a_layer_count_the_model_does_not_have_is_refused_naming_the_models_count(tiny_bert, num_layers):
    with pytest.raises(StageError, match=rf"^model\.num_layers={num_layers}: the model has 2 layers; "
                                         r"expected 1 to 2, or null for all$"):
        layer_overrides(tiny_bert, num_layers)


def test_train_refuses_a_bad_layer_count_before_training(tiny_bert, tmp_path, monkeypatch, capsys):
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["model"]["num_layers"] = 5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["stages.train", "data/encoded", str(tiny_bert), "models/finetuned",
                                      "models/checkpoints", "results/train"])
    from stages.train import main

    with pytest.raises(SystemExit, match=r"^error: model\.num_layers=5: the model has 2 layers; expected 1 to 2"):
        run(main)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"], "nothing written"
