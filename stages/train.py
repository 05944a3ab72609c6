"""train: fine-tune the pretrained model as a (query, title) relevance classifier with the
transformers Trainer, logging per epoch with dvclive the training and validation loss and the
validation ranking metrics (nDCG@10, MRR@10, MAP, precision@5 of the PyTorch model's P(relevant),
grouped by query as evaluate groups them), one dvclive step per epoch (stages/epoch_log.py);
results/train/metrics.json holds the last epoch's headline ones, report.json beside it every figure
of the last epoch and of the run (runtime, samples per second, FLOPs).

Runs on CPU or one GPU as is (one GPU even when the host has several). With train.gpus: N > 1
it starts itself under torchrun, one process per GPU (the Trainer's distributed data parallel);
running `torchrun --nproc-per-node N -m stages.train ...` by hand does the same, also on CPU
(over gloo). Only rank 0 writes.
"""
import argparse
import os
import shutil
import sys
from pathlib import Path

from stages.common import StageError, atomic_path, load_params, run
from stages.ranking import check_loss_params
from stages.training import (checkpoint_to_resume, device_flags, empty_checkpoints, layer_overrides, make_trainer,
                             pretrained_classifier, run_fingerprint, teacher_scores, training_arguments)


def launch_distributed(gpus):
    import torch
    from torch.distributed.run import main as torchrun

    if gpus > torch.cuda.device_count():
        raise StageError(f"train.gpus={gpus}: only {torch.cuda.device_count()} GPU(s) visible")
    torchrun(["--standalone", f"--nproc-per-node={gpus}", "--module", "stages.train", *sys.argv[1:]])


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("encoded_dir", type=Path, help="tokenized train and val datasets (data/encoded)")
    parser.add_argument("pretrained_dir", type=Path, help="pretrained model and tokenizer (models/pretrained)")
    parser.add_argument("model_dir", type=Path, help="output: fine-tuned model and tokenizer (models/finetuned)")
    parser.add_argument("checkpoints", type=Path, help="output kept between runs: the Trainer's checkpoints, "
                        "empty after a completed run (models/checkpoints)")
    parser.add_argument("results_dir", type=Path, help="output: dvclive's metrics.json (the last epoch's headline metrics), "
                        "per-epoch curves, and report.json (every figure) (results/train)")
    parser.add_argument("teacher_dir", type=Path, nargs="?", help="the teacher's scores of the pairs, train.npy and "
                        "val.npy, for the teacher losses and eval.teacher_spearman; empty or left out: no teacher "
                        "(data/teacher)")
    args = parser.parse_args()
    params = load_params("train")
    num_layers = load_params("model").get("num_layers")
    device_flags(params["precision"])  # refuse a bad train.precision before launching anything
    teacher_files = sorted(args.teacher_dir.glob("*.npy")) if args.teacher_dir else []
    check_loss_params(params, bool(teacher_files))  # and a train.loss or train.list_size it cannot train with
    layer_overrides(args.pretrained_dir, num_layers)  # and a model.num_layers the model does not have
    if params["gpus"] > 1 and "LOCAL_RANK" not in os.environ:
        return launch_distributed(params["gpus"])

    from datasets import load_from_disk
    from dvclive import Live
    from transformers import AutoTokenizer, set_seed

    from stages.common import REPORT_FILE
    from stages.epoch_log import EpochLog

    set_seed(params["seed"])
    tokenizer = AutoTokenizer.from_pretrained(args.pretrained_dir, local_files_only=True)
    model, note, warning = pretrained_classifier(args.pretrained_dir, params, num_layers)
    if params["freeze_base"]:
        model.base_model.requires_grad_(False)

    training_args = training_arguments(params, args.checkpoints)
    main_process = training_args.process_index == 0
    resume_from = None
    with training_args.main_process_first(desc="checkpoint check"):
        if params["resume"]:
            fingerprint = run_fingerprint({**params, "model.num_layers": num_layers},
                                          [*args.encoded_dir.glob("*/*.arrow"), *args.pretrained_dir.glob("*.safetensors"),
                                           *teacher_files])
            resume_from = checkpoint_to_resume(args.checkpoints, fingerprint, main_process)
        elif main_process:
            empty_checkpoints(args.checkpoints)
    if main_process:
        print(note)
        if warning:
            print(warning, file=sys.stderr)
        if resume_from:
            print(f"train: resuming the interrupted run from {resume_from}")
    train_set, val_set = load_from_disk(args.encoded_dir / "train"), load_from_disk(args.encoded_dir / "val")
    teacher = teacher_scores(args.teacher_dir, train_set, val_set)  # one per pair, or one line
    live = Live(str(args.results_dir), dvcyaml=False, save_dvc_exp=False, report=None) if main_process else None
    log = EpochLog(live, args.results_dir / REPORT_FILE) if live else None
    trainer, _ = make_trainer(params, training_args, model, tokenizer, train_set, val_set, args.checkpoints / "features",
                              [log] if log else [], teacher)
    effective_batch_size = training_args.train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size
    if main_process:
        live.log_param("effective_batch_size", effective_batch_size)
        log.extra["effective_batch_size"] = effective_batch_size
        print(f"train: {len(train_set)} pairs, effective batch size {effective_batch_size} "
              f"({training_args.world_size} process(es) x {training_args.train_batch_size})")
    trainer.train(resume_from_checkpoint=resume_from)
    if training_args.local_process_index == 0:  # each machine's copy of the cached features
        shutil.rmtree(args.checkpoints / "features", ignore_errors=True)
    if main_process:
        with atomic_path(args.model_dir) as model_dir:
            model.save_pretrained(model_dir)  # with the head trained in place when features were cached
            tokenizer.save_pretrained(model_dir)
        empty_checkpoints(args.checkpoints)  # the run completed: nothing to resume
        if teacher is None:  # dvc.yaml's plot of it stays renderable: a curve with no points, no teacher
            no_curve = args.results_dir / "plots/metrics/eval/teacher_spearman.tsv"
            no_curve.parent.mkdir(parents=True, exist_ok=True)
            no_curve.write_text("step\tteacher_spearman\n")
        print(f"train: the last epoch's validation nDCG@10, MRR@10 and loss and training loss in {args.results_dir / 'metrics.json'}; "
              f"per epoch in {args.results_dir / 'plots/metrics'}; every figure of the last epoch and the run (runtime, "
              f"samples per second, FLOPs) in {args.results_dir / REPORT_FILE}")
    # Under torchrun: every rank past its last collective before the process group goes. Without it, a
    # rank that finishes first can hang for good in gloo's teardown (its thread freeing the Trainer's
    # last all_gather waits for the GIL that the teardown holds; pytorch/pytorch#56297).
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    if training_args.world_size > 1:
        # Everything is written and every rank is past its last collective: leave without the
        # destructors, where gloo's teardown still hung a node now and then under load, barrier or not.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    run(main)
