"""train: fine-tune the pretrained BERT as a (query, title) relevance classifier with the
transformers Trainer, then evaluate it and a TF-IDF baseline on the validation pairs.

Runs on CPU or one GPU as is. With train.gpus: N > 1 it starts itself under torchrun, one
process per GPU (the Trainer's distributed data parallel); running
`torchrun --nproc-per-node N -m stages.train ...` by hand does the same. Only rank 0 writes.
"""
import argparse
import hashlib
import json
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


def run_fingerprint(params, data_files):
    """What a checkpoint must match to be resumed: the train params and the bytes of its inputs."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for path in sorted(data_files):
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def checkpoint_to_resume(checkpoints, fingerprint, main_process):
    """The last checkpoint of an interrupted run with the same fingerprint, else None; the main
    process then clears what a different run left behind."""
    from transformers.trainer_utils import get_last_checkpoint

    stamp = checkpoints / "run.json"
    if stamp.exists() and json.loads(stamp.read_text())["fingerprint"] == fingerprint:
        last = get_last_checkpoint(str(checkpoints))
        if last:
            return last
    if not main_process:
        return None
    shutil.rmtree(checkpoints, ignore_errors=True)
    checkpoints.mkdir(parents=True)
    stamp.write_text(json.dumps({"fingerprint": fingerprint}))
    return None


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
    parser.add_argument("checkpoints", type=Path, help="output kept between runs: the Trainer's checkpoints, "
                        "empty after a completed run (models/checkpoints)")
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
                              TrainingArguments, default_data_collator, set_seed)
    from transformers.integrations import DVCLiveCallback

    set_seed(params["seed"])
    tokenizer = AutoTokenizer.from_pretrained(args.pretrained_dir, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.pretrained_dir, local_files_only=True, use_safetensors=True, num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)},
    )
    if params["freeze_base"]:
        model.base_model.requires_grad_(False)
    cached = params["freeze_base"] and params["cache_features"]

    training_args = TrainingArguments(
        output_dir=str(args.checkpoints),
        num_train_epochs=params["epochs"],
        per_device_train_batch_size=params["batch_size"],
        per_device_eval_batch_size=params["eval_batch_size"],
        learning_rate=params["learning_rate"],
        warmup_steps=params["warmup_steps"],
        weight_decay=params["weight_decay"],
        seed=params["seed"],
        eval_strategy="epoch",
        logging_strategy="epoch",
        save_strategy="epoch" if params["resume"] else "no",
        # Batches of similar lengths (dynamic padding then pads little); only for token inputs.
        train_sampling_strategy="group_by_length" if params["group_by_length"] and not cached else "random",
        save_total_limit=1,
        report_to="none",  # dvclive is attached below, on rank 0 only, with dvc.yaml left alone
        **flags,
    )
    main_process = training_args.process_index == 0 and os.environ.get("RANK", "0") == "0"
    resume_from = None
    with training_args.main_process_first(desc="checkpoint check"):
        if params["resume"]:
            fingerprint = run_fingerprint(params, [*args.encoded_dir.glob("*/*.arrow"), *args.pretrained_dir.glob("*.safetensors")])
            resume_from = checkpoint_to_resume(args.checkpoints, fingerprint, main_process)
        elif main_process:
            shutil.rmtree(args.checkpoints, ignore_errors=True)
    if resume_from and main_process:
        print(f"train: resuming the interrupted run from {resume_from}")
    train_set, val_set = load_from_disk(args.encoded_dir / "train"), load_from_disk(args.encoded_dir / "val")
    if cached:
        from stages.frozen import classification_head, feature_dataset, pooled_features

        batch_size, device = params["eval_batch_size"], training_args.device
        trained, collator = classification_head(model), default_data_collator  # stacks the features
        train_inputs = feature_dataset(pooled_features(model, train_set, tokenizer, batch_size, device), train_set["label"])
        val_inputs = feature_dataset(pooled_features(model, val_set, tokenizer, batch_size, device), val_set["label"])
    else:
        trained, collator, train_inputs, val_inputs = model, DataCollatorWithPadding(tokenizer), train_set, val_set
    trainer = Trainer(
        model=trained,
        args=training_args,
        train_dataset=train_inputs,
        eval_dataset=val_inputs,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics,
        callbacks=[DVCLiveCallback(live=Live(str(args.results_dir), dvcyaml=False, save_dvc_exp=False, report=None))]
        if main_process else [],
    )
    effective_batch_size = training_args.train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size
    if main_process:
        print(f"train: {len(train_set)} pairs, effective batch size {effective_batch_size} "
              f"({training_args.world_size} process(es) x {training_args.train_batch_size})")
    trainer.train(resume_from_checkpoint=resume_from)
    logits = trainer.predict(val_inputs).predictions  # gathered from every process
    if main_process:
        probabilities = softmax(logits.astype("float64"), axis=-1)[:, LABELS.index("relevant")]
        with atomic_path(args.model_dir) as model_dir:
            model.save_pretrained(model_dir)  # with the head trained in place when features were cached
            tokenizer.save_pretrained(model_dir)
        write_evaluation(train_set.to_pandas(), val_set.to_pandas(), probabilities, args.eval_dir, effective_batch_size)
        shutil.rmtree(args.checkpoints, ignore_errors=True)  # the run completed: nothing to resume
        args.checkpoints.mkdir(parents=True)


if __name__ == "__main__":
    run(main)
