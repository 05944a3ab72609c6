"""export: inputs bound by name, dynamic batch and sequence axes, opset, IR version and parity
checks, the serving tokenizer; quantize: the int8 model loads at every opset."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from stages.common import StageError, load_params
from stages.export import check_opset, export_onnx, max_logit_difference, min_onnxruntime
from stages.quantize import quantize

INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")  # BERT's tokenizer's order


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


def test_ir_version_is_the_lowest_that_holds_the_opset(exported):
    import onnx

    model = onnx.load(exported)
    opset = {entry.domain: entry.version for entry in model.opset_import}[""]
    assert model.ir_version == {18: 8, 23: 11}[opset]  # onnx's VERSION_TABLE; the exporter writes 10 for both
    onnx.checker.check_model(model, full_check=True)


def test_min_onnxruntime_is_the_oldest_tested_release_or_the_first_with_the_opset():
    """metadata.json's min_onnxruntime: never below 1.17, the oldest release the runtime tests run (checked
    against their matrix in test_runtimes), later where the opset needs it; unknown for an opset not in the table."""
    assert [min_onnxruntime(opset) for opset in (17, 18, 20, 21, 23)] == ["1.17", "1.17", "1.17", "1.18", "1.23"]
    assert min_onnxruntime(22) is None


def test_serving_tokenizer_truncates_and_pads_by_itself(tiny_bert, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from stages.export import save_serving_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    save_serving_tokenizer(tokenizer, tmp_path / "tokenizer.json", max_length=12)
    serving = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    pairs = [("coronavirus vaccine trial", "vaccine antibody trial study of the cohort in patients during the pandemic"),
             ("masks", "face")]
    encoded = serving.encode_batch(pairs)
    expected = tokenizer([q for q, _ in pairs], [t for _, t in pairs], truncation=True, max_length=12)
    assert [len(e.ids) for e in encoded] == [12, 12], "padded to the longest pair of the batch"
    assert encoded[0].ids == expected["input_ids"][0] and encoded[0].type_ids == expected["token_type_ids"][0]
    assert encoded[1].ids[:5] == expected["input_ids"][1] and encoded[1].attention_mask == [1] * 5 + [0] * 7
    assert len(serving.encode(*pairs[1]).ids) == 5, "one pair alone is not padded to max_length"


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
    quantize(exported, int8_path, load_params("quantize"))
    batch = random_batch(np.random.default_rng(2), 7, 20, classifier.config.vocab_size)
    (float32,) = onnxruntime.InferenceSession(str(exported)).run(["logits"], batch)
    (int8,) = onnxruntime.InferenceSession(str(int8_path)).run(["logits"], batch)
    assert 0 < np.abs(int8 - float32).max() < 0.1, "int8 rounding moves logits a little, never this much"


@pytest.fixture(scope="module")
def confident_export(classifier, tmp_path_factory):
    """The tiny classifier with its head scaled up, so its logits spread as a trained model's do (by
    units, not hundredths) and batch dependence is measured against a realistic scale."""
    import copy

    model = copy.deepcopy(classifier)
    with torch.no_grad():
        model.classifier.weight.mul_(100)
    path = tmp_path_factory.mktemp("confident") / "model.onnx"
    export_onnx(model, random_batch(np.random.default_rng(0), 4, 12, model.config.vocab_size), path, opset=18)
    return path


@pytest.mark.parametrize("per_token", [True, False], ids=["per_token", "onnxruntime_per_tensor"])
def test_int8_model_scores_a_pair_the_same_alone_and_in_any_batch_only_with_per_token_scales(
        classifier, confident_export, per_token, tmp_path):
    import onnxruntime

    int8_path = tmp_path / "model.int8.onnx"
    quantize(confident_export, int8_path, {**load_params("quantize"), "per_token": per_token})
    session = onnxruntime.InferenceSession(str(int8_path))
    batch = random_batch(np.random.default_rng(3), 8, 24, classifier.config.vocab_size)
    (batched,) = session.run(["logits"], batch)
    (reordered,) = session.run(["logits"], {name: values[::-1] for name, values in batch.items()})
    differences = [np.abs(reordered[::-1] - batched).max()]
    for row, length in enumerate(batch["attention_mask"].sum(axis=1)):
        alone = {name: values[row:row + 1, :length] for name, values in batch.items()}
        padded = {name: np.pad(values, ((0, 0), (0, 40))) for name, values in alone.items()}  # [PAD] id 0, mask 0
        differences += [np.abs(session.run(["logits"], feeds)[0][0] - batched[row]).max() for feeds in (alone, padded)]
    spread = np.ptp(batched[:, 1] - batched[:, 0])
    assert spread > 1, "margins spread as a trained model's"
    if per_token:
        assert max(differences) <= 1e-3, "a pair's int8 logits do not depend on its batch or its padding"
        import onnx

        # Against onnxruntime's own file: each DynamicQuantizeLinear becomes 11 nodes, each MatMulInteger's
        # output gains a Mul by its input's token scales, and the shared 1 takes 2 (docs/speed.md).
        quantize(confident_export, tmp_path / "per_tensor.onnx", {**load_params("quantize"), "per_token": False})
        per_tensor = [n.op_type for n in onnx.load(tmp_path / "per_tensor.onnx").graph.node]
        inputs, matmuls = per_tensor.count("DynamicQuantizeLinear"), per_tensor.count("MatMulInteger")
        assert inputs > 0 and len(onnx.load(int8_path).graph.node) == len(per_tensor) + 10 * inputs + matmuls + 2
    else:  # what the per-token scales fix: one scale for the whole batch tensor, padding included
        assert max(differences) > 1e-2


def test_opset_the_exporter_cannot_write_is_refused(classifier, tmp_path):
    path = tmp_path / "model.onnx"
    export_onnx(classifier, random_batch(np.random.default_rng(0), 2, 6, classifier.config.vocab_size), path, opset=14)
    with pytest.raises(StageError, match="export.opset=14: the exporter could only write opset 18; use 17 or newer"):
        check_opset(path, 14)


@pytest.mark.parametrize(("spearman", "mean_change", "refused"), [
    (0.99, 0.2, False),   # scores move, the ranking stays: fine for a ranker
    (0.08, 1e-4, False),  # near-ties reorder under any rounding, harmlessly
    (0.5, 0.3, True),     # reordered and moved: broken
    (None, 0.3, True),    # int8 gives every pair one score
])
def test_int8_check_refuses_only_a_model_that_reorders_and_moves_scores(spearman, mean_change, refused):
    from stages.quantize import check_failure

    check = {"spearman": spearman, "mean_abs_score_diff": mean_change, "pairs": 50}
    assert (check_failure(check, load_params("quantize")) is not None) == refused


def test_exported_file_holds_no_path_of_the_machine_that_made_it(exported):
    """The exporter's per-node stack traces name this checkout and its virtual environment; without
    them the same model exported from any folder is the same bytes."""
    import sys
    from pathlib import Path

    content = exported.read_bytes()
    for path in (Path(__file__).resolve().parent.parent, Path(sys.prefix), Path(torch.__file__).parent):
        assert str(path).encode() not in content, path
