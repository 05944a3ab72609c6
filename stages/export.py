"""export: write the fine-tuned model as ONNX for a search service, prove onnxruntime matches
PyTorch on real batches, and optionally quantize it to int8 within an ROC-AUC budget.

Beside model.onnx it writes tokenizer.json and metadata.json, everything stages/scorer.py
(onnxruntime + tokenizers, no torch) needs to score pairs.
"""
import argparse
import shutil
import subprocess
from pathlib import Path

from stages.common import StageError, atomic_paths, load_params, run, write_json
from stages.int8 import quantize_and_compare
from stages.scorer import INPUT_NAMES, METADATA_FILE, TOKENIZER_FILE

PARITY_BATCH_SIZES = (1, 7, 32)


def logits_only(model):
    """Wrap the model so the graph's inputs are bound by keyword, in INPUT_NAMES order.

    BertForSequenceClassification.forward takes (input_ids, attention_mask, token_type_ids):
    passing INPUT_NAMES positionally to it would silently swap two inputs.
    """
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, token_type_ids, attention_mask):
            return self.model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask).logits

    return LogitsOnly().eval()


def parity_batches(dataset, tokenizer):
    """Real validation pairs in batches of several sizes, padded to the longest row (so most rows
    carry padding), plus one batch padded past its longest row."""
    from transformers import DataCollatorWithPadding

    rows = [{name: dataset[i % len(dataset)][name] for name in INPUT_NAMES} for i in range(max(PARITY_BATCH_SIZES))]
    longest = max(len(row["input_ids"]) for row in rows)
    batches = [DataCollatorWithPadding(tokenizer, return_tensors="np")(rows[:size]) for size in PARITY_BATCH_SIZES]
    batches.append(DataCollatorWithPadding(tokenizer, padding="max_length", max_length=longest + 8, return_tensors="np")(rows[:4]))
    return [{name: batch[name].astype("int64") for name in INPUT_NAMES} for batch in batches]


def export_onnx(model, example, path, opset):
    import torch

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    torch.onnx.export(
        logits_only(model),
        tuple(torch.from_numpy(example[name]) for name in INPUT_NAMES),
        path,
        input_names=list(INPUT_NAMES),
        output_names=["logits"],
        dynamic_shapes={name: {0: batch, 1: sequence} for name in INPUT_NAMES},
        opset_version=opset,
        external_data=False,  # one self-contained file for the search service
    )


def check_opset(onnx_path, opset):
    """The exporter falls back to its own opset when it cannot convert down; refuse that silently different file."""
    import onnx

    written = {entry.domain: entry.version for entry in onnx.load(onnx_path, load_external_data=False).opset_import}[""]
    if written != opset:
        raise StageError(f"export.opset={opset}: the exporter could only write opset {written}; use 17 or newer")


def max_logit_difference(model, onnx_path, batches):
    """Largest |onnxruntime - PyTorch| logit over all batches, PyTorch called by keyword."""
    import numpy as np
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    largest = 0.0
    for batch in batches:
        with torch.no_grad():
            expected = model(**{name: torch.from_numpy(batch[name]) for name in INPUT_NAMES}).logits.numpy()
        (actual,) = session.run(["logits"], batch)
        largest = max(largest, float(np.abs(actual - expected).max()))
    return largest


def git_revision():
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def write_metadata(path, model, tokenizer, params, max_length):
    write_json(path, {
        "labels": [model.config.id2label[i] for i in range(model.config.num_labels)],
        "max_length": max_length,
        "opset": params["opset"],
        "inputs": list(INPUT_NAMES),
        "output": "logits",
        "pad_token": tokenizer.pad_token,
        "pad_token_id": tokenizer.pad_token_id,
        "made_by": {"git_revision": git_revision(), "params": load_params()},
    })


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path, help="fine-tuned model and tokenizer (models/finetuned)")
    parser.add_argument("val_dataset", type=Path, help="tokenized validation pairs for the checks (data/encoded/val)")
    parser.add_argument("onnx_path", type=Path, help="output ONNX file (models/model.onnx); the int8 model, "
                        f"{TOKENIZER_FILE} and {METADATA_FILE} go beside it")
    parser.add_argument("metrics_path", type=Path, help="output metrics JSON (results/export/metrics.json)")
    args = parser.parse_args()
    params = load_params("export")
    max_length = load_params("encode")["max_length"]

    import onnx
    from datasets import load_from_disk
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # Always from a float32 CPU copy, so model.onnx does not depend on the device that trained it.
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model_dir, local_files_only=True, use_safetensors=True, dtype="float32").eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    val_set = load_from_disk(args.val_dataset)
    batches = parity_batches(val_set, tokenizer)
    models_dir = args.onnx_path.parent
    int8_path = args.onnx_path.with_suffix(".int8.onnx")

    outputs = (args.onnx_path, models_dir / TOKENIZER_FILE, models_dir / METADATA_FILE, int8_path)
    with atomic_paths(*outputs) as (onnx_path, tokenizer_path, metadata_path, int8_tmp):
        export_onnx(model, batches[1], onnx_path, params["opset"])
        onnx.checker.check_model(onnx_path, full_check=True)
        check_opset(onnx_path, params["opset"])
        difference = max_logit_difference(model, onnx_path, batches)
        if difference > params["atol"]:
            raise StageError(f"{args.onnx_path}: onnxruntime logits differ from PyTorch by {difference:.3g}, "
                             f"more than export.atol={params['atol']}")
        shutil.copyfile(args.model_dir / TOKENIZER_FILE, tokenizer_path)
        write_metadata(metadata_path, model, tokenizer, params, max_length)
        metrics = {"max_abs_logit_diff": difference, "parity_batches": [list(b["input_ids"].shape) for b in batches]}
        if params["quantize"]:
            metrics["int8"] = quantize_and_compare(onnx_path, int8_tmp, val_set.to_pandas(), params["max_auc_drop"])
    write_json(args.metrics_path, metrics)
    print(f"export: {args.onnx_path} matches PyTorch within {difference:.3g} (export.atol={params['atol']})")


if __name__ == "__main__":
    run(main)
