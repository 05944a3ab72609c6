"""train: fine-tune the pretrained BERT as a (query, title) relevance classifier with the
transformers Trainer, then evaluate it and a TF-IDF baseline on the validation pairs.

Runs on CPU or one GPU as is. With train.gpus: N > 1 it starts itself under torchrun, one
process per GPU (the Trainer's distributed data parallel); running
`torchrun --nproc-per-node N -m stages.train ...` by hand does the same. Only rank 0 writes.
"""
import argparse
import os
import shutil
import sys
from pathlib import Path

from stages.common import LABELS, StageError, atomic_path, load_params, run
from stages.metrics import write_evaluation

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def device_flags(precision):
    """TrainingArguments flags for train.precision and the device: `auto` picks bf16, then fp16 on a GPU, fp32 on CPU."""
    import torch

    if precision not in PRECISIONS:
        raise StageError(f"train.precision={precision}: expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if not torch.cuda.is_available():
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision != "fp32" and not torch.cuda.is_available():
        raise StageError(f"train.precision={precision}: mixed precision needs a GPU; use auto or fp32 on CPU")
    # TF32 matmuls on Ampere and newer: a large speed-up for a negligible precision change.
    tf32 = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "tf32": tf32 or None,
            "dataloader_pin_memory": torch.cuda.is_available()}


def launch_distributed(gpus):
    import torch
    from torch.distributed.run import main as torchrun

    if gpus > torch.cuda.device_count():
        raise StageError(f"train.gpus={gpus}: only {torch.cuda.device_count()} GPU(s) visible")
    torchrun(["--standalone", f"--nproc-per-node={gpus}", "--module", "stages.train", *sys.argv[1:]])


def compute_metrics(eval_pred):
    """Per-epoch metrics for the training curves; the full evaluation runs once after training."""
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_pred
    predictions = logits.argmax(axis=-1)
    return {"accuracy": accuracy_score(labels, predictions), "f1": f1_score(labels, predictions, zero_division=0.0)}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("encoded_dir", type=Path, help="tokenized train and val datasets (data/encoded)")
    parser.add_argument("pretrained_dir", type=Path, help="pretrained model and tokenizer (models/pretrained)")
    parser.add_argument("model_dir", type=Path, help="output: fine-tuned model and tokenizer (models/finetuned)")
    parser.add_argument("results_dir", type=Path, help="output: dvclive training log and plots (results/train)")
    parser.add_argument("eval_dir", type=Path, help="output: validation metrics and plots (results/eval)")
    args = parser.parse_args()
    params = load_params("train")
    flags = device_flags(params["precision"])
    if params["gpus"] > 1 and "LOCAL_RANK" not in os.environ:
        return launch_distributed(params["gpus"])

    from datasets import load_from_disk
    from dvclive import Live
    from scipy.special import softmax
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)
    from transformers.integrations import DVCLiveCallback

    set_seed(params["seed"])
    tokenizer = AutoTokenizer.from_pretrained(args.pretrained_dir, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.pretrained_dir, local_files_only=True, use_safetensors=True, num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)},
    )
    if params["freeze_base"]:
        model.base_model.requires_grad_(False)

    training_args = TrainingArguments(
        output_dir=str(args.model_dir.with_name("checkpoints")),  # scratch space; save_strategy="no" keeps it empty
        num_train_epochs=params["epochs"],
        per_device_train_batch_size=params["batch_size"],
        per_device_eval_batch_size=params["eval_batch_size"],
        learning_rate=params["learning_rate"],
        warmup_steps=params["warmup_steps"],
        weight_decay=params["weight_decay"],
        seed=params["seed"],
        eval_strategy="epoch",
        logging_strategy="epoch",
        save_strategy="no",
        report_to="none",  # dvclive is attached below, on rank 0 only, with dvc.yaml left alone
        **flags,
    )
    main_process = training_args.process_index == 0 and os.environ.get("RANK", "0") == "0"
    train_set, val_set = load_from_disk(args.encoded_dir / "train"), load_from_disk(args.encoded_dir / "val")
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=[DVCLiveCallback(live=Live(str(args.results_dir), dvcyaml=False, save_dvc_exp=False, report=None))]
        if main_process else [],
    )
    effective_batch_size = training_args.train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size
    if main_process:
        print(f"train: {len(train_set)} pairs, effective batch size {effective_batch_size} "
              f"({training_args.world_size} process(es) x {training_args.train_batch_size})")
    trainer.train()
    logits = trainer.predict(val_set).predictions  # gathered from every process
    if main_process:
        probabilities = softmax(logits.astype("float64"), axis=-1)[:, LABELS.index("relevant")]
        with atomic_path(args.model_dir) as model_dir:
            trainer.model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
        write_evaluation(train_set.to_pandas(), val_set.to_pandas(), probabilities, args.eval_dir, effective_batch_size)
        shutil.rmtree(training_args.output_dir, ignore_errors=True)


if __name__ == "__main__":
    run(main)
