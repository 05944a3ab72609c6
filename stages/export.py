"""export: write the fine-tuned model as one ONNX file for a search service and prove
onnxruntime matches PyTorch on real batches.

Beside model.onnx it writes tokenizer.json (truncation and padding baked in) and metadata.json:
everything the torch-free scorer (scorer/) or a client in another language needs.
"""
import argparse
import logging
import subprocess
import warnings
from pathlib import Path

from scorer import METADATA_FILE, TOKENIZER_FILE
from stages.common import StageError, atomic_paths, load_params, model_inputs, report_path, run, write_json, write_metrics

PARITY_BATCH_SIZES = (1, 7, 32)
METRICS = ("max_abs_logit_diff",)  # results/export/metrics.json; report.json adds parity_batches
# The first onnxruntime release that implements each ONNX opset (onnxruntime's docs/Versioning.md).
ONNXRUNTIME_FOR_OPSET = {17: "1.13", 18: "1.14", 19: "1.15", 20: "1.17", 21: "1.18", 23: "1.23"}
# The oldest onnxruntime this project supports, because its tests run it: CI scores model.onnx and
# model.int8.onnx in 1.17.3 (tests/runtimes.py MATRIX). An opset alone does not say a file runs:
# 1.17 and 1.18 crashed on ModernBERT's opset-18 file until export gave its LayerNormalization a
# zero bias; and 1.14, the first with opset 18, has no wheels for Python 3.11, so no test can run it.
OLDEST_SUPPORTED_ONNXRUNTIME = "1.17"


def min_onnxruntime(opset):
    """metadata.json's min_onnxruntime: the oldest onnxruntime release to load the file in, the later of
    the oldest one tested (OLDEST_SUPPORTED_ONNXRUNTIME) and the first to implement its opset; None for
    an opset missing from ONNXRUNTIME_FOR_OPSET."""
    if opset not in ONNXRUNTIME_FOR_OPSET:
        return None
    return max(ONNXRUNTIME_FOR_OPSET[opset], OLDEST_SUPPORTED_ONNXRUNTIME,
               key=lambda version: tuple(map(int, version.split("."))))


def logits_only(model, input_names):
    """Wrap the model so the graph's inputs, in `input_names` order, are passed to it by keyword.

    BertForSequenceClassification.forward takes (input_ids, attention_mask, token_type_ids), the
    tokenizer gives (input_ids, token_type_ids, attention_mask): a positional call would swap two.
    """
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(input_names, inputs))).logits

    return LogitsOnly().eval()


def parity_batches(dataset, tokenizer, names):
    """Real validation pairs, as the model inputs `names`, in batches of several sizes, padded to the
    longest row (so most rows carry padding), plus one batch padded past its longest row."""
    from transformers import DataCollatorWithPadding

    rows = [{name: dataset[i % len(dataset)][name] for name in names} for i in range(max(PARITY_BATCH_SIZES))]
    longest = max(len(row["input_ids"]) for row in rows)
    batches = [DataCollatorWithPadding(tokenizer, return_tensors="np")(rows[:size]) for size in PARITY_BATCH_SIZES]
    batches.append(DataCollatorWithPadding(tokenizer, padding="max_length", max_length=longest + 8, return_tensors="np")(rows[:4]))
    return [{name: batch[name].astype("int64") for name in names} for batch in batches]


def export_onnx(model, example, path, opset):
    """Export with the inputs of `example` (a dict, in graph order), dynamic batch and sequence
    axes; then drop the exporter's stack traces and, so older runtimes load it, give LayerNormalization
    a bias and stamp the lowest IR version that holds the opset."""
    import onnx
    import torch

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    names = list(example)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..."
    with warnings.catch_warnings():
        # The exporter's notes on its own internals (axis renaming, pytree specs): nothing to act on.
        warnings.filterwarnings("ignore", message=r"# The axis name")
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"Skipping constant folding")  # DeBERTa's LayerNormalization
        torch.onnx.export(
            logits_only(model, names),
            tuple(torch.from_numpy(example[name]) for name in names),
            path,
            input_names=names,
            output_names=["logits"],
            dynamic_shapes=(tuple({0: batch, 1: sequence} for _ in names),),
            opset_version=opset,
            external_data=False,  # one self-contained file for the search service
            verbose=False,
        )
    exported = onnx.load(path)
    drop_stack_traces(exported.graph)
    add_layer_norm_biases(exported.graph)
    exported.ir_version = onnx.helper.find_min_ir_version_for(exported.opset_import)
    onnx.save(exported, path)


def drop_stack_traces(graph):
    """The exporter records each node's Python stack trace, with the absolute paths of this checkout
    and its virtual environment: the same model exported from two folders would differ in bytes."""
    for node in graph.node:
        kept = [entry for entry in node.metadata_props if entry.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)


def add_layer_norm_biases(graph):
    """Give each LayerNormalization without a bias (ModernBERT's) an explicit zero bias: the same
    arithmetic, but onnxruntime 1.17 and 1.18 crash while optimizing a bias-less one (an assertion
    in its graph optimizer aborts the process; onnxruntime issue #18967)."""
    import numpy as np
    from onnx import numpy_helper

    scales = {tensor.name: tensor for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "LayerNormalization" and len(node.input) == 2 and node.input[1] in scales:
            scale = numpy_helper.to_array(scales[node.input[1]])
            bias = numpy_helper.from_array(np.zeros_like(scale), f"{node.name or node.output[0]}.zero_bias")
            graph.initializer.append(bias)
            node.input.append(bias.name)


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
            expected = model(**{name: torch.from_numpy(array) for name, array in batch.items()}).logits.numpy()
        (actual,) = session.run(["logits"], batch)
        largest = max(largest, float(np.abs(actual - expected).max()))
    return largest


def save_serving_tokenizer(tokenizer, path, max_length):
    """tokenizer.json that encodes pairs exactly as the encode stage did, with nothing set by the
    client: truncation to max_length (longest first) and padding to the longest pair of a batch."""
    from tokenizers import Tokenizer

    serving = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    serving.enable_truncation(max_length, strategy="longest_first")
    serving.enable_padding(pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token,
                           pad_type_id=tokenizer.pad_token_type_id)
    serving.save(str(path))


def git_revision():
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def write_metadata(path, model, input_names, opset, max_length):
    num_labels = model.config.num_labels
    write_json(path, {
        "labels": [model.config.id2label[i] for i in range(num_labels)],
        # P(relevant): softmax over the labels' logits, or the sigmoid of a one-logit model's logit
        "probability": "sigmoid" if num_labels == 1 else "softmax",
        "max_length": max_length,
        "inputs": list(input_names),
        "output": "logits",
        "opset": opset,
        "min_onnxruntime": min_onnxruntime(opset),
        "made_by": {"git_revision": git_revision(), "params": load_params()},
    })


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path, help="fine-tuned model and tokenizer (models/finetuned)")
    parser.add_argument("val_dataset", type=Path, help="tokenized validation pairs for the parity check (data/encoded/val)")
    parser.add_argument("onnx_path", type=Path, help=f"output ONNX file (models/model.onnx); {TOKENIZER_FILE} and "
                        f"{METADATA_FILE} go beside it")
    parser.add_argument("metrics_path", type=Path, help="output: the parity check's largest logit difference "
                        "(results/export/metrics.json); report.json beside it adds the batch shapes checked")
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
    input_names = model_inputs(model, tokenizer)
    batches = parity_batches(load_from_disk(args.val_dataset), tokenizer, input_names)
    models_dir = args.onnx_path.parent

    with atomic_paths(args.onnx_path, models_dir / TOKENIZER_FILE, models_dir / METADATA_FILE) as (
            onnx_path, tokenizer_path, metadata_path):
        export_onnx(model, batches[1], onnx_path, params["opset"])
        onnx.checker.check_model(onnx_path, full_check=True)
        check_opset(onnx_path, params["opset"])
        difference = max_logit_difference(model, onnx_path, batches)
        if difference > params["atol"]:
            raise StageError(f"{args.onnx_path}: onnxruntime logits differ from PyTorch by {difference:.3g}, "
                             f"more than export.atol={params['atol']}")
        save_serving_tokenizer(tokenizer, tokenizer_path, max_length)
        write_metadata(metadata_path, model, input_names, params["opset"], max_length)
    write_metrics(args.metrics_path, {"max_abs_logit_diff": difference,
                                      "parity_batches": [list(b["input_ids"].shape) for b in batches]}, METRICS)
    print(f"export: {args.onnx_path} (opset {params['opset']}) matches PyTorch within {difference:.3g} "
          f"(export.atol={params['atol']}; {args.metrics_path}, batch shapes in {report_path(args.metrics_path)})")


if __name__ == "__main__":
    run(main)
