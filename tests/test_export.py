"""export: inputs bound by name, dynamic batch and sequence axes, opset and parity checks, int8."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from stages.common import StageError
from stages.export import INPUT_NAMES, check_opset, export_onnx, max_logit_difference
from stages.int8 import quantize


@pytest.fixture(scope="module")
def classifier(tiny_bert):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()


def random_batch(rng, batch_size, length, vocab_size):
    """Rows padded to different lengths, with second segments, so the three inputs all differ."""
    input_ids = rng.integers(5, vocab_size, size=(batch_size, length))
    lengths = rng.integers(3, length + 1, size=batch_size)
    lengths[0] = length
    attention_mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    token_type_ids = ((np.arange(length)[None, :] >= lengths[:, None] // 2) & (attention_mask == 1)).astype(np.int64)
    return {"input_ids": input_ids * attention_mask, "token_type_ids": token_type_ids, "attention_mask": attention_mask}


@pytest.fixture(scope="module", params=[18, 23], ids=lambda opset: f"opset{opset}")
def exported(classifier, tmp_path_factory, request):
    """The model exported at 18 (attention as MatMul/Softmax) and at 23 (ONNX's Attention op)."""
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    example = random_batch(np.random.default_rng(0), 4, 12, classifier.config.vocab_size)
    export_onnx(classifier, example, path, opset=request.param)
    check_opset(path, request.param)
    return path


@pytest.mark.parametrize(("batch_size", "length"), [(1, 5), (7, 5), (1, 128), (7, 128)])
def test_onnx_matches_pytorch_for_any_batch_size_and_length(classifier, exported, batch_size, length):
    batch = random_batch(np.random.default_rng(batch_size * length), batch_size, length, classifier.config.vocab_size)
    assert max_logit_difference(classifier, exported, [batch]) < 1e-4


def test_graph_inputs_are_named_and_bound_by_keyword(classifier, exported):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(exported))
    assert [i.name for i in session.get_inputs()] == list(INPUT_NAMES)
    assert [o.name for o in session.get_outputs()] == ["logits"]
    batch = random_batch(np.random.default_rng(1), 3, 10, classifier.config.vocab_size)
    with torch.no_grad():
        by_keyword = classifier(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
        positional = classifier(*(torch.from_numpy(batch[k]) for k in INPUT_NAMES)).logits.numpy()
    (onnx_logits,) = session.run(["logits"], batch)
    np.testing.assert_allclose(onnx_logits, by_keyword, atol=1e-4)
    assert np.abs(onnx_logits - positional).max() > 1e-3, "the positional call swaps inputs; the graph must not"


def test_int8_model_loads_and_stays_close_to_float32(classifier, exported, tmp_path):
    import onnxruntime

    int8_path = tmp_path / "model.int8.onnx"
    quantize(exported, int8_path)
    batch = random_batch(np.random.default_rng(2), 7, 20, classifier.config.vocab_size)
    (float32,) = onnxruntime.InferenceSession(str(exported)).run(["logits"], batch)
    (int8,) = onnxruntime.InferenceSession(str(int8_path)).run(["logits"], batch)
    assert 0 < np.abs(int8 - float32).max() < 0.1, "int8 rounding moves logits a little, never this much"


def test_opset_the_exporter_cannot_write_is_refused(classifier, tmp_path):
    path = tmp_path / "model.onnx"
    export_onnx(classifier, random_batch(np.random.default_rng(0), 2, 6, classifier.config.vocab_size), path, opset=14)
    with pytest.raises(StageError, match="export.opset=14: the exporter could only write opset 18; use 17 or newer"):
        check_opset(path, 14)
