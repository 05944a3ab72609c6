"""Speed, measured side by side with the reference recipe: training, scoring, pipeline overhead.

    python -m bench.benchmark                      # a few minutes on a 2-core CPU; a GPU is used when present
    python -m bench.benchmark --rows 2000 --repeats 5   # steadier numbers
    python -m bench.benchmark --rows 20000 --peak-tflops 989   # on a GPU (989: an H100 SXM's dense bf16)

Every comparison is a ratio of two measurements taken in this run, on the same synthetic data
(realistic query and title lengths), the same model size (BERT-small: 4 layers, hidden 512,
8 heads, randomly initialised since the hub may be unreachable) and the same machine; each side
is warmed up once, then repeated, and the median is reported. Writes bench/results/benchmark.json
and prints the Markdown table the README shows. Timing is never asserted by the tests.
"""
import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.memory import cpu, median_time
from bench.report import save, table
from bench.synthetic import (PROJECT_ROOT, csv_texts, make_scratch_project, pipeline_stages, realistic_pairs, write_pairs_csv,
                             write_tiny_bert)
from stages.common import LABELS, load_params

MAX_LENGTH = load_params("encode")["max_length"]
AUC_TOLERANCE = 0.05  # |reference - project| validation ROC-AUC allowed for "same results"


def train_once(model_dir, pairs, val_pairs, freeze, reference, epochs, scratch):
    """Train a fresh classifier one way or the other; returns validation ROC-AUC."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments, set_seed

    from stages.encode import encode_pairs
    from stages.metrics import classification_metrics
    from stages.training import make_trainer, training_arguments

    set_seed(42)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    if freeze:
        model.base_model.requires_grad_(False)
    (queries, titles, labels), (val_queries, val_titles, val_labels) = pairs, val_pairs
    if reference:  # the recipe as written: every pair padded to 128, one tensor per item, Trainer defaults
        class PairsDataset(torch.utils.data.Dataset):
            def __init__(self, q, t, y):
                self.encodings, self.labels = tokenizer(q, t, truncation=True, padding="max_length", max_length=128), y

            def __getitem__(self, i):
                return {**{k: torch.tensor(v[i]) for k, v in self.encodings.items()}, "labels": torch.tensor(self.labels[i])}

            def __len__(self):
                return len(self.labels)

        args = TrainingArguments(output_dir=str(scratch), num_train_epochs=epochs, per_device_train_batch_size=16,
                                 per_device_eval_batch_size=64, warmup_steps=500, weight_decay=0.01, eval_strategy="epoch",
                                 save_strategy="no", report_to="none", disable_tqdm=True)
        val_set = PairsDataset(val_queries, val_titles, val_labels)
        trainer = Trainer(model=model, args=args, train_dataset=PairsDataset(queries, titles, labels), eval_dataset=val_set)
    else:  # this project's encode and train stages' path
        def encode(q, t, y):
            return encode_pairs(Dataset.from_dict({"query": q, "title": t, "label": y}), tokenizer, MAX_LENGTH)

        params = {**load_params("train"), "epochs": epochs, "freeze_base": freeze, "resume": False}
        training_args = training_arguments(params, scratch)
        training_args.disable_tqdm = True
        trainer, val_set = make_trainer(params, training_args, model, tokenizer, encode(queries, titles, labels),
                                        encode(val_queries, val_titles, val_labels), Path(scratch) / "features")
    trainer.train()
    logits = predict_in_order(trainer, val_set)
    return classification_metrics(val_labels, torch.softmax(torch.from_numpy(logits), -1)[:, 1].numpy(), None)["roc_auc"]


def predict_in_order(trainer, dataset):
    """Logits for `dataset` in its row order: with group_by_length the Trainer's own evaluation
    sampler groups rows by length too."""
    from dataclasses import replace

    from transformers import Trainer

    in_order = replace(trainer.args, train_sampling_strategy="random", eval_strategy="no")
    return Trainer(model=trainer.model, args=in_order, data_collator=trainer.data_collator,
                   processing_class=trainer.processing_class).predict(dataset).predictions


def useful_training_flops(model_dir, queries, titles):
    """Model FLOPs of one training epoch over these pairs, real tokens only (padding is waste): 6 per
    non-embedding parameter per token (forward and backward), plus attention's 12 x layers x hidden
    x length^2 per pair. The numerator of model FLOPs utilisation."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    parameters = sum(p.numel() for name, p in model.named_parameters() if ".embeddings." not in name)
    encoded = AutoTokenizer.from_pretrained(model_dir)(queries, titles, truncation=True, max_length=MAX_LENGTH)
    lengths = np.array([len(ids) for ids in encoded["input_ids"]], dtype=np.float64)
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    return 6 * parameters * lengths.sum() + 12 * layers * hidden * (lengths ** 2).sum()


def bench_training(model_dir, args, scratch):
    pairs, val_pairs = realistic_pairs(args.rows, seed=1), realistic_pairs(128, seed=2)
    epoch_flops = useful_training_flops(model_dir, *pairs[:2])
    results = {}
    for freeze, epochs in ((True, 3), (False, 1)):
        name = "frozen base, 3 epochs" if freeze else "full fine-tune, 1 epoch"
        sides = {}
        for reference in (True, False):
            seconds, auc = median_time(lambda: train_once(model_dir, pairs, val_pairs, freeze, reference, epochs, scratch),
                                       args.repeats)
            side = sides["reference" if reference else "project"] = {
                "seconds": seconds, "samples_per_second": args.rows * epochs / seconds, "val_roc_auc": auc}
            if not freeze:  # compute utilisation only means something when the whole model trains
                side["useful_tflops_per_second"] = epoch_flops * epochs / seconds / 1e12
                if args.peak_tflops:
                    side["fraction_of_peak"] = side["useful_tflops_per_second"] / args.peak_tflops
        sides["speedup"] = sides["reference"]["seconds"] / sides["project"]["seconds"]
        results[name] = sides
        print(f"training, {name}: {sides['speedup']:.1f}x", file=sys.stderr)
    return results


def bench_scoring(model_dir, args, scratch):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bench.int8 import eager_scorer, encode, session, speed, speed_batches
    from scorer import METADATA_FILE, TOKENIZER_FILE, RelevanceScorer
    from stages.export import export_onnx, save_serving_tokenizer, write_metadata
    from stages.quantize import quantize

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(LABELS), id2label=dict(enumerate(LABELS))).eval()
    batches, eager = speed_batches(tokenizer), eager_scorer(model)
    onnx_path, int8_path = scratch / "model.onnx", scratch / "model.int8.onnx"
    export_onnx(model, batches[64][0], onnx_path, opset=args.opset)
    quantize(onnx_path, int8_path, load_params("quantize"))
    # The runtimes alone on identical batches (onnxruntime with its default threads, as PyTorch).
    rates = {name: speed(run, batches, args.repeats) for name, run in {"pytorch eager": eager, **{
        name: (lambda batch, s=session(path, 0): s.run(["logits"], batch))
        for name, path in (("onnxruntime fp32", onnx_path), ("onnxruntime int8", int8_path))}}.items()}
    results = {f"batch {size}": speedups({name: rate[size] for name, rate in rates.items()}) for size in batches}

    # End to end, tokenizing included, as a service scores a list of pairs: RelevanceScorer (length-sorted
    # batches) against the transformers tokenizer and PyTorch eager on batches in input order.
    save_serving_tokenizer(tokenizer, scratch / TOKENIZER_FILE, MAX_LENGTH)  # beside the ONNX files, as export does
    write_metadata(scratch / METADATA_FILE, model, tokenizer.model_input_names, args.opset, MAX_LENGTH)
    queries, titles, _ = realistic_pairs(1024, seed=4)
    scorers = {"pytorch eager": lambda: [eager(encode(tokenizer, queries[i:i + 64], titles[i:i + 64])) for i in range(0, 1024, 64)],
               **{f"RelevanceScorer {name}": (lambda s=RelevanceScorer(path): s.scores(queries, titles, batch_size=64))
                  for name, path in (("fp32", onnx_path), ("int8", int8_path))}}
    results["1024 pairs end to end, batches of 64"] = speedups(
        {name: len(queries) / median_time(run, args.repeats)[0] for name, run in scorers.items()})
    return results


def speedups(rates):
    return {"pairs_per_second": rates, "speedup_vs_eager": {
        name: rate / rates["pytorch eager"] for name, rate in rates.items() if name != "pytorch eager"}}


def bench_pipeline(args, scratch):
    pairs_csv = write_pairs_csv(scratch / "pairs.csv")
    project = make_scratch_project(scratch / "project", pairs_csv, write_tiny_bert(scratch / "tiny", csv_texts(pairs_csv)))
    dvc = [sys.executable, "-m", "dvc", "repro"]
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "DVC_NO_ANALYTICS": "1", "HOME": str(scratch)}
    subprocess.run(dvc, cwd=project, env=env, check=True, capture_output=True)
    noop, _ = median_time(lambda: subprocess.run(dvc, cwd=project, env=env, check=True, capture_output=True), args.repeats)
    startup = {}
    for stage, _ in pipeline_stages():
        probe = f"import json, sys, stages.{stage}; print(json.dumps([m for m in ('torch', 'transformers') if m in sys.modules]))"
        seconds, result = median_time(lambda: subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                                                             text=True, cwd=PROJECT_ROOT), args.repeats)
        startup[stage] = {"import_seconds": seconds, "heavy_modules_at_import": json.loads(result.stdout)}
    return {"noop_repro_seconds": noop, "stage_startup": startup}


def markdown(report):
    rows = [(f"training, {name} (samples/s)", f"{sides['reference']['samples_per_second']:.1f}",
             f"{sides['project']['samples_per_second']:.1f}", f"{sides['speedup']:.1f}x")
            for name, sides in report["training"].items()]
    rows += [(f"scoring, {name}, {scorer} (opset {report['opset']}) vs PyTorch eager (pairs/s)",
              f"{result['pairs_per_second']['pytorch eager']:.0f}", f"{result['pairs_per_second'][scorer]:.0f}", f"{speedup:.1f}x")
             for name, result in report["scoring"].items() for scorer, speedup in result["speedup_vs_eager"].items()]
    lines = [f"Measured {report['date']} on {report['machine']} ({report['device']}), {report['rows']} training pairs, "
             f"median of {report['repeats']} after a warm-up.", "",
             *table(("what", "reference recipe", "this project", "speed-up"), rows)]
    full = report["training"]["full fine-tune, 1 epoch"]
    utilisation = "; ".join(
        f"{side} {full[side]['useful_tflops_per_second']:.3g} TFLOP/s" + (
            f" ({100 * full[side]['fraction_of_peak']:.1f} % of the {report['peak_tflops']:g} TFLOP/s peak given)"
            if report["peak_tflops"] else "") for side in ("reference", "project"))
    lines += ["", "Full fine-tune, useful compute (6 x non-embedding parameters per real token, plus attention; "
              f"padding not counted): {utilisation}."]
    pipeline = report["pipeline"]
    lines += ["", f"No-op `dvc repro`: {pipeline['noop_repro_seconds']:.2f} s. Stage start-up (import): " + ", ".join(
        f"{stage} {s['import_seconds']:.2f} s" for stage, s in pipeline["stage_startup"].items()) + "; torch or "
        "transformers imported at start-up by: " + (", ".join(stage for stage, s in pipeline["stage_startup"].items()
                                                           if s["heavy_modules_at_import"]) or "no stage") + ".",
              "", f"Validation ROC-AUC, reference vs project, same seed (tolerance {AUC_TOLERANCE}; a randomly "
              "initialised model on synthetic data, so a same-results check, not a quality claim): " + "; ".join(
                  f"{name} {sides['reference']['val_roc_auc']:.3f} vs {sides['project']['val_roc_auc']:.3f} "
                  f"({'within' if abs(sides['reference']['val_roc_auc'] - sides['project']['val_roc_auc']) <= AUC_TOLERANCE else 'OUTSIDE'})"
                  for name, sides in report["training"].items()) + "."]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=256, help="training pairs (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repetitions per side (default: %(default)s)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense peak in TFLOP/s for the precision "
                        "train.precision picks (e.g. 989 for bf16 on an H100 SXM): adds the full fine-tune's share of it")
    parser.add_argument("--opset", type=int, default=load_params("export")["opset"],
                        help="ONNX opset of the scored models (default: export.opset, %(default)s)")
    args = parser.parse_args()
    import torch
    from transformers.utils import logging

    logging.set_verbosity_error()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU only"
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        queries, titles, _ = realistic_pairs(args.rows, seed=1)
        model_dir = write_tiny_bert(scratch / "bert-small", queries + titles, hidden_size=512, layers=4, heads=8)
        report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {cpu()}, {torch.get_num_threads()} threads",
                  "device": device, "rows": args.rows, "repeats": args.repeats, "opset": args.opset, "peak_tflops": args.peak_tflops,
                  "training": bench_training(model_dir, args, scratch / "trainer"),
                  "scoring": bench_scoring(model_dir, args, scratch),
                  "pipeline": bench_pipeline(args, scratch)}
    save(report, markdown(report), "benchmark")
    print(markdown(report))


if __name__ == "__main__":
    main()
