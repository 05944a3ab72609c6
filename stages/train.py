"""train: fine-tune the pretrained BERT as a (query, title) relevance classifier with the transformers Trainer."""
import argparse
import shutil
from pathlib import Path

from stages.common import LABELS, StageError, atomic_path, load_params, run

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


def compute_metrics(eval_pred):
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_pred
    predictions = logits.argmax(axis=-1)
    return {"accuracy": accuracy_score(labels, predictions), "f1": f1_score(labels, predictions, zero_division=0.0)}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("encoded_dir", type=Path, help="tokenized train and val datasets (data/encoded)")
    parser.add_argument("pretrained_dir", type=Path, help="pretrained model and tokenizer (models/pretrained)")
    parser.add_argument("model_dir", type=Path, help="output: fine-tuned model and tokenizer (models/finetuned)")
    parser.add_argument("results_dir", type=Path, help="output: dvclive metrics and plots (results/train)")
    args = parser.parse_args()
    params = load_params("train")
    flags = device_flags(params["precision"])

    from datasets import load_from_disk
    from dvclive import Live
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
        report_to="none",  # dvclive is attached explicitly below, with dvc.yaml left alone
        **flags,
    )
    with atomic_path(args.results_dir) as results_dir:
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=load_from_disk(args.encoded_dir / "train"),
            eval_dataset=load_from_disk(args.encoded_dir / "val"),
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=compute_metrics,
            callbacks=[DVCLiveCallback(live=Live(str(results_dir), dvcyaml=False, report=None))],
        )
        trainer.train()
        if trainer.is_world_process_zero():
            with atomic_path(args.model_dir) as model_dir:
                trainer.model.save_pretrained(model_dir)
                tokenizer.save_pretrained(model_dir)
    shutil.rmtree(training_args.output_dir, ignore_errors=True)


if __name__ == "__main__":
    run(main)
